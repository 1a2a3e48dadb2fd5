"""Per-batch GPU measurement: peak VRAM and mean utilisation while a batch renders.

Two sources, best first. On the GPU host, NVML gives used memory and utilisation of
the device directly. Elsewhere, ComfyUI's ``/system_stats`` gives total and free VRAM of
its first device (utilisation is unknown). Without either, the batch is recorded as not
measured (nulls in the metrics), never as zero. A failing read skips one sample; it
never fails the render it is watching.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

DEFAULT_INTERVAL_S = 0.5
MIB = 1024 * 1024
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class GpuReading:
    """One sample; ``None`` where the source cannot tell."""

    vram_used_mb: float | None
    util_percent: float | None


@dataclass(frozen=True)
class GpuSummary:
    """What a sampler saw over one batch."""

    source: str  # "nvml" | "comfyui" | "none"
    samples: int
    vram_peak_mb: float | None
    util_mean: float | None
    measured: bool


Reader = Callable[[], "GpuReading | None"]


class StatsClient(Protocol):
    """What the ComfyUI reader needs from a client."""

    def system_stats(self) -> Any: ...


class GpuSampler:
    """Samples a reader on a daemon thread while the ``with`` block runs.

    One reading is taken on entry and one on exit, so even a batch shorter than the
    interval is measured.
    """

    def __init__(self, read: Reader, source: str, interval: float = DEFAULT_INTERVAL_S):
        self._read = read
        self.source = source
        self.interval = interval
        self._readings: list[GpuReading] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval))
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            reading = self._read()
        except Exception:  # a missed sample must not fail the render being measured
            return
        if reading is not None:
            with self._lock:
                self._readings.append(reading)

    def summary(self) -> GpuSummary:
        """Peak VRAM and mean utilisation over the samples taken so far."""
        with self._lock:
            readings = list(self._readings)
        vram = [r.vram_used_mb for r in readings if r.vram_used_mb is not None]
        util = [r.util_percent for r in readings if r.util_percent is not None]
        return GpuSummary(
            source=self.source,
            samples=len(readings),
            vram_peak_mb=max(vram) if vram else None,
            util_mean=sum(util) / len(util) if util else None,
            measured=bool(vram or util),
        )


def _no_reading() -> GpuReading | None:
    return None


def _import_pynvml() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pynvml shim warns that it is deprecated
        import pynvml
    return pynvml


def nvml_reader(device_index: int = 0) -> Callable[[], GpuReading] | None:
    """A reader for NVIDIA device ``device_index``, or ``None`` where NVML is unavailable.

    No driver, no library or no such device all mean "cannot measure here", never an
    error: most hosts that run the pipeline have no GPU of their own.
    """
    try:
        pynvml = _import_pynvml()
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:
        return None

    def read() -> GpuReading:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return GpuReading(vram_used_mb=memory.used / MIB, util_percent=float(rates.gpu))

    return read


def _first_device(stats: Any) -> Any | None:
    devices = getattr(stats, "devices", None) or ()
    return devices[0] if devices else None


def comfyui_reader(client: StatsClient) -> Callable[[], GpuReading]:
    """A reader from ComfyUI's ``/system_stats``: VRAM in use on its first device.

    This counts all memory in use on that device (other processes, models kept
    loaded), which is what matters when deciding how large a batch fits.
    """

    def read() -> GpuReading:
        device = _first_device(client.system_stats())
        if device is None:
            return GpuReading(vram_used_mb=None, util_percent=None)
        used = (device.vram_total - device.vram_free) / MIB
        return GpuReading(vram_used_mb=used, util_percent=None)

    return read


def is_local(base_url: str) -> bool:
    """Whether a server URL points at this host (where NVML would see its GPU)."""
    return (urlsplit(base_url).hostname or "") in LOCAL_HOSTS


def _has_gpu(client: StatsClient) -> bool:
    try:
        device = _first_device(client.system_stats())
    except Exception:
        return False
    # On a CPU-only ComfyUI the "VRAM" fields are system RAM: not worth recording.
    return device is not None and getattr(device, "type", "cuda") != "cpu"


def sampler_for(client: StatsClient, prefer_nvml: bool = True,
                interval: float = DEFAULT_INTERVAL_S) -> GpuSampler:
    """The best sampler for a server: NVML on its own host, else ``/system_stats``, else none.

    NVML is used only when the server is on this host (a loopback URL), since it would
    otherwise measure the wrong machine's GPU.
    """
    if prefer_nvml and is_local(str(getattr(client, "base_url", ""))):
        read = nvml_reader()
        if read is not None:
            return GpuSampler(read, "nvml", interval)
    if _has_gpu(client):
        return GpuSampler(comfyui_reader(client), "comfyui", interval)
    return GpuSampler(_no_reading, "none", interval)
