"""Settings of a simulated ComfyUI server, and the faults it can be told to inject."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINTS = ("anime-draft-sd15.safetensors", "anime-final-sd15.safetensors")
DEFAULT_LORAS = ("char-aoi-v3.safetensors", "char-ren-v2.safetensors",
                 "style-cel-v1.safetensors")
DEFAULT_CONTROLNETS = ("layout-lineart-sd15.safetensors",)
DEFAULT_UPSCALE_MODELS = ("anime-x2-compact.safetensors",)
# The model folders whose files a config lists (ComfyUI's folder key -> config field).
MODEL_FIELDS = {"checkpoints": "checkpoints", "loras": "loras", "controlnet": "controlnets",
                "upscale_models": "upscale_models"}


def default_model_metadata() -> dict[str, dict[str, str]]:
    """The recorded ``__metadata__`` of the checkpoint and the two LoRAs of the production
    recordings (``view_metadata_{checkpoint,lora,lora_style}.json``), keys in file order."""
    text = resources.files("tower.simulator").joinpath("data/model_metadata.json")
    return json.loads(text.read_text("utf-8"))


@dataclass
class SimulatorConfig:
    """What the simulated machine looks like and how fast it works.

    Times are *simulated* seconds; the server sleeps ``time_scale`` real seconds for each,
    so tests run a night's work in moments while the ratios stay realistic.

    Model files are names only (``checkpoints``, ``loras``, ``controlnets``,
    ``upscale_models``); ``model_metadata`` maps ``"<folder>/<name>"`` to the safetensors
    ``__metadata__`` that ``/view_metadata`` serves (a listed file without an entry has
    none, so it answers 404 like the recorded ControlNet). ``input_dir`` is where uploads
    go and LoadImage reads; by default ``<output_dir>-input`` beside the output folder,
    or a temp folder when ``output_dir`` is None.
    """

    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    loras: tuple[str, ...] = DEFAULT_LORAS
    controlnets: tuple[str, ...] = DEFAULT_CONTROLNETS
    upscale_models: tuple[str, ...] = DEFAULT_UPSCALE_MODELS
    model_metadata: dict[str, dict[str, str]] = field(default_factory=default_model_metadata)
    vram_mb: int = 12288
    time_scale: float = 0.01
    output_dir: Path | None = None
    input_dir: Path | None = None
    model_load_s: float = 3.0
    step_s_per_mpx: float = 0.25
    vae_s_per_mpx: float = 0.4
    name: str = "sim"

    def models(self, folder: str) -> list[str]:
        """``GET /models/<folder>``: the folder's file names, sorted like ComfyUI's
        ``get_filename_list``; empty for a known folder this config lists nothing in."""
        field_name = MODEL_FIELDS.get(folder)
        return sorted(getattr(self, field_name)) if field_name else []


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
