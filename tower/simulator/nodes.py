"""What each simulated node computes and costs.

Values flowing between nodes are small descriptions (which checkpoint, which prompt
text, which latent indices), not tensors: enough to draw each image deterministically
and to price the work. The pipeline's node classes have real handlers; any other valid
class runs generically, passing latents and images through, so other graphs still
execute and their SaveImage writes one image per latent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tower.simulator import costs
from tower.simulator.images import ImageSpec, save_images


@dataclass(frozen=True)
class Model:
    checkpoint: str


@dataclass(frozen=True)
class Conditioning:
    text: str
    checkpoint: str


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    indices: tuple[int, ...]
    checkpoint: str = ""
    text: str = ""
    seed: int = 0


@dataclass(frozen=True)
class Images:
    specs: tuple[ImageSpec, ...] = field(default_factory=tuple)


class SimulatedError(Exception):
    """A run-time failure reported with a ComfyUI exception type name."""

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


class Context(Protocol):
    """What a node handler may use from the executor."""

    output_dir: Path
    prompt: dict[str, Any]
    extra_pnginfo: dict[str, Any] | None

    def work(self, seconds: float, vram_mb: float = 0.0) -> None: ...
    def ensure_loaded(self, checkpoint: str) -> None: ...
    def load_checkpoint(self, checkpoint: str) -> None: ...
    def progress_steps(self, node_id: str, steps: int, step_s: float, vram_mb: float) -> None: ...
    def check_vram(self, needed_mb: float) -> None: ...
    def maybe_fail(self, batch: int) -> None: ...
    @property
    def config(self) -> Any: ...


Outputs = tuple[Any, ...]
Result = tuple[Outputs, dict[str, Any] | None]
Handler = Callable[[Context, str, dict[str, Any]], Result]


def checkpoint_loader(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    name = inputs["ckpt_name"]
    ctx.load_checkpoint(name)  # executing the loader reads the file, loaded or not
    return (Model(name), Model(name), Model(name)), None


def clip_text_encode(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    clip = inputs["clip"]
    ctx.ensure_loaded(clip.checkpoint)
    ctx.work(costs.CLIP_ENCODE_S)
    return (Conditioning(inputs["text"], clip.checkpoint),), None


def empty_latent(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    count = inputs["batch_size"]
    return (Latent(inputs["width"], inputs["height"], tuple(range(count))),), None


def latent_from_batch(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Slice a latent batch, clamping like ComfyUI's LatentFromBatch."""
    latent: Latent = inputs["samples"]
    size = len(latent.indices)
    start = min(size - 1, inputs["batch_index"])
    length = min(size - start, inputs["length"])
    picked = latent.indices[start:start + length]
    return (Latent(latent.width, latent.height, picked, latent.checkpoint, latent.text,
                   latent.seed),), None


def ksampler(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    latent: Latent = _as_latent(inputs.get("latent_image"))
    model: Model = inputs["model"]
    positive = inputs.get("positive")
    seed = inputs.get("seed", inputs.get("noise_seed", 0))
    steps = inputs.get("steps", 1)
    batch = len(latent.indices)
    ctx.ensure_loaded(model.checkpoint)
    ctx.maybe_fail(batch)
    act = costs.sampling_mb(latent.width, latent.height, batch)
    ctx.check_vram(act)
    step = costs.step_s(latent.width, latent.height, batch, ctx.config.step_s_per_mpx)
    ctx.progress_steps(node_id, steps, step, act)
    text = positive.text if isinstance(positive, Conditioning) else ""
    return (Latent(latent.width, latent.height, latent.indices, model.checkpoint, text,
                   seed),), None


def vae_decode(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    latent = _as_latent(inputs["samples"])
    vae: Model = inputs["vae"]
    tile = inputs.get("tile_size")
    batch = len(latent.indices)
    ctx.ensure_loaded(vae.checkpoint)
    act = costs.decode_mb(latent.width, latent.height, batch, tile)
    ctx.check_vram(act)
    seconds = costs.decode_s(latent.width, latent.height, batch, ctx.config.vae_s_per_mpx,
                             tiled=tile is not None)
    if tile is None:
        ctx.work(seconds, act)
    else:
        tiles = costs.decode_tiles(latent.width, latent.height, batch, tile)
        ctx.progress_steps(node_id, tiles, seconds / tiles, act)
    return (_images(latent, vae.checkpoint),), None


def save_image(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    images = _as_images(inputs["images"])
    ctx.work(costs.SAVE_S_PER_IMAGE * len(images.specs))
    try:
        saved = save_images(ctx.output_dir, str(inputs.get("filename_prefix", "ComfyUI")),
                            list(images.specs), ctx.prompt, ctx.extra_pnginfo)
    except Exception as err:
        raise SimulatedError("Exception", str(err)) from err
    return (), {"images": saved}


def generic(ctx: Context, node_id: str, inputs: dict[str, Any], types: list[Any]) -> Result:
    """Any other class: pass latents and images through, anything else is opaque."""
    latent = next((v for v in inputs.values() if isinstance(v, Latent)), None)
    images = next((v for v in inputs.values() if isinstance(v, Images)), None)
    outputs: list[Any] = []
    for kind in types:
        if kind == "LATENT" and latent is not None:
            outputs.append(latent)
        elif kind == "IMAGE" and (images is not None or latent is not None):
            outputs.append(images or _as_images(latent))
        else:
            outputs.append(None)
    return tuple(outputs), None


def _images(latent: Latent, checkpoint: str) -> Images:
    ckpt = latent.checkpoint or checkpoint
    return Images(tuple(ImageSpec(ckpt, latent.text, latent.seed, k, latent.width,
                                  latent.height) for k in latent.indices))


def _as_latent(value: Any) -> Latent:
    if isinstance(value, Latent):
        return value
    return Latent(64, 64, (0,))


def _as_images(value: Any) -> Images:
    if isinstance(value, Images):
        return value
    return _images(_as_latent(value), "")


HANDLERS: dict[str, Handler] = {
    "CheckpointLoaderSimple": checkpoint_loader,
    "CLIPTextEncode": clip_text_encode,
    "EmptyLatentImage": empty_latent,
    "LatentFromBatch": latent_from_batch,
    "KSampler": ksampler,
    "KSamplerAdvanced": ksampler,
    "VAEDecode": vae_decode,
    "VAEDecodeTiled": vae_decode,
    "SaveImage": save_image,
}
