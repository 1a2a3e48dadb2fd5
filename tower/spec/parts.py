"""The optional parts of a production graph: LoRAs, input images, ControlNet, hires, upscale.

A plain take is txt2img with one checkpoint. A studio's take may add character and
style LoRAs, a layout frame as img2img init, line art through a ControlNet, a hires
pass and an upscale model. Each part is frozen data that a :class:`ResolvedTake`
carries, so the render key, the graph builder, the planner's models and the preflight
all read the same values. An input image is identified by its content (sha256), never
by its path: an edited layout is a new image, a copied one is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

# The ComfyUI model folders (``GET /models/<folder>``) a take's files live in.
CHECKPOINTS = "checkpoints"
LORAS = "loras"
CONTROLNETS = "controlnet"
UPSCALE_MODELS = "upscale_models"
MODEL_FOLDERS = (CHECKPOINTS, LORAS, CONTROLNETS, UPSCALE_MODELS)

# LoraLoader's strength range in ComfyUI (``nodes.py``; recorded: 150 is refused).
LORA_STRENGTH_MIN = -100.0
LORA_STRENGTH_MAX = 100.0

UPLOAD_PREFIX = "tower-"


@dataclass(frozen=True)
class LoraSpec:
    """One LoraLoader of the chain: the file and its strengths on the UNet and on CLIP."""

    name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0

    @property
    def inert(self) -> bool:
        """Both strengths 0: ComfyUI returns the model and CLIP untouched (recorded)."""
        return self.strength_model == 0 and self.strength_clip == 0


@dataclass(frozen=True)
class InputImage:
    """An image file on the studio's disk that a graph loads (layout or control hint).

    ``path`` is where the pipeline reads it (absolute); ``sha256`` is what identifies
    it, in render keys and in the name it is uploaded under.
    """

    path: str
    sha256: str
    width: int
    height: int
    suffix: str = ".png"

    @property
    def upload_name(self) -> str:
        """The content-addressed name on every server: the same bytes, the same name.

        ComfyUI's upload keeps an existing file of that name when its bytes are the
        same and never overwrites without ``overwrite=true``, so uploading twice is a
        no-op and a changed file can never hide behind an old name.
        """
        return f"{UPLOAD_PREFIX}{self.sha256}{self.suffix}"


@dataclass(frozen=True)
class ControlSpec:
    """A ControlNet applied to both conditionings (ControlNetApplyAdvanced)."""

    image: InputImage
    model: str
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class HiresSpec:
    """A second sampling pass on the latent upscaled by ``scale`` (LatentUpscaleBy)."""

    scale: float
    denoise: float
    steps: int
    method: str = "nearest-exact"

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The pass's image size: ComfyUI rounds the upscaled latent (1/8 of the image)."""
        return (round(width / 8 * self.scale) * 8, round(height / 8 * self.scale) * 8)


@dataclass(frozen=True)
class UpscaleSpec:
    """An upscale model run on the decoded image (ImageUpscaleWithModel).

    ``scale`` is what the studio says the model does (ComfyUI reads it from the
    weights and offers no API for it); the planner sizes VRAM and time with it.
    """

    model: str
    scale: int = 2
