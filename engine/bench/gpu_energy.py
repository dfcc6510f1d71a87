"""GPU energy over a timed window through NVML (package nvidia-ml-py, imported lazily), for the GPU bench.

Energy comes from the board's energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules, Volta and
later) when it answers, else from the mean of power samples (nvmlDeviceGetPowerUsage, milliwatts, 20 Hz) times
the window. Standard library only besides pynvml: the reference's process imports this module too.
"""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any

SAMPLE_INTERVAL_S = 0.05


class EnergyMeter:
    """with EnergyMeter() as meter: <steady run>; then meter.result(frames) → watts, joules, J/frame."""

    def __init__(self, device_index: int = 0) -> None:
        self.error = ""
        self._nvml: Any = None
        self._handle: Any = None
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            self._handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
            self._nvml = nvml
        except Exception as error:  # no module, no driver, no GPU: energy is simply unknown
            self.error = f"NVML unavailable: {type(error).__name__}: {error}"
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_mj: int | None = None
        self._end_mj: int | None = None
        self._start_s = self._end_s = 0.0

    def __enter__(self) -> EnergyMeter:
        if self._nvml is not None:
            self._start_mj = self._energy_mj()
            self._thread = threading.Thread(target=self._sample, name="dreamwire-nvml", daemon=True)
            self._thread.start()
        self._start_s = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self._end_s = time.perf_counter()
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)
            self._end_mj = self._energy_mj()

    def _energy_mj(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # not supported on this board: fall back to power samples
            return None

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            try:
                self._samples.append(self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0)
            except Exception as error:  # a failed reading ends sampling; the window keeps what it has
                self.error = f"power reading failed: {type(error).__name__}: {error}"
                return

    def result(self, frames: int) -> dict[str, Any]:
        seconds = self._end_s - self._start_s
        out: dict[str, Any] = {"power_w": None, "energy_j": None, "j_per_frame": None, "energy_source": None}
        if self._start_mj is not None and self._end_mj is not None and self._end_mj > self._start_mj:
            out["energy_j"] = (self._end_mj - self._start_mj) / 1000.0
            out["power_w"] = out["energy_j"] / seconds if seconds > 0 else None
            out["energy_source"] = "energy counter"
        elif self._samples:
            out["power_w"] = sum(self._samples) / len(self._samples)
            out["energy_j"] = out["power_w"] * seconds
            out["energy_source"] = f"{len(self._samples)} power samples"
        if self._samples:
            out["power_samples_mean_w"] = sum(self._samples) / len(self._samples)
        if out["energy_j"] is not None and frames:
            out["j_per_frame"] = out["energy_j"] / frames
        if self.error:
            out["energy_note"] = self.error
        return out
