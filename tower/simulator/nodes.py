"""What each simulated node computes and costs.

Values flowing between nodes are small descriptions (which checkpoint and LoRAs, which
prompt text and ControlNets, which noise index and what a latent started from), not
tensors: enough to draw each image deterministically (:mod:`tower.simulator.pictures`)
and to price the work (:mod:`tower.simulator.costs`). The pipeline's node classes have
real handlers; any other valid class runs generically, passing latents and images
through, so other graphs still execute and their SaveImage writes one image per latent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from PIL import Image, ImageOps, ImageSequence

from tower.simulator import costs
from tower.simulator.folders import Folders, sha256_file
from tower.simulator.images import save_images
from tower.simulator.pictures import (
    LATENT_SCALE,
    Control,
    Crop,
    Lora,
    Picture,
    Resize,
    Sampled,
    Upscaled,
    fit,
    loaded,
)


@dataclass(frozen=True)
class Model:
    """A checkpoint loader's MODEL, CLIP or VAE, with the LoRAs patched into it."""

    checkpoint: str
    loras: tuple[Lora, ...] = ()


@dataclass(frozen=True)
class Conditioning:
    text: str
    checkpoint: str
    loras: tuple[Lora, ...] = ()  # the CLIP's
    controls: tuple[Control, ...] = ()


@dataclass(frozen=True)
class ControlNet:
    name: str


@dataclass(frozen=True)
class UpscaleModel:
    name: str
    scale: int


@dataclass(frozen=True)
class LatentItem:
    """One latent of a batch: its noise index (ComfyUI's ``batch_index``, else its
    position) and what decoding it shows (None for an empty latent)."""

    index: int
    content: Picture | None = None


@dataclass(frozen=True)
class Latent:
    """A latent batch; ``width`` and ``height`` in pixels (latent size x 8)."""

    width: int
    height: int
    items: tuple[LatentItem, ...]

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(item.index for item in self.items)


@dataclass(frozen=True)
class Images:
    pictures: tuple[Picture, ...] = field(default_factory=tuple)


class SimulatedError(Exception):
    """A run-time failure reported with a ComfyUI exception type name."""

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


class Context(Protocol):
    """What a node handler may use from the executor."""

    folders: Folders
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


def lora_loader(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """LoraLoader and LoraLoaderModelOnly. Both strengths 0 return the inputs untouched
    (fact 24); a zero strength on one side leaves that side's pixels alone too."""
    name = inputs["lora_name"]
    model: Model = inputs["model"]
    clip: Model | None = inputs.get("clip")
    strength_model = inputs["strength_model"]
    strength_clip = inputs.get("strength_clip", 0.0)
    if strength_model == 0 and strength_clip == 0:
        return (model, clip), None
    ctx.work(costs.lora_patch_s(ctx.config.model_load_s))
    if strength_model != 0:
        model = replace(model, loras=(*model.loras, Lora(name, strength_model)))
    if clip is not None and strength_clip != 0:
        clip = replace(clip, loras=(*clip.loras, Lora(name, strength_clip)))
    return (model, clip), None


def clip_text_encode(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    clip: Model = inputs["clip"]
    ctx.ensure_loaded(clip.checkpoint)
    ctx.work(costs.CLIP_ENCODE_S)
    return (Conditioning(inputs["text"], clip.checkpoint, clip.loras),), None


def empty_latent(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    width, height = _latent_size(inputs["width"]), _latent_size(inputs["height"])
    items = tuple(LatentItem(k) for k in range(inputs["batch_size"]))
    return (Latent(width, height, items),), None


def latent_from_batch(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Slice a latent batch, clamping like ComfyUI's LatentFromBatch (fact 16)."""
    latent = _as_latent(inputs["samples"])
    size = len(latent.items)
    start = min(size - 1, inputs["batch_index"])
    length = min(size - start, inputs["length"])
    return (replace(latent, items=latent.items[start:start + length]),), None


def repeat_latent_batch(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Repeat a batch; noise indices continue past the batch's span, like ComfyUI's
    ``batch_index`` offset, so a repeated whole batch draws fresh noise per copy."""
    latent = _as_latent(inputs["samples"])
    indices = latent.indices
    offset = max(indices) - min(indices) + 1
    items = [LatentItem(item.index + copy * offset, item.content)
             for copy in range(inputs["amount"]) for item in latent.items]
    return (replace(latent, items=tuple(items)),), None


def latent_upscale_by(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Scale each latent; the size rounds like ComfyUI's (``round(w/8*scale)*8``) and
    noise indices are kept, so a hires pass keeps each take's identity."""
    latent = _as_latent(inputs["samples"])
    scale, method = inputs["scale_by"], inputs["upscale_method"]
    width = round(latent.width / LATENT_SCALE * scale) * LATENT_SCALE
    height = round(latent.height / LATENT_SCALE * scale) * LATENT_SCALE
    items = tuple(LatentItem(item.index, None if item.content is None else
                             Resize(item.content, width, height, method))
                  for item in latent.items)
    return (Latent(width, height, items),), None


def ksampler(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Sample each latent from noise drawn for its index. ``progress`` counts ``steps``
    whatever the denoise (fact 13); ControlNets slow each step and take VRAM."""
    latent = _as_latent(inputs.get("latent_image"))
    model: Model = inputs["model"]
    positive, negative = inputs.get("positive"), inputs.get("negative")
    seed = inputs.get("seed", inputs.get("noise_seed", 0))
    steps = inputs.get("steps", 1)
    denoise = inputs.get("denoise", 1.0)
    batch = len(latent.items)
    controls = _controls(positive)
    nets = len({c.model for c in controls + _controls(negative)})
    ctx.ensure_loaded(model.checkpoint)
    ctx.maybe_fail(batch)
    act = costs.sampling_mb(latent.width, latent.height, batch, nets)
    ctx.check_vram(act)
    step = costs.step_s(latent.width, latent.height, batch, ctx.config.step_s_per_mpx, nets)
    ctx.progress_steps(node_id, steps, step, act)
    text = positive.text if isinstance(positive, Conditioning) else ""
    clip_loras = positive.loras if isinstance(positive, Conditioning) else ()
    items = tuple(LatentItem(item.index, Sampled(
        model.checkpoint, text, seed, item.index, latent.width, latent.height,
        loras=model.loras, clip_loras=clip_loras, controls=controls, base=item.content,
        denoise=denoise, steps=steps)) for item in latent.items)
    return (Latent(latent.width, latent.height, items),), None


def vae_decode(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    latent = _as_latent(inputs["samples"])
    vae: Model = inputs["vae"]
    tile = inputs.get("tile_size")
    batch = len(latent.items)
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
    return (_decoded(latent, vae.checkpoint),), None


def vae_encode(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Encode images to latents of size image/8, cropping to a multiple of 8 around the
    centre as ``vae_encode_crop_pixels`` does."""
    images = _as_images(inputs["pixels"])
    vae: Model = inputs["vae"]
    first = images.pictures[0]
    width, height = _latent_size(first.width), _latent_size(first.height)
    batch = len(images.pictures)
    ctx.ensure_loaded(vae.checkpoint)
    act = costs.encode_mb(width, height, batch)
    ctx.check_vram(act)
    ctx.work(costs.encode_s(width, height, batch, ctx.config.vae_s_per_mpx), act)
    items = tuple(LatentItem(k, _crop_to(p, width, height))
                  for k, p in enumerate(images.pictures))
    return (Latent(width, height, items),), None


def load_image(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Read the file's frames of the first frame's size, as RGB (LoadImage)."""
    path = ctx.folders.annotated_path(inputs["image"])
    ctx.work(costs.LOAD_IMAGE_S)
    try:
        with Image.open(path) as img:
            frames = [loaded(ImageOps.exif_transpose(frame))
                      for frame in ImageSequence.Iterator(img)]
    except Exception as err:
        raise SimulatedError(_type_name(err), str(err)) from err
    frames = [f for f in frames if (f.width, f.height) == (frames[0].width, frames[0].height)]
    return (Images(tuple(frames)), None), None


def image_scale(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """ImageScale: a 0 side keeps the aspect; ``crop: center`` crops before scaling."""
    images = _as_images(inputs["image"])
    width, height = inputs["width"], inputs["height"]
    if width == 0 and height == 0:
        return (images,), None
    first = images.pictures[0]
    if width == 0:
        width = max(1, round(first.width * height / first.height))
    elif height == 0:
        height = max(1, round(first.height * width / first.width))
    return (Images(tuple(fit(p, width, height, inputs["upscale_method"], inputs["crop"])
                         for p in images.pictures)),), None


def image_scale_by(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    images = _as_images(inputs["image"])
    scale = inputs["scale_by"]
    return (Images(tuple(fit(p, round(p.width * scale), round(p.height * scale),
                             inputs["upscale_method"], "disabled")
                         for p in images.pictures)),), None


def controlnet_loader(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    ctx.work(costs.controlnet_load_s(ctx.config.model_load_s))
    return (ControlNet(inputs["control_net_name"]),), None


def controlnet_apply(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """ControlNetApplyAdvanced: both conditionings carry the hint. Strength 0 changes
    nothing; a hint of another size is fitted at sampling time, never refused (fact 19)."""
    positive, negative = inputs["positive"], inputs["negative"]
    strength = inputs["strength"]
    if strength == 0:
        return (positive, negative), None
    net: ControlNet = inputs["control_net"]
    hint = _as_images(inputs["image"]).pictures[0]
    control = Control(net.name, hint, strength, inputs["start_percent"], inputs["end_percent"])
    return tuple(_with_control(c, control) for c in (positive, negative)), None


def upscale_model_loader(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    name = inputs["model_name"]
    ctx.work(costs.UPSCALE_MODEL_LOAD_S)
    return (UpscaleModel(name, model_scale(name)),), None


def image_upscale_with_model(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    """Scale by the model's factor, one ``progress`` frame per 512-pixel tile (fact 27)."""
    model: UpscaleModel = inputs["upscale_model"]
    images = _as_images(inputs["image"])
    first = images.pictures[0]
    batch = len(images.pictures)
    ctx.check_vram(costs.UPSCALE_MB)
    tiles = costs.upscale_tiles(first.width, first.height, batch)
    seconds = costs.upscale_s(first.width * model.scale, first.height * model.scale, batch)
    ctx.progress_steps(node_id, tiles, seconds / tiles, costs.UPSCALE_MB)
    return (Images(tuple(Upscaled(p, model.name, model.scale) for p in images.pictures)),), None


def save_image(ctx: Context, node_id: str, inputs: dict[str, Any]) -> Result:
    images = _as_images(inputs["images"])
    ctx.work(costs.SAVE_S_PER_IMAGE * len(images.pictures))
    try:
        saved = save_images(ctx.folders.output, str(inputs.get("filename_prefix", "ComfyUI")),
                            list(images.pictures), ctx.prompt, ctx.extra_pnginfo)
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


def load_image_changed(folders: Folders, inputs: dict[str, Any]) -> str | None:
    """LoadImage's ``IS_CHANGED``: the file's sha256, so the cache follows its content
    (fact 12); None when it cannot be read (ComfyUI's NaN: never equal, always re-run)."""
    try:
        return sha256_file(folders.annotated_path(inputs["image"]))
    except (OSError, KeyError, TypeError, AttributeError):
        return None


def model_scale(name: str) -> int:
    """An upscale model's factor from its name (``anime-x2-compact`` -> 2); 4, the
    usual ESRGAN factor, when the name does not say."""
    match = re.search(r"(?:^|[^0-9a-z])(?:x(\d)|(\d)x)(?:[^0-9a-z]|$)", name.lower())
    return int(match.group(1) or match.group(2)) if match else 4


def _latent_size(pixels: int) -> int:
    return max(1, pixels // LATENT_SCALE) * LATENT_SCALE


def _crop_to(picture: Picture, width: int, height: int) -> Picture:
    if (picture.width, picture.height) == (width, height):
        return picture
    left = (picture.width % LATENT_SCALE) // 2
    top = (picture.height % LATENT_SCALE) // 2
    return Crop(picture, left, top, width, height)


def _controls(conditioning: Any) -> tuple[Control, ...]:
    return conditioning.controls if isinstance(conditioning, Conditioning) else ()


def _with_control(conditioning: Any, control: Control) -> Any:
    if not isinstance(conditioning, Conditioning):
        return conditioning
    return replace(conditioning, controls=(*conditioning.controls, control))


def _type_name(err: Exception) -> str:
    """ComfyUI's ``full_type_name``: the module, unless builtins, and the class."""
    module = type(err).__module__
    name = type(err).__qualname__
    return name if module == "builtins" else f"{module}.{name}"


def _decoded(latent: Latent, checkpoint: str) -> Images:
    """What the VAE shows: each latent's content, or plain noise for an empty latent."""
    return Images(tuple(item.content if item.content is not None else
                        Sampled(checkpoint, "", 0, item.index, latent.width, latent.height)
                        for item in latent.items))


def _as_latent(value: Any) -> Latent:
    if isinstance(value, Latent):
        return value
    return Latent(64, 64, (LatentItem(0),))


def _as_images(value: Any) -> Images:
    if isinstance(value, Images):
        return value
    return _decoded(_as_latent(value), "")


HANDLERS: dict[str, Handler] = {
    "CheckpointLoaderSimple": checkpoint_loader,
    "LoraLoader": lora_loader,
    "LoraLoaderModelOnly": lora_loader,
    "CLIPTextEncode": clip_text_encode,
    "EmptyLatentImage": empty_latent,
    "LatentFromBatch": latent_from_batch,
    "RepeatLatentBatch": repeat_latent_batch,
    "LatentUpscaleBy": latent_upscale_by,
    "KSampler": ksampler,
    "KSamplerAdvanced": ksampler,
    "VAEDecode": vae_decode,
    "VAEDecodeTiled": vae_decode,
    "VAEEncode": vae_encode,
    "LoadImage": load_image,
    "ImageScale": image_scale,
    "ImageScaleBy": image_scale_by,
    "ControlNetLoader": controlnet_loader,
    "ControlNetApplyAdvanced": controlnet_apply,
    "UpscaleModelLoader": upscale_model_loader,
    "ImageUpscaleWithModel": image_upscale_with_model,
    "SaveImage": save_image,
}
# Classes with IS_CHANGED: its value joins the node's cache key.
IS_CHANGED: dict[str, Callable[[Folders, dict[str, Any]], str | None]] = {
    "LoadImage": load_image_changed,
    "LoadImageMask": load_image_changed,
}
