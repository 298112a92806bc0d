"""What a model is good at, read from its name: parameter count, specialisation, and whether it can chat."""

from __future__ import annotations

import math
import re
from functools import lru_cache

import msgspec

from control_plane.routing.classifier import Task

#: Parameters (billions) assumed when a name does not say: a mid-size model.
DEFAULT_PARAMS_B = 7.0

_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)
_ACTIVE = re.compile(r"-a(\d+(?:\.\d+)?)b\b", re.IGNORECASE)  # Qwen3-30B-A3B: 3B active of 30B
_SPECIALISTS: tuple[tuple[re.Pattern[str], tuple[Task, ...]], ...] = (
    (re.compile(r"coder|code|starcoder|codestral|devstral|granite-code|codegemma|sqlcoder", re.I), ("code_generation",)),
    (re.compile(r"math|mathstral|numina", re.I), ("math",)),
    (re.compile(r"\br1\b|-r1|reason|qwq|think|magistral|phi-?4-reasoning", re.I), ("math", "analysis")),
    (re.compile(r"\baya\b|aya-|nllb|madlad|seamless|tower", re.I), ("translation",)),
)
_NOT_CHAT = re.compile(r"embed|bge-|\bbge\b|e5-|minilm|rerank|whisper|clip|nomic-embed", re.I)


class ModelProfile(msgspec.Struct, frozen=True):
    """A model's routing traits: capability 0..1 (from size), the tasks it specialises in, chat or not."""

    name: str
    params_b: float
    capability: float
    specialties: tuple[Task, ...] = ()
    chat: bool = True

    def capability_for(self, task: Task) -> float:
        """Capability on one task: a specialist counts as a model about three times its size."""
        if task in self.specialties:
            return min(1.0, self.capability + 0.15)
        return self.capability


def parse_params_b(name: str) -> float | None:
    """Parameters in billions from a model name ("qwen2.5:14b" -> 14, "mixtral:8x7b" -> 56, "135m" -> 0.135)."""
    best = None
    for experts, size, unit in _SIZE.findall(name):
        value = float(size) / (1000.0 if unit.lower() == "m" else 1.0)
        if experts:
            value *= int(experts)
        best = value if best is None else max(best, value)
    return best


def capability_of(params_b: float) -> float:
    """0.5B -> 0.26, 3B -> 0.49, 7B -> 0.6, 14B -> 0.69, 32B -> 0.8, 70B -> 0.9, >=200B -> 1."""
    return round(min(1.0, max(0.05, 0.35 + 0.3 * math.log10(max(params_b, 1e-3)))), 3)


@lru_cache(maxsize=4096)
def profile(name: str) -> ModelProfile:
    """The profile of a model from its name alone (cached)."""
    params = parse_params_b(name)
    params_b = DEFAULT_PARAMS_B if params is None else params
    active = _ACTIVE.search(name)
    # A mixture of experts answers about as well as a dense model between its active and total size.
    effective = math.sqrt(params_b * float(active.group(1))) if active else params_b
    specialties: list[Task] = []
    for pattern, tasks in _SPECIALISTS:
        if pattern.search(name):
            specialties.extend(t for t in tasks if t not in specialties)
    return ModelProfile(name=name, params_b=params_b, capability=capability_of(effective),
                        specialties=tuple(specialties), chat=not _NOT_CHAT.search(name))
