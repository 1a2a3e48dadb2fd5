"""Settings of a simulated ComfyUI server, and the faults it can be told to inject."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINTS = ("anime-draft-sd15.safetensors", "anime-final-sd15.safetensors")


@dataclass
class SimulatorConfig:
    """What the simulated machine looks like and how fast it works.

    Times are *simulated* seconds; the server sleeps ``time_scale`` real seconds for each,
    so tests run a night's work in moments while the ratios stay realistic.
    """

    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    vram_mb: int = 12288
    time_scale: float = 0.01
    output_dir: Path | None = None
    model_load_s: float = 3.0
    step_s_per_mpx: float = 0.25
    vae_s_per_mpx: float = 0.4
    name: str = "sim"


@dataclass
class Faults:
    """Failures to inject; mutable at runtime (``server.faults.http_500_next = 2``).

    ``http_500_*`` and ``slow_response_s`` apply to every HTTP route except ``/_tower/*``
    (the control routes stay usable while the server misbehaves).
    """

    http_500_next: int = 0
    http_500_rate: float = 0.0
    slow_response_s: float = 0.0
    drop_ws_after: int | None = None
    history_delay_s: float = 0.0
    execution_error_rate: float = 0.0
    oom_above_batch: int | None = None
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, values: dict[str, Any]) -> None:
        """Set the given fields, checking names and types; raises ValueError naming the field."""
        known = {f.name: f for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {sorted(known)}")
            checked[name] = _check_fault(name, value)
        for name, value in checked.items():
            setattr(self, name, value)


_OPTIONAL_INTS = {"drop_ws_after", "oom_above_batch"}
_INTS = {"http_500_next", "seed"}


def _check_fault(name: str, value: Any) -> Any:
    if value is None and name in _OPTIONAL_INTS:
        return None
    if isinstance(value, bool):
        raise ValueError(f"fault {name!r} must be a number, got {value!r}")
    if name in _INTS or name in _OPTIONAL_INTS:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"fault {name!r} must be a non-negative integer, got {value!r}")
        return value
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"fault {name!r} must be a non-negative number, got {value!r}")
    if name.endswith("_rate") and value > 1:
        raise ValueError(f"fault {name!r} is a probability in [0, 1], got {value!r}")
    return float(value)
