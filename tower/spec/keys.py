"""Render keys: the identity of one take's image.

A key is sha256 over a canonical JSON encoding of everything that changes the pixels
and nothing that does not. Shot ids, episodes and how takes are split into batches
are deliberately absent: two shots with identical parameters share a key, which is
what lets the output index avoid rendering the same image twice. Batch splits do not
matter because the render graph gives take k the same noise in any batch (see
``tower.spec.graph``).

Model identity: a take's ``model_identity`` (``("<folder>/<file>", fingerprint)`` pairs,
see ``tower.comfyui.model_fingerprint``) enters the key as ``models`` only when known, so
a take without it keeps exactly the name-based key it always had (``name_key``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from tower.spec.parts import ControlSpec, HiresSpec, InputImage, LoraSpec, UpscaleSpec

# Bump when the render graph changes in a way that changes pixels.
GRAPH_VERSION = "tower-graph-1"

KEY_FIELDS = (
    "checkpoint", "prompt", "negative", "seed", "take", "steps", "cfg", "sampler",
    "scheduler", "width", "height", "denoise", "vae_tiled", "vae_tile_size",
)


class KeyParams(Protocol):
    """What a render key is computed from (a ResolvedTake satisfies it)."""

    checkpoint: str
    prompt: str
    negative: str
    seed: int
    take: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    width: int
    height: int
    denoise: float
    vae_tiled: bool
    vae_tile_size: int
    loras: tuple[LoraSpec, ...]
    init_image: InputImage | None
    control: ControlSpec | None
    hires: HiresSpec | None
    upscale: UpscaleSpec | None
    model_identity: tuple[tuple[str, str], ...]


def key_payload(params: KeyParams) -> dict[str, Any]:
    """The canonical mapping hashed into a key.

    Floats are written with ``repr`` (shortest round-trip form, stable across Python
    versions) so ``6.5`` and ``6.50`` hash alike; the tile size only counts when the
    decode is tiled, since it is unused otherwise.
    """
    payload: dict[str, Any] = {name: getattr(params, name) for name in KEY_FIELDS}
    payload["cfg"] = _number(params.cfg)
    payload["denoise"] = _number(params.denoise)
    payload["seed"] = str(params.seed)
    payload["vae"] = f"tiled:{params.vae_tile_size}" if params.vae_tiled else "full"
    del payload["vae_tiled"], payload["vae_tile_size"]
    payload["graph"] = GRAPH_VERSION
    payload |= _parts_payload(params)
    if params.model_identity:
        payload["models"] = {name: fingerprint for name, fingerprint in params.model_identity}
    return payload


def name_payload(params: KeyParams) -> dict[str, Any]:
    """:func:`key_payload` without the model identity: what keys were before identity.

    The output index still holds rows keyed this way; dedup uses it to recognise them
    (see the module docstring).
    """
    payload = key_payload(params)
    payload.pop("models", None)
    return payload


def _parts_payload(params: KeyParams) -> dict[str, Any]:
    """The production graph's parts, each only when present, so a plain txt2img take
    keeps the key it had before the parts existed (and the index still knows it).

    An input image counts by its content alone: a moved or renamed layout keeps its
    keys, an edited one changes them. A LoRA with both strengths 0 changes no pixel
    (ComfyUI skips it) but stays in the key: the key follows the graph, not a guess.
    """
    parts: dict[str, Any] = {}
    if params.loras:
        parts["loras"] = [[lora.name, _number(lora.strength_model),
                           _number(lora.strength_clip)] for lora in params.loras]
    if params.init_image is not None:
        parts["init"] = params.init_image.sha256
    if params.control is not None:
        control = params.control
        parts["control"] = {"image": control.image.sha256, "model": control.model,
                            "strength": _number(control.strength),
                            "start": _number(control.start), "end": _number(control.end)}
    if params.hires is not None:
        hires = params.hires
        parts["hires"] = {"scale": _number(hires.scale), "denoise": _number(hires.denoise),
                          "steps": hires.steps, "method": hires.method}
    if params.upscale is not None:
        parts["upscale"] = params.upscale.model  # its scale comes from the weights
    return parts


def _number(value: float) -> str:
    """A float as the key writes it: ``repr``, so ``6.5`` and ``6.50`` hash alike."""
    return repr(float(value))


def render_key(params: KeyParams) -> str:
    """The 64-hex sha256 render key of one take (with its model identity when known)."""
    return _digest(key_payload(params))


def name_key(params: KeyParams) -> str:
    """The render key the take has without model identity (the key before identity)."""
    return _digest(name_payload(params))


def _digest(payload: dict[str, Any]) -> str:
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()
