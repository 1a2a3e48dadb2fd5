"""Resolution: a shot list becomes a flat list of takes, each fully specified.

A resolved take carries everything needed to render it and to hash it, so nothing
downstream (dedup, planner, graph builder, index) looks back at presets or defaults.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property

from tower.shotlist.errors import InputError, Problem
from tower.shotlist.images import ImageError, read_image
from tower.shotlist.presets import BUILTIN_PRESETS, Preset
from tower.shotlist.shots import CONTROL_MODEL_RULE, Shot, ShotList
from tower.spec.keys import name_key, render_key
from tower.spec.parts import (
    CHECKPOINTS,
    CONTROLNETS,
    LORAS,
    UPSCALE_MODELS,
    ControlSpec,
    HiresSpec,
    InputImage,
    LoraSpec,
    UpscaleSpec,
)


@dataclass(frozen=True)
class ResolvedTake:
    """One image to render: take ``take`` of shot ``shot_id`` with all settings fixed."""

    episode: str
    shot_id: str
    take: int
    prompt: str
    negative: str
    seed: int
    preset: str
    checkpoint: str
    sampler: str
    scheduler: str
    steps: int
    cfg: float
    width: int
    height: int
    denoise: float = 1.0
    vae_tiled: bool = False
    vae_tile_size: int = 512
    loras: tuple[LoraSpec, ...] = ()
    init_image: InputImage | None = None
    control: ControlSpec | None = None
    hires: HiresSpec | None = None
    upscale: UpscaleSpec | None = None
    # Sorted ("<models folder>/<file name>", fingerprint) pairs for every model file the
    # take uses, filled by the planning pipeline once the servers have been asked (see
    # tower.spec.keys); empty when unknown (``tower plan``, tests), and the key is then
    # the name-based key it always was.
    model_identity: tuple[tuple[str, str], ...] = ()

    @cached_property
    def key(self) -> str:
        """The render key (sha256 hex) of this take's image."""
        return render_key(self)

    @cached_property
    def name_key(self) -> str:
        """The key without model identity: how the index keyed this image before identity."""
        return name_key(self)

    @property
    def model_names(self) -> tuple[str, ...]:
        """``<models folder>/<file name>`` of every model file, as ``model_identity`` names them."""
        return tuple(f"{folder}/{name}" for folder, name in self.models)

    def with_model_identity(self, fingerprints: Mapping[str, str]) -> ResolvedTake:
        """This take with the fingerprints of its model files (``folder/name`` -> fingerprint).

        Files without a fingerprint are left out; a take none of whose files has one keeps
        an empty identity and its name-based key.
        """
        identity = tuple(sorted((name, fingerprints[name]) for name in self.model_names
                                if fingerprints.get(name)))
        return replace(self, model_identity=identity)

    @property
    def label(self) -> str:
        return f"{self.episode} {self.shot_id} t{self.take}"

    @property
    def models(self) -> tuple[tuple[str, str], ...]:
        """Every model file the take needs, as ``(ComfyUI models folder, file name)``."""
        needed = [(CHECKPOINTS, self.checkpoint), *((LORAS, lora.name) for lora in self.loras)]
        if self.control is not None:
            needed.append((CONTROLNETS, self.control.model))
        if self.upscale is not None:
            needed.append((UPSCALE_MODELS, self.upscale.model))
        return tuple(dict.fromkeys(needed))

    @property
    def input_images(self) -> tuple[InputImage, ...]:
        """The studio's image files the graph loads (uploaded before it is queued)."""
        images = [self.init_image, self.control.image if self.control else None]
        return tuple(image for image in images if image is not None)

    @property
    def parts(self) -> str:
        """The production parts in use, e.g. ``lora+img2img+control``; empty for txt2img.

        Metrics carry it, so models fitted to plain renders are not skewed by heavier ones.
        """
        used = (("lora", bool(self.loras)), ("img2img", self.init_image is not None),
                ("control", self.control is not None), ("hires", self.hires is not None),
                ("upscale", self.upscale is not None))
        return "+".join(name for name, present in used if present)

    @property
    def sample_size(self) -> tuple[int, int]:
        """The largest size sampled and decoded: the hires pass's when there is one."""
        if self.hires is None:
            return (self.width, self.height)
        return self.hires.size(self.width, self.height)

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the stored image, after the hires pass and the upscale model."""
        width, height = self.sample_size
        factor = self.upscale.scale if self.upscale is not None else 1
        return (width * factor, height * factor)

    @property
    def settings(self) -> tuple[object, ...]:
        """Everything but the take index: takes with equal settings can share a prompt."""
        return tuple(getattr(self, name) for name in BATCH_FIELDS)

    def with_tiled_decode(self, tile_size: int) -> ResolvedTake:
        """The same take decoded with tiled VAE (a different key: pixels may differ)."""
        return replace(self, vae_tiled=True, vae_tile_size=tile_size)


# The fields every take of one ComfyUI prompt shares (all but the take index).
BATCH_FIELDS = tuple(f.name for f in fields(ResolvedTake) if f.name != "take")


def derive_seed(episode: str, shot_id: str) -> int:
    """A stable seed in 0..2^64-1 for shots that do not set one, so re-runs match."""
    digest = hashlib.sha256(f"{episode}/{shot_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def full_prompt(prefix: str, prompt: str, suffix: str, triggers: Sequence[str] = ()) -> str:
    """The prompt rendered: style prefix, trigger words, the shot's prompt, style suffix.

    Trigger words come in the order given, each once (two characters may share one);
    empty parts are left out, so a shot without characters reads as it always did.
    """
    words = dict.fromkeys(word.strip() for word in triggers if word.strip())
    return ", ".join(part.strip() for part in (prefix, *words, prompt, suffix) if part.strip())


def _image(shot_list: ShotList, shot: Shot, role: str, path: str) -> InputImage:
    """The input image at ``path`` (read when the list was loaded, so from the cache)."""
    try:
        return read_image(path)
    except ImageError as err:  # changed on disk since the list was loaded
        raise InputError([Problem(shot_list.episode, None, f"shot {shot.id}", role,
                                  str(err))]) from None


def _control(shot_list: ShotList, shot: Shot) -> ControlSpec | None:
    control = shot.control
    if control is None:
        return None
    model = control.model or shot_list.defaults.control_model
    if model is None:  # a list built in code without validation
        raise InputError([Problem(shot_list.episode, None, f"shot {shot.id}", "control.model",
                                  CONTROL_MODEL_RULE)])
    return ControlSpec(image=_image(shot_list, shot, "control", control.image), model=model,
                       strength=control.strength, start=control.start, end=control.end)


def resolve_shot(shot_list: ShotList, shot: Shot, preset: Preset) -> list[ResolvedTake]:
    """All takes of one shot at ``preset``; the shot's own fields beat the list's defaults.

    Text is stripped of surrounding spaces (which a spreadsheet adds or drops freely),
    so a list gives the same takes whether it was kept as YAML or exported to CSV.
    The LoRA chain is the shot's characters in the order listed, then the preset's
    style LoRAs; a layout sets the init image and its denoise replaces the preset's.
    A shot without characters, layout or control at a preset without LoRAs, hires or
    upscale resolves exactly as before those existed (same fields, same key).

    Raises:
        InputError: an input image that changed into something unusable since loading.
    """
    defaults = shot_list.defaults
    seed = shot.seed if shot.seed is not None else derive_seed(shot_list.episode, shot.id)
    takes = shot.takes or defaults.takes
    characters = [shot_list.characters[name] for name in shot.characters]
    layout = shot.layout
    base = ResolvedTake(
        episode=shot_list.episode,
        shot_id=shot.id,
        take=0,
        prompt=full_prompt(defaults.style_prefix, shot.prompt, defaults.style_suffix,
                           [word for character in characters for word in character.trigger]),
        negative=(shot.negative if shot.negative is not None else defaults.negative).strip(),
        seed=seed,
        preset=preset.name,
        checkpoint=shot.checkpoint or defaults.checkpoint or preset.checkpoint,
        sampler=preset.sampler,
        scheduler=preset.scheduler,
        steps=preset.steps,
        cfg=preset.cfg,
        width=shot.width or defaults.width or preset.width,
        height=shot.height or defaults.height or preset.height,
        denoise=layout.denoise if layout is not None else preset.denoise,
        vae_tiled=preset.vae_tiled,
        vae_tile_size=preset.vae_tile_size,
        loras=(*(c.spec() for c in characters), *(lora.spec() for lora in preset.loras)),
        init_image=_image(shot_list, shot, "layout", layout.image) if layout else None,
        control=_control(shot_list, shot),
        hires=preset.hires.spec() if preset.hires is not None else None,
        upscale=preset.upscale.spec() if preset.upscale is not None else None,
    )
    return [replace(base, take=k) for k in range(takes)]


def resolve_takes(
    shot_list: ShotList,
    presets: Mapping[str, Preset] = BUILTIN_PRESETS,
    preset_override: str | None = None,
    shots: Collection[str] | None = None,
) -> list[ResolvedTake]:
    """Every take of the list (or of ``shots``), in shot-list order.

    Args:
        preset_override: render every shot at this preset instead of its own.
        shots: only these shot ids; an id not in the list is an error, not a no-op.

    Raises:
        KeyError: for an unknown preset override or shot id.
        InputError: an input image changed into something unusable since loading.
    """
    if preset_override is not None and preset_override not in presets:
        raise KeyError(f"unknown preset {preset_override!r}; known: {', '.join(sorted(presets))}")
    if shots is not None:
        missing = set(shots) - {s.id for s in shot_list.shots}
        if missing:
            raise KeyError(f"shots not in {shot_list.episode}: {', '.join(sorted(missing))}")
    resolved: list[ResolvedTake] = []
    for shot in shot_list.shots:
        if shots is not None and shot.id not in shots:
            continue
        name = preset_override or shot.preset or shot_list.defaults.preset
        resolved += resolve_shot(shot_list, shot, presets[name])
    return resolved
