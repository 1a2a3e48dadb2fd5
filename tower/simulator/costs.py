"""How long simulated work takes and how much simulated VRAM it needs (pure functions).

Time, in simulated seconds:
    * loading a checkpoint: ``model_load_s`` (only when another checkpoint is loaded);
    * CLIP text encode: ``CLIP_ENCODE_S`` per prompt;
    * sampling: ``steps x max(STEP_FLOOR_S, step_s_per_mpx x megapixels x batch)``;
    * VAE decode: ``vae_s_per_mpx x megapixels x batch``, x ``TILED_SLOWDOWN`` when tiled
      (a tiled decode reports progress per tile, see :func:`decode_tiles`);
    * saving: ``SAVE_S_PER_IMAGE`` per image.

Production nodes (ratios from the CPU recordings' ``timings.json`` in
``shared/comfyui-contract/production``, where a checkpoint load cost about 2.5 s):
    * a LoRA (non-zero strength) patches the model when its loader runs:
      ``LORA_PATCH_SHARE`` (0.4) x ``model_load_s`` each; two LoRAs re-patched added
      about 2 s to a 2.8 s run (4.85 s after a strength change);
    * ControlNetLoader reads the file: ``CONTROLNET_LOAD_SHARE`` (0.2) x ``model_load_s``
      (a re-run loader added 0.4-0.7 s);
    * each ControlNet makes every sampler step ``CONTROLNET_STEP_EXTRA`` (85%) longer
      (3.2 s against 1.75 s for the same 2-step 64x64 render);
    * VAE encode: ``ENCODE_SHARE`` (0.5) of a decode of the same size (a guess: the
      recording cannot separate it; the encoder is the smaller half of the VAE);
    * LoadImage ``LOAD_IMAGE_S``, UpscaleModelLoader ``UPSCALE_MODEL_LOAD_S`` (a 2.4 MB
      file), ImageUpscaleWithModel ``UPSCALE_S_PER_MPX`` per output megapixel in tiles
      of 512 with 32 overlap (one progress frame per tile, fact 27; the recorded x2
      run of 96x96 took 0.09 s with its save).

VRAM, in MB (SD1.5-class, fp16):
    * ``CHECKPOINT_MB`` (2600) while a checkpoint is loaded;
    * sampling: ``SAMPLE_MB_PER_KPX`` (0.12) per 1000 pixels per image;
    * full VAE decode: ``DECODE_MB_PER_KPX`` (0.9) per 1000 pixels per image;
    * tiled VAE decode: the same rate, but over one tile (``tile_size`` squared) per image;
    * VAE encode: ``ENCODE_MB_PER_KPX``, the decode rate x 1767/2178 (the ratio of
      ComfyUI's ``memory_used_encode`` to ``memory_used_decode`` per pixel, comfy/sd.py);
    * a ControlNet: ``CONTROLNET_MB`` (700) of fp16 weights (the recorded SD1.5 file is
      722 MB) loaded with the model for sampling;
    * ImageUpscaleWithModel: ``UPSCALE_MB``, the memory ComfyUI itself frees first
      (``nodes_upscale_model.py``: 512 x 512 x 3 x 4 bytes x scale x 384, for x2);
    * a LoRA: nothing (its patches are merged into the loaded weights).

A node whose peak (checkpoint + its activations) exceeds the card fails with
``torch.OutOfMemoryError``; so 512x768 fits 27 images per batch on a 12 GB card with
full decode, 1024x1536 only 6, and tiling raises the latter to 41 (then sampling is the limit).
"""

from __future__ import annotations

import math

CHECKPOINT_MB = 2600.0
SAMPLE_MB_PER_KPX = 0.12
DECODE_MB_PER_KPX = 0.9
CLIP_ENCODE_S = 0.05
STEP_FLOOR_S = 0.02
TILED_SLOWDOWN = 1.3
SAVE_S_PER_IMAGE = 0.01
LORA_PATCH_SHARE = 0.4
CONTROLNET_LOAD_SHARE = 0.2
CONTROLNET_STEP_EXTRA = 0.85
CONTROLNET_MB = 700.0
ENCODE_SHARE = 0.5
ENCODE_MB_PER_KPX = DECODE_MB_PER_KPX * 1767 / 2178
LOAD_IMAGE_S = 0.005
UPSCALE_MODEL_LOAD_S = 0.05
UPSCALE_S_PER_MPX = 0.1
UPSCALE_TILE = 512
UPSCALE_OVERLAP = 32
UPSCALE_MB = 512 * 512 * 3 * 4 * 2 * 384 / 2**20


def megapixels(width: int, height: int) -> float:
    return width * height / 1_000_000


def step_s(width: int, height: int, batch: int, step_s_per_mpx: float,
           controlnets: int = 0) -> float:
    """Simulated seconds for one sampler step (with ``controlnets`` ControlNets applied)."""
    base = max(STEP_FLOOR_S, step_s_per_mpx * megapixels(width, height) * batch)
    return base * (1 + CONTROLNET_STEP_EXTRA * controlnets)


def decode_s(width: int, height: int, batch: int, vae_s_per_mpx: float, tiled: bool) -> float:
    cost = vae_s_per_mpx * megapixels(width, height) * batch
    return cost * TILED_SLOWDOWN if tiled else cost


def encode_s(width: int, height: int, batch: int, vae_s_per_mpx: float) -> float:
    return ENCODE_SHARE * decode_s(width, height, batch, vae_s_per_mpx, tiled=False)


def encode_mb(width: int, height: int, batch: int) -> float:
    return ENCODE_MB_PER_KPX * width * height / 1000 * batch


def lora_patch_s(model_load_s: float) -> float:
    return LORA_PATCH_SHARE * model_load_s


def controlnet_load_s(model_load_s: float) -> float:
    return CONTROLNET_LOAD_SHARE * model_load_s


def upscale_tiles(width: int, height: int, batch: int) -> int:
    """Progress steps of ImageUpscaleWithModel: ``get_tiled_scale_steps`` per image."""
    stride = UPSCALE_TILE - UPSCALE_OVERLAP
    return batch * math.ceil(width / stride) * math.ceil(height / stride)


def upscale_s(out_width: int, out_height: int, batch: int) -> float:
    return UPSCALE_S_PER_MPX * megapixels(out_width, out_height) * batch


def decode_tiles(width: int, height: int, batch: int, tile_size: int) -> int:
    """Progress steps of a tiled decode: like ComfyUI, three passes over the image with
    tiles of (t, t), (t/2, 2t) and (2t, t/2) pixels, per image (overlap ignored)."""
    half, double = max(1, tile_size // 2), tile_size * 2
    passes = ((tile_size, tile_size), (half, double), (double, half))
    return batch * sum(math.ceil(width / tx) * math.ceil(height / ty) for tx, ty in passes)


def sampling_mb(width: int, height: int, batch: int, controlnets: int = 0) -> float:
    """Activations of a sampler, plus the weights of the ControlNets it runs."""
    return SAMPLE_MB_PER_KPX * width * height / 1000 * batch + CONTROLNET_MB * controlnets


def decode_mb(width: int, height: int, batch: int, tile_size: int | None) -> float:
    """Activation MB of a VAE decode; ``tile_size`` None means a full (untiled) decode."""
    pixels = width * height if tile_size is None else min(width * height, tile_size * tile_size)
    return DECODE_MB_PER_KPX * pixels / 1000 * batch


def oom_message(needed_mb: float, vram_mb: int) -> str:
    """Text shaped like PyTorch's CUDA out-of-memory message, as ComfyUI reports it."""
    used = CHECKPOINT_MB / 1024
    return (f"Allocation on device 0 would exceed allowed memory. (out of memory)\n"
            f"Currently allocated     : {used:.2f} GiB\n"
            f"Requested               : {needed_mb / 1024:.2f} GiB\n"
            f"Device limit            : {vram_mb / 1024:.2f} GiB\n"
            f"Free (according to CUDA): 0 bytes\n"
            f"PyTorch limit (set by user-supplied memory fraction)\n"
            f"                        : 17179869184.00 GiB")
