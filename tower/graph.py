"""The ComfyUI API-format graph that renders a contiguous slice of a shot's takes.

Why ``LatentFromBatch``: ComfyUI draws the noise of latent index k as the k-th sample
of the seed's generator when the latent carries batch indices (``comfy/sample.py``
``prepare_noise`` with ``noise_inds``). The graph therefore builds an empty latent
batch of ``start + n`` images and slices out ``start .. start+n-1``: take k gets the
same noise whether it is rendered alone, in a batch of 4, or in a batch of 2 starting
at index 2, and so the same image (on ComfyUI 0.3.64 a batch of 4 and two batches of
2 gave bit-identical pixels; a take rendered alone differed from its batched twin by
at most 1/255 in a handful of pixels). The planner can split takes freely without
changing what a take looks like, and render keys ignore the split.

Node ids are stable, readable names so that ComfyUI's errors (which name node ids)
read well in logs: ``checkpoint``, ``positive``, ``negative``, ``latent``, ``takes``,
``sampler``, ``decode``, ``save``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tower.takes import ResolvedTake

SAVE_NODE = "save"
SAMPLER_NODE = "sampler"
CHECKPOINT_NODE = "checkpoint"
DECODE_NODE = "decode"
# Upper bounds of LatentFromBatch's batch_index (63) and length (64) in ComfyUI.
MAX_TAKE_INDEX = 63

Graph = dict[str, dict[str, Any]]

_RENDER_FIELDS = (
    "episode", "shot_id", "prompt", "negative", "seed", "checkpoint", "sampler",
    "scheduler", "steps", "cfg", "width", "height", "denoise", "vae_tiled", "vae_tile_size",
)


def check_batch(takes: Sequence[ResolvedTake]) -> None:
    """Raise ValueError unless ``takes`` are consecutive takes sharing every setting."""
    if not takes:
        raise ValueError("a render batch needs at least one take")
    first = takes[0]
    for offset, take in enumerate(takes):
        if take.take != first.take + offset:
            raise ValueError(f"takes must be consecutive: got {[t.take for t in takes]}")
        for name in _RENDER_FIELDS:
            if getattr(take, name) != getattr(first, name):
                raise ValueError(f"take {take.take} differs from take {first.take} in {name}")
    if takes[-1].take > MAX_TAKE_INDEX:
        raise ValueError(f"take index {takes[-1].take} exceeds {MAX_TAKE_INDEX}")


def tile_overlap(tile_size: int) -> int:
    """Tile overlap for tiled VAE decode: an eighth of the tile, in steps of 32, at most 64."""
    return min(64, tile_size // 8) // 32 * 32


def _decoder(take: ResolvedTake) -> dict[str, Any]:
    inputs: dict[str, Any] = {"samples": [SAMPLER_NODE, 0], "vae": [CHECKPOINT_NODE, 2]}
    if not take.vae_tiled:
        return {"class_type": "VAEDecode", "inputs": inputs}
    inputs |= {"tile_size": take.vae_tile_size, "overlap": tile_overlap(take.vae_tile_size),
               "temporal_size": 64, "temporal_overlap": 8}
    return {"class_type": "VAEDecodeTiled", "inputs": inputs}


def build_graph(takes: Sequence[ResolvedTake], filename_prefix: str) -> Graph:
    """The API-format prompt (the ``prompt`` of ``POST /prompt``) for one render batch.

    Args:
        takes: consecutive takes of one shot with identical settings.
        filename_prefix: SaveImage prefix, e.g. ``ep01/sh030/b1a2b3c4``; ComfyUI adds a
            counter. The pipeline stores each take under its own name afterwards.
    """
    check_batch(takes)
    first = takes[0]
    start, count = first.take, len(takes)
    return {
        CHECKPOINT_NODE: {"class_type": "CheckpointLoaderSimple",
                          "inputs": {"ckpt_name": first.checkpoint}},
        "positive": {"class_type": "CLIPTextEncode",
                     "inputs": {"text": first.prompt, "clip": [CHECKPOINT_NODE, 1]}},
        "negative": {"class_type": "CLIPTextEncode",
                     "inputs": {"text": first.negative, "clip": [CHECKPOINT_NODE, 1]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": first.width, "height": first.height,
                              "batch_size": start + count}},
        "takes": {"class_type": "LatentFromBatch",
                  "inputs": {"samples": ["latent", 0], "batch_index": start, "length": count}},
        SAMPLER_NODE: {"class_type": "KSampler",
                       "inputs": {"model": [CHECKPOINT_NODE, 0], "seed": first.seed,
                                  "steps": first.steps, "cfg": first.cfg,
                                  "sampler_name": first.sampler, "scheduler": first.scheduler,
                                  "positive": ["positive", 0], "negative": ["negative", 0],
                                  "latent_image": ["takes", 0], "denoise": first.denoise}},
        DECODE_NODE: _decoder(first),
        SAVE_NODE: {"class_type": "SaveImage",
                    "inputs": {"images": [DECODE_NODE, 0], "filename_prefix": filename_prefix}},
    }


def noise_indices(graph: Graph) -> list[int]:
    """The noise indices (take numbers) a graph renders, read back from the graph.

    Used by tests and by the simulator: take k is drawn with noise index k.
    """
    inputs = graph["takes"]["inputs"]
    return list(range(inputs["batch_index"], inputs["batch_index"] + inputs["length"]))


def preflight_graphs(takes: Sequence[ResolvedTake]) -> list[Graph]:
    """One single-take graph per distinct checkpoint, sampler, scheduler and decode.

    What a server must have for a run to succeed depends only on these, so preflight
    checks a handful of graphs instead of every batch's.
    """
    seen: dict[tuple[object, ...], Graph] = {}
    for take in takes:
        key = (take.checkpoint, take.sampler, take.scheduler, take.vae_tiled)
        if key not in seen:
            seen[key] = build_graph([take], f"{take.episode}/{take.shot_id}/preflight")
    return list(seen.values())
