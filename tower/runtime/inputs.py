"""What a server holds for a run: its model files, and the run's input images on it.

Before planning, each server's model folders are listed, so the planner sends a batch
only where every LoRA, ControlNet and upscale model it needs is present. Before anything
is queued, each server gets the layout and line-art images of the takes it may render,
uploaded once under their content-addressed names: a re-run, another episode or a
second server of the same farm finds them there and uploads nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tower.comfyui import ComfyUIClient, ComfyUIError, ComfyUIProtocolError
from tower.planning.batches import Inventory, missing_models, model_paths
from tower.spec.parts import MODEL_FOLDERS, InputImage
from tower.spec.takes import ResolvedTake


class InputChanged(ComfyUIError):
    """An input image's file changed after the shot list was read: its takes' keys no
    longer describe it, so it is not uploaded (re-run to plan with the new file)."""


def server_inventory(client: ComfyUIClient, folders: Sequence[str] = MODEL_FOLDERS,
                     ) -> dict[str, frozenset[str]]:
    """The file names in each of ``folders`` on the server."""
    return {folder: frozenset(client.models(folder)) for folder in folders}


def can_render(take: ResolvedTake, inventory: Inventory | None) -> bool:
    """Whether a server with ``inventory`` (None: not known) has every file the take needs."""
    return not missing_models(inventory, take.models)


def lacking(takes: Iterable[ResolvedTake], inventory: Inventory | None) -> str:
    """What a server lacks of the files ``takes`` need, for people (empty: nothing)."""
    needed = dict.fromkeys(model for take in takes for model in take.models)
    return model_paths(missing_models(inventory, needed))


def renderable(takes: Iterable[ResolvedTake], inventory: Inventory | None) -> list[ResolvedTake]:
    """The takes a server with ``inventory`` can render."""
    return [take for take in takes if can_render(take, inventory)]


def preflight_scope(takes: Sequence[ResolvedTake], servers: Sequence[str],
                    inventories: Mapping[str, Inventory | None],
                    ) -> tuple[dict[str, list[ResolvedTake]], list[str]]:
    """What each server is checked for: the takes its model files allow (all when its
    inventory is unknown), and a line for each server that gets none, saying what it lacks.
    """
    own = {name: renderable(takes, inventories.get(name)) for name in servers}
    skipped = [f"{name} gets none of these takes: it lacks "
               f"{lacking(takes, inventories.get(name))}" for name in servers if not own[name]]
    return own, skipped


def input_images(takes: Iterable[ResolvedTake]) -> list[InputImage]:
    """The distinct input images of ``takes``, in first-use order."""
    return list(dict.fromkeys(image for take in takes for image in take.input_images))


def read_checked(image: InputImage) -> bytes:
    """The image's bytes, provided they are still the ones its takes were keyed with.

    Raises:
        InputChanged: the file is gone or its content changed since the list was read.
    """
    try:
        data = Path(image.path).read_bytes()
    except OSError as err:
        raise InputChanged(f"input image {image.path} cannot be read: {err}") from err
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise InputChanged(f"input image {image.path} changed since the shot list was read "
                           "(its sha256 differs); run again to render with the new file")
    return data


def upload_inputs(client: ComfyUIClient, images: Iterable[InputImage]) -> list[str]:
    """Upload the images the server lacks; the names uploaded (empty when it had them all).

    Raises:
        InputChanged: an image's file changed or vanished since planning.
        ComfyUIProtocolError: the server stored an image under another name (a different
            file already holds the content-addressed one, which only a hand edit causes).
        ComfyUIError: the server refused or could not be reached.
    """
    wanted = list(dict.fromkeys(images))
    if not wanted:
        return []
    present = client.input_images()
    uploaded = []
    for image in wanted:
        if image.upload_name in present:
            continue
        stored = client.upload_image(read_checked(image), image.upload_name)
        if stored != image.upload_name:
            raise ComfyUIProtocolError(
                f"{client.name}: uploaded {image.path} as {image.upload_name!r} but the server "
                f"stored it as {stored!r}: its input folder holds another file under that "
                "name; remove it there and run again")
        uploaded.append(stored)
    return uploaded
