"""``/system_stats`` for a simulated CUDA card, and the model folder names."""

from __future__ import annotations

import os
import sys
from typing import Any

from tower.simulator.engine import Engine

MIB = 1024 * 1024
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
    "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
    "gligen", "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
)


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def system_stats(engine: Engine, port: int | None) -> dict[str, Any]:
    """The body of ``GET /system_stats``: ComfyUI's shape, a ``cuda`` device whose free
    VRAM drops while a checkpoint is loaded and while a node runs."""
    ram_total, ram_free = _ram()
    total = engine.config.vram_mb * MIB
    used = int(engine.machine.used_mb() * MIB)
    return {
        "system": {
            "os": os.name, "ram_total": ram_total, "ram_free": ram_free,
            "comfyui_version": "0.3.64", "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
            "python_version": sys.version, "pytorch_version": "2.14.1+cu130",
            "embedded_python": False,
            "argv": ["main.py", "--listen", "127.0.0.1", "--port", str(port or 8188),
                     "--preview-method", "none"],
        },
        "devices": [{
            "name": f"cuda:0 NVIDIA Simulated GPU {engine.config.vram_mb} MB (simulated)",
            "type": "cuda", "index": 0, "vram_total": total, "vram_free": max(0, total - used),
            "torch_vram_total": used, "torch_vram_free": 0,
        }],
    }
