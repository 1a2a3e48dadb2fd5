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
``sampler``, ``decode``, ``save``; a production take adds ``lora_1``, ``lora_2``...
(its LoRA chain, in order), ``layout``/``layout_scale``/``layout_encode`` (img2img:
``latent`` then repeats the encoded layout), ``control_image``/``controlnet``/``control``
(ControlNet on both conditionings), ``hires_upscale``/``hires_sampler`` (the hires
pass; its latent keeps the batch indices, so take identity holds through it) and
``upscale_model``/``upscale``. Input images are loaded under their content-addressed
upload names (:attr:`tower.spec.parts.InputImage.upload_name`).

Why a forced graph carries ``tower_fresh``: ComfyUI serves every node whose cache key
it still holds from its node cache, so an identical graph never reads a checkpoint
retrained under the same file name. ``POST /free {"free_memory": true}`` is no fix: the
prompt worker resets the cache once, after the item it is running (``main.py``
``prompt_worker`` reads the flags after ``execute``), not right before our prompt. A
prompt queued ahead of ours (another run's identical graph) refills the cache in
between, an idle worker can dequeue a prompt posted right after the ``/free`` before it
reads the flag, and every other user of the server loses its cache too. So a forced
graph adds one input that no node declares, ``tower_fresh`` (value: the batch's forced
prompt id), to every *root* node (no link inputs: ``checkpoint`` and ``latent``).
Evidence, ComfyUI 0.3.64 (``a125cd84``):

- ``comfy_execution/caching.py`` ``CacheKeySetInputSignature.get_immediate_node_signature``
  puts every key of the node's ``inputs`` in its cache key, declared or not, and
  ``get_node_signature`` appends the signatures of all its ancestors; so the roots miss
  the cache and every other node misses it through them.
- ``execution.py`` ``validate_inputs`` only iterates the declared inputs (an undeclared
  key is no error) and ``get_input_data`` only passes declared inputs (and links) to
  the node function, so the node never sees the extra key.

Graphs that are not forced are built exactly as before, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tower.comfyui import is_link
from tower.spec.takes import BATCH_FIELDS, ResolvedTake

# The undeclared input that makes a forced graph miss ComfyUI's node cache.
FRESH_INPUT = "tower_fresh"
SAVE_NODE = "save"
SAMPLER_NODE = "sampler"
HIRES_SAMPLER_NODE = "hires_sampler"
CHECKPOINT_NODE = "checkpoint"
DECODE_NODE = "decode"
# How a layout frame is scaled to the take's size (ImageScale, centre-cropped).
LAYOUT_SCALING = "lanczos"
# Upper bounds of LatentFromBatch's batch_index (63) and length (64) in ComfyUI.
MAX_TAKE_INDEX = 63

Graph = dict[str, dict[str, Any]]



def check_batch(takes: Sequence[ResolvedTake]) -> None:
    """Raise ValueError unless ``takes`` are consecutive takes sharing every setting."""
    if not takes:
        raise ValueError("a render batch needs at least one take")
    first = takes[0]
    for offset, take in enumerate(takes):
        if take.take != first.take + offset:
            raise ValueError(f"takes must be consecutive: got {[t.take for t in takes]}")
        for name in BATCH_FIELDS:
            if getattr(take, name) != getattr(first, name):
                raise ValueError(f"take {take.take} differs from take {first.take} in {name}")
    if takes[-1].take > MAX_TAKE_INDEX:
        raise ValueError(f"take index {takes[-1].take} exceeds {MAX_TAKE_INDEX}")


def tile_overlap(tile_size: int) -> int:
    """Tile overlap for tiled VAE decode: an eighth of the tile, in steps of 32, at most 64."""
    return min(64, tile_size // 8) // 32 * 32


def _decoder(take: ResolvedTake, samples: list[Any]) -> dict[str, Any]:
    inputs: dict[str, Any] = {"samples": samples, "vae": [CHECKPOINT_NODE, 2]}
    if not take.vae_tiled:
        return {"class_type": "VAEDecode", "inputs": inputs}
    inputs |= {"tile_size": take.vae_tile_size, "overlap": tile_overlap(take.vae_tile_size),
               "temporal_size": 64, "temporal_overlap": 8}
    return {"class_type": "VAEDecodeTiled", "inputs": inputs}


def build_graph(takes: Sequence[ResolvedTake], filename_prefix: str,
                fresh: str | None = None) -> Graph:
    """The API-format prompt (the ``prompt`` of ``POST /prompt``) for one render batch.

    Args:
        takes: consecutive takes of one shot with identical settings.
        filename_prefix: SaveImage prefix, e.g. ``ep01/sh030/b1a2b3c4``; ComfyUI adds a
            counter. The pipeline stores each take under its own name afterwards.
        fresh: for a forced render, the value of ``tower_fresh`` on every root node, so
            every node executes again (see the module docstring); None leaves the
            graph as it always was.
    """
    graph = _graph(takes, filename_prefix)
    if fresh is not None:
        for node_id in root_nodes(graph):
            graph[node_id]["inputs"][FRESH_INPUT] = fresh
    return graph


def root_nodes(graph: Graph) -> list[str]:
    """The nodes without link inputs: every other node's cache key includes theirs."""
    return [node_id for node_id, node in graph.items()
            if not any(is_link(value) for value in node["inputs"].values())]


def _graph(takes: Sequence[ResolvedTake], filename_prefix: str) -> Graph:
    check_batch(takes)
    first = takes[0]
    start, count = first.take, len(takes)
    graph: Graph = {CHECKPOINT_NODE: {"class_type": "CheckpointLoaderSimple",
                                      "inputs": {"ckpt_name": first.checkpoint}}}
    model, clip = _lora_chain(graph, first)
    graph |= {
        "positive": {"class_type": "CLIPTextEncode",
                     "inputs": {"text": first.prompt, "clip": clip}},
        "negative": {"class_type": "CLIPTextEncode",
                     "inputs": {"text": first.negative, "clip": clip}},
    }
    _latent_batch(graph, first, start + count)
    graph["takes"] = {"class_type": "LatentFromBatch",
                      "inputs": {"samples": ["latent", 0], "batch_index": start, "length": count}}
    positive, negative = _conditioning(graph, first)
    graph[SAMPLER_NODE] = _sampler(first, model, positive, negative, ["takes", 0],
                                   first.steps, first.denoise)
    samples = [SAMPLER_NODE, 0]
    if first.hires is not None:
        graph["hires_upscale"] = {"class_type": "LatentUpscaleBy",
                                  "inputs": {"samples": samples,
                                             "upscale_method": first.hires.method,
                                             "scale_by": first.hires.scale}}
        graph[HIRES_SAMPLER_NODE] = _sampler(first, model, positive, negative,
                                             ["hires_upscale", 0], first.hires.steps,
                                             first.hires.denoise)
        samples = [HIRES_SAMPLER_NODE, 0]
    graph[DECODE_NODE] = _decoder(first, samples)
    images = [DECODE_NODE, 0]
    if first.upscale is not None:
        graph["upscale_model"] = {"class_type": "UpscaleModelLoader",
                                  "inputs": {"model_name": first.upscale.model}}
        graph["upscale"] = {"class_type": "ImageUpscaleWithModel",
                            "inputs": {"upscale_model": ["upscale_model", 0], "image": images}}
        images = ["upscale", 0]
    graph[SAVE_NODE] = {"class_type": "SaveImage",
                        "inputs": {"images": images, "filename_prefix": filename_prefix}}
    return graph


def _lora_chain(graph: Graph, take: ResolvedTake) -> tuple[list[Any], list[Any]]:
    """LoraLoaders chained after the checkpoint; the (model, clip) links at its end."""
    model: list[Any] = [CHECKPOINT_NODE, 0]
    clip: list[Any] = [CHECKPOINT_NODE, 1]
    for number, lora in enumerate(take.loras, start=1):
        node_id = f"lora_{number}"
        graph[node_id] = {"class_type": "LoraLoader",
                          "inputs": {"model": model, "clip": clip, "lora_name": lora.name,
                                     "strength_model": lora.strength_model,
                                     "strength_clip": lora.strength_clip}}
        model, clip = [node_id, 0], [node_id, 1]
    return model, clip


def _latent_batch(graph: Graph, take: ResolvedTake, size: int) -> None:
    """The ``latent`` node: a batch of ``size`` latents that ``takes`` slices.

    For img2img the layout is scaled (centre-cropped) to the take's size, encoded once
    and repeated: RepeatLatentBatch sets no batch indices, so LatentFromBatch's indices
    decide the noise exactly as for an empty latent (recorded on ComfyUI 0.3.64: image 1
    of the whole repeated batch equals the LatentFromBatch(1) render, pixel for pixel).
    """
    if take.init_image is None:
        graph["latent"] = {"class_type": "EmptyLatentImage",
                           "inputs": {"width": take.width, "height": take.height,
                                      "batch_size": size}}
        return
    graph |= {
        "layout": {"class_type": "LoadImage", "inputs": {"image": take.init_image.upload_name}},
        "layout_scale": {"class_type": "ImageScale",
                         "inputs": {"image": ["layout", 0], "upscale_method": LAYOUT_SCALING,
                                    "width": take.width, "height": take.height,
                                    "crop": "center"}},
        "layout_encode": {"class_type": "VAEEncode",
                          "inputs": {"pixels": ["layout_scale", 0],
                                     "vae": [CHECKPOINT_NODE, 2]}},
        "latent": {"class_type": "RepeatLatentBatch",
                   "inputs": {"samples": ["layout_encode", 0], "amount": size}},
    }


def _conditioning(graph: Graph, take: ResolvedTake) -> tuple[list[Any], list[Any]]:
    """The sampler's (positive, negative) links, through the ControlNet when there is one."""
    if take.control is None:
        return ["positive", 0], ["negative", 0]
    control = take.control
    graph |= {
        "control_image": {"class_type": "LoadImage",
                          "inputs": {"image": control.image.upload_name}},
        "controlnet": {"class_type": "ControlNetLoader",
                       "inputs": {"control_net_name": control.model}},
        "control": {"class_type": "ControlNetApplyAdvanced",
                    "inputs": {"positive": ["positive", 0], "negative": ["negative", 0],
                               "control_net": ["controlnet", 0],
                               "image": ["control_image", 0], "strength": control.strength,
                               "start_percent": control.start, "end_percent": control.end,
                               "vae": [CHECKPOINT_NODE, 2]}},
    }
    return ["control", 0], ["control", 1]


def _sampler(take: ResolvedTake, model: list[Any], positive: list[Any], negative: list[Any],
             latent: list[Any], steps: int, denoise: float) -> dict[str, Any]:
    return {"class_type": "KSampler",
            "inputs": {"model": model, "seed": take.seed, "steps": steps, "cfg": take.cfg,
                       "sampler_name": take.sampler, "scheduler": take.scheduler,
                       "positive": positive, "negative": negative, "latent_image": latent,
                       "denoise": denoise}}


def preflight_graphs(takes: Sequence[ResolvedTake]) -> list[Graph]:
    """One single-take graph per distinct set of what a server must have.

    That is the node classes and combo values a graph uses: checkpoint, sampler,
    scheduler, decode, the model files and which optional parts are present; so
    preflight checks a handful of graphs instead of every batch's.
    """
    seen: dict[tuple[object, ...], Graph] = {}
    for take in takes:
        key = (take.sampler, take.scheduler, take.vae_tiled, take.models, take.parts,
               take.hires.method if take.hires else None)
        if key not in seen:
            seen[key] = build_graph([take], f"{take.episode}/{take.shot_id}/preflight")
    return list(seen.values())
