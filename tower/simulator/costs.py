"""How long simulated work takes and how much simulated VRAM it needs (pure functions).

Time, in simulated seconds:
    * loading a checkpoint: ``model_load_s`` (only when another checkpoint is loaded);
    * CLIP text encode: ``CLIP_ENCODE_S`` per prompt;
    * sampling: ``steps x max(STEP_FLOOR_S, step_s_per_mpx x megapixels x batch)``;
    * VAE decode: ``vae_s_per_mpx x megapixels x batch``, x ``TILED_SLOWDOWN`` when tiled
      (a tiled decode reports progress per tile, see :func:`decode_tiles`);
    * saving: ``SAVE_S_PER_IMAGE`` per image.

VRAM, in MB (SD1.5-class, fp16):
    * ``CHECKPOINT_MB`` (2600) while a checkpoint is loaded;
    * sampling: ``SAMPLE_MB_PER_KPX`` (0.12) per 1000 pixels per image;
    * full VAE decode: ``DECODE_MB_PER_KPX`` (0.9) per 1000 pixels per image;
    * tiled VAE decode: the same rate, but over one tile (``tile_size`` squared) per image.

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


def megapixels(width: int, height: int) -> float:
    return width * height / 1_000_000


def step_s(width: int, height: int, batch: int, step_s_per_mpx: float) -> float:
    """Simulated seconds for one sampler step."""
    return max(STEP_FLOOR_S, step_s_per_mpx * megapixels(width, height) * batch)


def decode_s(width: int, height: int, batch: int, vae_s_per_mpx: float, tiled: bool) -> float:
    cost = vae_s_per_mpx * megapixels(width, height) * batch
    return cost * TILED_SLOWDOWN if tiled else cost


def decode_tiles(width: int, height: int, batch: int, tile_size: int) -> int:
    """Progress steps of a tiled decode: like ComfyUI, three passes over the image with
    tiles of (t, t), (t/2, 2t) and (2t, t/2) pixels, per image (overlap ignored)."""
    half, double = max(1, tile_size // 2), tile_size * 2
    passes = ((tile_size, tile_size), (half, double), (double, half))
    return batch * sum(math.ceil(width / tx) * math.ceil(height / ty) for tx, ty in passes)


def sampling_mb(width: int, height: int, batch: int) -> float:
    return SAMPLE_MB_PER_KPX * width * height / 1000 * batch


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
