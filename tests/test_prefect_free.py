"""``tower/`` imports without Prefect or the Prefect layer (``flows``, ``tasks``, ``blocks``).

The core must run where Prefect is not installed (the simulator, ``tower validate``, the
benchmarks), and ``tower`` itself must start without paying for Prefect's import: its
commands load Prefect and the flows inside their bodies. Each check runs in a fresh
interpreter whose first meta-path finder refuses those names, so an import hidden behind
``try/except ImportError`` is caught too: every attempt is recorded with the module
that made it. Modules are enumerated with ``pkgutil.walk_packages``, so a new module is
covered the day it is added.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from paths import REPO

import tower

BLOCKED = ("prefect", "flows", "tasks", "blocks")

# Runs in the child: block the names, import each module, report what happened as JSON.
_PROBE = r'''
import importlib
import importlib.abc
import json
import sys

config = json.loads(sys.stdin.read())
blocked = set(config["blocked"])
sys.path[:0] = config["path"]
preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
attempts = []


def importer():
    """The module whose code asked for the import (the first frame outside importlib)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "?")
        if not name.startswith(("importlib", "_frozen_importlib")):
            return name
        frame = frame.f_back
    return "?"


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in blocked:
            return None
        attempts.append({"module": importer(), "imports": fullname, "while": current})
        raise ImportError(f"{fullname} is blocked by test_prefect_free", name=fullname)


sys.meta_path.insert(0, Refuse())
failures = {}
for current in config["modules"]:
    try:
        importlib.import_module(current)
    except BaseException as err:
        failures[current] = f"{type(err).__name__}: {err}"
print(json.dumps({"preloaded": preloaded, "attempts": attempts, "failures": failures}))
'''


def _raise(name: str) -> None:
    raise ImportError(f"{name} could not be imported while listing tower's modules")


def core_modules() -> list[str]:
    """Every module under ``tower/`` except the command line (``tower.cli.*``)."""
    found = [info.name for info in pkgutil.walk_packages(tower.__path__, "tower.", _raise)]
    return ["tower", *sorted(n for n in found if n != "tower.cli"
                             and not n.startswith("tower.cli."))]


def probe(modules: list[str], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Import ``modules`` in a fresh interpreter (run from the repository root, where
    ``flows``, ``tasks`` and ``blocks`` would otherwise import) with ``BLOCKED`` refused."""
    config = {"blocked": BLOCKED, "modules": modules, "path": list(path)}
    done = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(config),
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def problems(result: dict[str, Any]) -> list[str]:
    """One line per module that needs a blocked name, naming the module."""
    lines = [f"{name} was imported before the probe started" for name in result["preloaded"]]
    lines += [f"{a['module']} imports {a['imports']} (while importing {a['while']})"
              for a in result["attempts"]]
    lines += [f"{module} fails to import: {error}"
              for module, error in result["failures"].items()]
    return lines


def test_the_listing_finds_every_subpackage_and_leaves_out_the_command_line() -> None:
    modules = core_modules()
    packages = {m.split(".")[1] for m in modules if m.count(".") >= 1}
    assert {"shotlist", "spec", "planning", "runtime", "store", "report", "comfyui",
            "simulator"} <= packages
    assert "tower.simulator.validation" in modules
    assert not any(m == "tower.cli" or m.startswith("tower.cli.") for m in modules)


def test_every_core_module_imports_without_prefect_or_the_prefect_layer() -> None:
    found = problems(probe(core_modules()))
    assert not found, "tower/ must not need Prefect:\n" + "\n".join(found)


def test_the_tower_command_imports_without_prefect_so_it_starts_fast() -> None:
    found = problems(probe(["tower.cli"]))
    assert not found, "import Prefect and the flows inside commands:\n" + "\n".join(found)


@pytest.mark.parametrize(("source", "expected"), [
    ("import prefect\n", "fakecore.sub imports prefect (while importing fakecore)"),
    ("try:\n    from flows import x\nexcept ImportError:\n    pass\n",
     "fakecore.sub imports flows (while importing fakecore)"),
])
def test_a_module_that_needs_prefect_is_named(tmp_path: Path, source: str,
                                              expected: str) -> None:
    package = tmp_path / "fakecore"
    package.mkdir()
    (package / "__init__.py").write_text("from fakecore import sub\n")
    (package / "sub.py").write_text(source)
    assert expected in problems(probe(["fakecore"], path=(str(tmp_path),)))
