"""GPU probe: facts from an NVML-shaped object, and a CPU node (not an error) when there is no NVIDIA driver."""

from __future__ import annotations

from pathlib import Path

from types import SimpleNamespace

from node_agent.gpu import GpuProbe
from protocol import GpuInfo


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """The slice of pynvml the probe uses, over a list of fake devices."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = FakeNvmlError

    def __init__(self, devices: list[dict], *, init_error: str | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.initialised = False

    def nvmlInit(self):
        if self.init_error:
            raise FakeNvmlError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self):
        self.initialised = False

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetName(self, h):
        return h["name"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h["total_mb"] * 1024 * 1024, free=h["free_mb"] * 1024 * 1024)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetTemperature(self, h, sensor):
        if h.get("temp") is None:
            raise FakeNvmlError("Not Supported")
        return h["temp"]


def test_reads_every_gpu_and_leaves_unsupported_facts_unknown():
    nvml = FakeNvml([
        {"name": b"NVIDIA A100-SXM4-80GB", "total_mb": 81920, "free_mb": 80000, "util": 37, "temp": 61},
        {"name": "NVIDIA L4", "total_mb": 23034, "free_mb": 1000, "util": 99, "temp": None},
    ])
    probe = GpuProbe(nvml)
    gpus = probe.snapshot()
    assert gpus == (
        GpuInfo("NVIDIA A100-SXM4-80GB", 81920, 80000, 37.0, 61.0),
        GpuInfo("NVIDIA L4", 23034, 1000, 99.0, None),
    )
    nvml.devices[0]["free_mb"] = 100  # refreshed on every snapshot
    assert probe.snapshot()[0].vram_free_mb == 100
    probe.close()
    assert not nvml.initialised


def test_no_driver_is_a_cpu_node():
    probe = GpuProbe(FakeNvml([], init_error="Driver Not Loaded"))
    assert probe.snapshot() == ()
    assert "Driver Not Loaded" in probe.reason
    probe.close()


def test_the_real_library_reports_what_this_machine_has():
    """The real nvidia-ml-py: without an NVIDIA driver (this machine, CI) no GPUs and a reason naming NVML;
    with one (/proc/driver/nvidia exists), every GPU listed with a name and its memory."""
    probe = GpuProbe()
    try:
        gpus = probe.snapshot()
        if Path("/proc/driver/nvidia").exists():
            assert gpus and all(g.name and (g.vram_total_mb or 0) > 0 for g in gpus), gpus
        else:
            assert gpus == () and "NVML" in probe.reason, probe.reason
    finally:
        probe.close()
