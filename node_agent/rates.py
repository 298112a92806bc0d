"""Rolling tokens/sec per model from the engine's own counters; unknown stays None, never 0."""

from __future__ import annotations


class RollingRates:
    """Exponentially weighted tokens/sec per model."""

    def __init__(self, alpha: float = 0.3) -> None:
        self._alpha = alpha
        self._rates: dict[str, float] = {}

    def observe(self, model: str, tokens_per_second: float | None) -> None:
        if tokens_per_second is None or tokens_per_second <= 0:
            return
        old = self._rates.get(model)
        self._rates[model] = tokens_per_second if old is None else old + self._alpha * (tokens_per_second - old)

    def get(self, model: str) -> float | None:
        return self._rates.get(model)
