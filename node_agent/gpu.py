"""GPU facts for advertisements through NVML (`nvidia-ml-py`); no NVIDIA library or driver means a CPU node.

The probe needs only this slice of the `pynvml` module, so tests inject any object that has it::

    nvmlInit() / nvmlShutdown() / nvmlDeviceGetCount() / nvmlDeviceGetHandleByIndex(i)
    nvmlDeviceGetName(h) / nvmlDeviceGetMemoryInfo(h) -> .total .free (bytes)
    nvmlDeviceGetUtilizationRates(h) -> .gpu (%) / nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU)
    NVMLError (exception class)

Each fact a GPU cannot report stays None; a probe that fails as a whole returns no GPUs and says why once.
"""

from __future__ import annotations

from typing import Any

import structlog

from protocol import GpuInfo

log = structlog.get_logger("node_agent.gpu")

_MB = 1024 * 1024


def _load_nvml() -> Any | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class GpuProbe:
    """Reads every NVIDIA GPU's name, VRAM, utilisation and temperature; CPU node when NVML is absent."""

    def __init__(self, nvml: Any | None = None) -> None:
        """`nvml`: the pynvml module or an object with the same slice (see the module docstring)."""
        self._nvml = nvml
        self._started = False
        self._gave_up = False
        #: Why there are no GPUs (None while GPUs are seen or before the first probe).
        self.reason: str | None = None

    def _start(self) -> bool:
        if self._started:
            return True
        if self._gave_up:  # no driver now means none until the agent restarts; don't dlopen every 5 s
            return False
        nvml = self._nvml if self._nvml is not None else _load_nvml()
        if nvml is None:
            self._none("nvidia-ml-py is not installed")
            self._gave_up = True
            return False
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError: library not found, driver not loaded, ...
            self._none(f"NVIDIA driver/NVML not available: {exc}")
            self._gave_up = True
            return False
        self._nvml = nvml
        self._started = True
        return True

    def _none(self, reason: str) -> None:
        if self.reason != reason:
            log.info("gpu_none", detail=reason, meaning="running as a CPU node; no GPU facts are advertised")
        self.reason = reason

    def snapshot(self) -> tuple[GpuInfo, ...]:
        """Current facts of every GPU (empty on a CPU node); never raises."""
        if not self._start():
            return ()
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            self._none(f"NVML could not count GPUs: {exc}")
            return ()
        gpus = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
            except Exception as exc:
                log.warning("gpu_unreadable", index=index, error=str(exc))
                continue
            gpus.append(GpuInfo(
                name=name.decode() if isinstance(name, bytes) else str(name),
                vram_total_mb=_try(lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total // _MB),
                vram_free_mb=_try(lambda: nvml.nvmlDeviceGetMemoryInfo(handle).free // _MB),
                utilization_pct=_try(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
                temperature_c=_try(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
            ))
        self.reason = None if gpus else "NVML reports no GPUs"
        return tuple(gpus)

    def close(self) -> None:
        if self._started:
            _try(self._nvml.nvmlShutdown)
            self._started = False


def _try(read: Any) -> Any:
    """One NVML read; a GPU that does not support it (NVMLError_NotSupported ...) gives None."""
    try:
        return read()
    except Exception:
        return None
