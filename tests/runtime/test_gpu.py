from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace

import pytest

from tower.runtime import gpu
from tower.runtime.gpu import GpuReading, GpuSampler, GpuSummary, nvml_reader, sampler_for

pynvml = gpu._import_pynvml()


def test_sampler_summarises_readings_taken_while_running():
    values = itertools.cycle([GpuReading(1000.0, 10.0), GpuReading(3000.0, 50.0),
                              GpuReading(None, 90.0), None])
    lock = threading.Lock()

    def read():
        with lock:
            return next(values)

    with GpuSampler(read, "test", interval=0.005) as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    assert summary.source == "test"
    assert summary.measured
    assert summary.samples >= 6  # entry + exit + ticks; None readings are not samples
    assert summary.vram_peak_mb == 3000.0
    assert 10.0 <= summary.util_mean <= 90.0


def test_a_batch_shorter_than_the_interval_is_still_measured():
    with GpuSampler(lambda: GpuReading(512.0, None), "test", interval=60) as sampler:
        pass
    assert sampler.summary() == GpuSummary("test", 2, 512.0, None, True)


def test_failing_reader_skips_samples_and_never_raises():
    calls = []

    def read():
        calls.append(1)
        raise RuntimeError("driver hiccup")

    with GpuSampler(read, "nvml", interval=0.005) as sampler:
        time.sleep(0.03)
    assert len(calls) >= 2
    assert sampler.summary() == GpuSummary("nvml", 0, None, None, False)


def test_sampler_thread_stops_on_exit():
    with GpuSampler(lambda: GpuReading(1.0, 1.0), "test", interval=0.005) as sampler:
        thread = sampler._thread
    assert thread is not None and not thread.is_alive()


@pytest.fixture
def fake_nvml(monkeypatch):
    """Stands in for the NVIDIA driver, which this machine does not have."""
    state = {"used": [2 * gpu.MIB * 1024, 6 * gpu.MIB * 1024], "util": [30, 70], "i": 0}

    def memory_info(handle):
        assert handle == "gpu0"
        i = min(state["i"], 1)
        return SimpleNamespace(used=state["used"][i], total=24 * gpu.MIB * 1024)

    def utilization(handle):
        i = min(state["i"], 1)
        state["i"] += 1
        return SimpleNamespace(gpu=state["util"][i], memory=0)

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: f"gpu{i}")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", memory_info)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", utilization)
    return state


def test_nvml_reader_reports_used_mb_and_utilisation(fake_nvml):
    read = nvml_reader(0)
    assert read is not None
    assert read() == GpuReading(2048.0, 30.0)
    assert read() == GpuReading(6144.0, 70.0)


def _no_driver():
    raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)


def test_nvml_unavailable_means_not_measured(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlInit", _no_driver)
    assert nvml_reader() is None


class _NoStats:
    """A server that cannot report system stats (unreachable)."""

    base_url = "http://127.0.0.1:9"

    def system_stats(self):
        raise ConnectionError("refused")


def test_sampler_for_prefers_nvml_for_a_local_server(fake_nvml):
    with sampler_for(_NoStats(), interval=60) as sampler:
        pass
    summary = sampler.summary()
    assert (summary.source, summary.measured, summary.vram_peak_mb) == ("nvml", True, 6144.0)


def test_sampler_for_without_any_source_records_nothing(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlInit", _no_driver)
    with sampler_for(_NoStats(), interval=60) as sampler:
        pass
    assert sampler.summary() == GpuSummary("none", 0, None, None, False)


@pytest.mark.parametrize(("url", "local"), [
    ("http://127.0.0.1:8188", True), ("http://localhost:8188/", True),
    ("http://[::1]:8188", True), ("https://gpu-03.studio.lan:8188", False),
    ("http://10.0.0.7:8188", False),
])
def test_is_local(url, local):
    assert gpu.is_local(url) is local


def test_comfyui_reader_reports_vram_in_use_on_the_simulator(simulator):
    from tower.comfyui import ComfyUIClient

    with ComfyUIClient(simulator.url) as client:
        stats = client.system_stats()
        device = stats.devices[0]
        reading = gpu.comfyui_reader(client)()
        assert reading.util_percent is None
        assert reading.vram_used_mb == (device.vram_total - device.vram_free) / gpu.MIB
        assert 0 <= reading.vram_used_mb <= simulator.config.vram_mb

        # A remote-looking server never uses NVML even where the driver exists.
        assert sampler_for(client, prefer_nvml=False).source == "comfyui"


def test_sampler_for_uses_system_stats_when_nvml_is_missing(simulator, monkeypatch):
    from tower.comfyui import ComfyUIClient

    monkeypatch.setattr(pynvml, "nvmlInit", _no_driver)
    with ComfyUIClient(simulator.url) as client, sampler_for(client, interval=60) as sampler:
        pass
    summary = sampler.summary()
    assert (summary.source, summary.samples, summary.measured) == ("comfyui", 2, True)
    assert summary.util_mean is None


def test_a_cpu_only_server_is_not_measured():
    """On CPU, ComfyUI reports system RAM as "VRAM": recording it would mislead."""
    from tower.comfyui import Device, SystemStats

    class CpuServer:
        base_url = "http://10.0.0.9:8188"

        def system_stats(self):
            cpu = Device("cpu", "cpu", None, vram_total=64 * 2**30, vram_free=32 * 2**30)
            return SystemStats(comfyui_version="0.3.64", devices=(cpu,))

    assert sampler_for(CpuServer()).source == "none"
