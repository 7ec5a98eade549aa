"""Paths the user writes (flags, YAML keys): `~` and environment variables expanded the way a
shell would, an empty path or an unset variable refused, local folders made absolute.

Without this, `adapter_path: ~/runs/x` in a YAML creates a literal `./~/runs/x` folder, and
`--adapter-path ''` trains into the current folder. Plain Python (the CLI imports it).
"""

from __future__ import annotations

import os
import re

from mlx_dpo.errors import UserError

# $NAME or ${NAME} left in a path after expansion: a variable that is not set.
_UNSET_VARIABLE = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
# What Linux and macOS file systems take: a name of at most 255 bytes, a path of at most 1024
# (macOS's PATH_MAX; Linux takes 4096). Longer, every later call fails with ENAMETOOLONG.
NAME_MAX = 255
PATH_MAX = 1024


def expand(value: str, what: str) -> str:
    """`value` with `~` and environment variables expanded. `what` names the setting in the
    message of a UserError: an empty path, or a variable that is not set."""
    if not value.strip():
        raise UserError(f"{what}: an empty path; give a file or folder")
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = _UNSET_VARIABLE.search(expanded)
    if unset:
        raise UserError(f"{what}: {value!r} uses {unset.group(0)}, which is not set")
    longest = max(len(part.encode(errors="surrogateescape")) for part in expanded.split(os.sep))
    if longest > NAME_MAX or len(expanded.encode(errors="surrogateescape")) > PATH_MAX:
        raise UserError(
            f"{what}: a path of {len(expanded)} characters with a name of {longest} bytes "
            f"({expanded[:40]}...); file names take at most {NAME_MAX} bytes, paths {PATH_MAX}"
        )
    return expanded


def expand_local(value: str, what: str) -> str:
    """A path that is always on this machine (a run directory, an output file): expanded
    and absolute, so every message and hint names the one place it is."""
    return os.path.abspath(expand(value, what))


def expand_source(value: str, what: str) -> str:
    """A model or data set: a local path or a Hugging Face id. Expanded; absolute when it
    names something on this machine (a Hub id stays as written)."""
    expanded = expand(value, what)
    return os.path.abspath(expanded) if os.path.exists(expanded) else expanded


def shown(path: str | os.PathLike) -> str:
    """A path as a console hint prints it: expanded and absolute, never a literal `~`."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))
