"""The ``tower`` command line: the only part of ``tower`` that may import Prefect and the flows.

The commands import Prefect and the flows inside their bodies, so ``tower validate``
or ``tower plan`` start without loading them.
"""

from tower.cli.commands import app, main

__all__ = ["app", "main"]
