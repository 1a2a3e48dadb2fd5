"""Identifiers that become folder and file names."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = (
    "must be 1-64 characters: letters, digits, '.', '_' or '-', "
    "starting with a letter or digit"
)


def check_name(value: str) -> str:
    """Return ``value`` if it is a safe id; raise ValueError otherwise.

    Ids are never sanitised: a silently rewritten id would make two shots collide
    on disk or break the link between a shot list and its renders.
    """
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"{NAME_RULE} (got {value!r})")
    if value in {".", ".."} or ".." in value:
        raise ValueError(f"must not contain '..' (got {value!r})")
    return value
