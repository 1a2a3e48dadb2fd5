"""The baseline Tower is measured against: a client written the way ComfyUI's own API
examples teach (``script_examples/basic_api_example.py`` and
``websockets_api_example.py``, polling instead of a socket), so the benchmark can say what
the pipeline buys over the obvious script:

    .venv/bin/python bench/naive_loop.py URL SHOT_LIST OUT_DIR [--presets FILE] \
        [--poll-s 1] [--json FILE]

One take at a time: ``POST /prompt`` with a one-image graph, ``GET /history/<id>`` every
``--poll-s`` seconds until it is there, ``GET /view`` for each image, write it, next take.
It uses urllib like the examples (a new connection per request) and the same graph Tower
would send for a batch of one, so the simulated GPU does the same work per image and only
the client's way of feeding it differs. Prints (or writes to ``--json``) wall, CPU and
peak RSS of this process and the prompt ids it queued.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tower.shotlist.presets import load_presets
from tower.shotlist.shots import load_shot_list
from tower.spec.graph import build_graph
from tower.spec.takes import ResolvedTake, resolve_takes

TAKE_TIMEOUT_S = 600.0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def queue_prompt(url: str, graph: dict[str, Any], client_id: str) -> str:
    body = json.dumps({"prompt": graph, "client_id": client_id}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["prompt_id"]


def get_history(url: str, prompt_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=60) as response:
        return json.loads(response.read())


def get_image(url: str, image: dict[str, Any]) -> bytes:
    query = urllib.parse.urlencode({"filename": image["filename"],
                                    "subfolder": image.get("subfolder", ""),
                                    "type": image.get("type", "output")})
    with urllib.request.urlopen(f"{url}/view?{query}", timeout=60) as response:
        return response.read()


def wait_done(url: str, prompt_id: str, poll_s: float) -> dict[str, Any]:
    """The history entry, polled like the examples' ``while True`` loop."""
    deadline = time.monotonic() + TAKE_TIMEOUT_S
    while True:
        history = get_history(url, prompt_id)
        if prompt_id in history:
            return history[prompt_id]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{prompt_id} not in history after {TAKE_TIMEOUT_S:.0f} s")
        time.sleep(poll_s)


def render_take(url: str, take: ResolvedTake, out_dir: Path, client_id: str,
                poll_s: float) -> tuple[str, int]:
    """(prompt id, images written); the files are named by take, never by the server's
    answer, so nothing the server says can place a file outside ``out_dir``."""
    prefix = f"naive/{take.episode}/{take.shot_id}/t{take.take:02d}"
    prompt_id = queue_prompt(url, build_graph([take], prefix), client_id)
    entry = wait_done(url, prompt_id, poll_s)
    if not entry.get("status", {}).get("completed", False):
        return prompt_id, 0
    written = 0
    for output in entry.get("outputs", {}).values():
        for image in output.get("images", []):
            path = out_dir / f"{take.episode}_{take.shot_id}_t{take.take:02d}_{written}.png"
            path.write_bytes(get_image(url, image))
            written += 1
    return prompt_id, written


def run(url: str, shot_list: Path, out_dir: Path, presets_file: str | None,
        poll_s: float) -> dict[str, Any]:
    presets = load_presets(presets_file)
    takes = resolve_takes(load_shot_list(shot_list, presets), presets)
    out_dir.mkdir(parents=True, exist_ok=True)
    client_id = uuid.uuid4().hex
    prompt_ids, images, failed = [], 0, 0
    cpu0, t0 = cpu_s(), time.time()
    for take in takes:
        prompt_id, written = render_take(url.rstrip("/"), take, out_dir, client_id, poll_s)
        prompt_ids.append(prompt_id)
        images += written
        failed += written == 0
    t1 = time.time()
    return {"t0": t0, "t1": t1, "wall_s": t1 - t0, "cpu_s": cpu_s() - cpu0,
            "cpu_total_s": cpu_s(), "peak_rss_mb": peak_rss_mb(), "takes": len(takes),
            "images": images, "takes_failed": failed, "prompts": len(prompt_ids),
            "prompt_ids": prompt_ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("shot_list", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--presets", default=None, help="presets file (sizes, checkpoints)")
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()
    result = run(args.url, args.shot_list, args.out_dir, args.presets, args.poll_s)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    else:
        print(text)


if __name__ == "__main__":
    main()
