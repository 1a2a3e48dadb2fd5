"""Write a season of shot lists (12 episodes x 250 shots by default) for load tests.

The lists are deterministic (a fixed random seed), mix the three presets and 1-4
takes per shot, and reuse some prompts with the same seed across shots and episodes
(recurring plates, callbacks) so that the output index has duplicates to skip.

    .venv/bin/python shot_lists/generate_season.py [--out shot_lists/generated]

The output folder is git-ignored: regenerate it, never commit it.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import yaml

from tower.store.files import atomic_write_text

EPISODES = 12
SHOTS = 250
SEED = 20261127
DEFAULT_OUT = Path(__file__).resolve().parent / "generated"

CHARACTERS = ("Aoi, a courier girl with short blue hair", "the old lighthouse keeper",
              "Ren, a sky-pirate with a scarred cheek", "a mechanic with brass goggles",
              "twin market children in lantern masks", "Captain Hoshi of the airship Kite")
ACTIONS = ("running across a rope bridge", "looking up at rising lanterns",
           "arguing over a torn map", "climbing a spiral staircase", "leaping between rooftops",
           "repairing a broken propeller", "reading a sealed letter", "standing in the rain")
PLACES = ("the floating city at dusk", "a crowded night market", "the lighthouse gallery",
          "an airship deck above the clouds", "a workshop full of clocks",
          "a rooftop garden at dawn")
FRAMINGS = ("wide shot", "close-up", "medium shot", "low angle", "over-the-shoulder",
            "aerial view")
# Plates that recur through the season: same prompt and seed, so the same images.
RECURRING = (
    ("establishing shot of the floating city above the clouds, paper lanterns rising", 101),
    ("the lighthouse at the edge of the city, its lamp burning, sea of clouds below", 202),
    ("title card background: the floating city at sunrise, soft pastel sky", 303),
)
PRESET_WEIGHTS = (("draft", 5), ("standard", 4), ("high", 1))
TAKES_WEIGHTS = ((1, 5), (2, 3), (3, 1), (4, 1))


def _pick(rng: random.Random, weighted: tuple[tuple[object, int], ...]) -> object:
    values, weights = zip(*weighted, strict=True)
    return rng.choices(values, weights)[0]


def make_shot(rng: random.Random, number: int) -> dict[str, object]:
    """One shot; about one in twelve is a recurring plate."""
    shot: dict[str, object] = {"id": f"sh{number * 10:04d}"}
    if rng.random() < 1 / 12:
        prompt, seed = rng.choice(RECURRING)
        shot |= {"prompt": prompt, "seed": seed, "preset": "standard", "tags": ["recurring"]}
        return shot
    shot["prompt"] = (f"{rng.choice(CHARACTERS)} {rng.choice(ACTIONS)} in {rng.choice(PLACES)}, "
                      f"{rng.choice(FRAMINGS)}")
    preset = _pick(rng, PRESET_WEIGHTS)
    if preset != "draft":
        shot["preset"] = preset
    takes = _pick(rng, TAKES_WEIGHTS)
    if takes != 1:
        shot["takes"] = takes
    if rng.random() < 0.05:
        shot |= {"width": 768, "height": 432}
    return shot


def make_episode(rng: random.Random, number: int, shots: int) -> dict[str, object]:
    """One episode's shot list as plain data, ready for YAML."""
    return {
        "episode": f"s01e{number:02d}",
        "title": f"Season 1, episode {number}",
        "defaults": {
            "preset": "draft",
            "negative": "lowres, bad anatomy, extra fingers, watermark, text, blurry",
            "style_prefix": "anime key visual, cel shading",
            "style_suffix": "detailed background, by studio tower",
        },
        "shots": [make_shot(rng, n) for n in range(1, shots + 1)],
    }


def generate(out: Path, episodes: int = EPISODES, shots: int = SHOTS,
             seed: int = SEED) -> list[Path]:
    """Write ``episodes`` lists of ``shots`` shots under ``out``; return their paths."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, episodes + 1):
        episode = make_episode(rng, number, shots)
        path = out / f"{episode['episode']}.yaml"
        atomic_write_text(path, yaml.safe_dump(episode, sort_keys=False, allow_unicode=True,
                                               width=100))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--shots", type=int, default=SHOTS)
    args = parser.parse_args()
    for path in generate(args.out, args.episodes, args.shots):
        print(path)


if __name__ == "__main__":
    main()
