"""A Hugging Face dataset id, fetched through huggingface-hub into its own cache.

First the README (its `configs:` say which files make which split) and the file listing, then
only the files of the splits asked for. With HF_HUB_OFFLINE=1 both come from the cache, and a
second run downloads nothing. Every failure is a UserError that names the id, the cache folder
and HF_HUB_OFFLINE; a gated set says how to log in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mlx_dpo.errors import UserError
from mlx_dpo.layout import data_suffix, split_layout

README = "README.md"


def hub_cache_dir() -> str:
    """huggingface-hub's cache folder, as HF_HUB_CACHE (or HF_HOME) sets it."""
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in ("1", "ON", "YES", "TRUE") or constants.HF_HUB_OFFLINE


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    cache = hub_cache_dir()
    where = f"cache {cache}, HF_HUB_OFFLINE={'1' if offline() else '0'}"
    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                cache_dir=cache,
                allow_patterns=patterns,
            )
        )
    except GatedRepoError:
        raise UserError(
            f"{repo_id}: a gated dataset: accept its terms on its Hub page, then log in with "
            f"`hf auth login` ({where})"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id}: no revision {revision!r} on the Hub ({where})") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{repo_id}: no such dataset on the Hugging Face Hub (or a private one: log in with "
            f"`hf auth login`); {where}"
        ) from None
    except LocalEntryNotFoundError as err:
        if offline():
            raise UserError(
                f"{repo_id}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 "
                "forbids downloading it: run once with HF_HUB_OFFLINE=0, or check the id"
                + (f" and revision {revision!r}" if revision else "")
            ) from None
        raise UserError(
            f"{repo_id}: the Hub cannot be reached and the set is not in the cache ({where}): "
            f"{str(err).splitlines()[0]}"
        ) from None
    except (OSError, ValueError) as err:
        raise UserError(f"{repo_id}: cannot fetch the dataset ({err}; {where})") from None


def _listing(repo_id: str, revision: str | None, folder: Path) -> list[str]:
    """Every file of the set at this revision: huggingface-hub's cached tree listing (written
    by any snapshot_download online), else what the cached snapshot folder holds."""
    cached_tree = getattr(huggingface_hub, "get_cached_repo_tree", None)
    if cached_tree is not None:
        try:
            tree = cached_tree(
                repo_id, repo_type="dataset", revision=revision, cache_dir=hub_cache_dir()
            )
            return sorted(f.path for f in tree)
        except Exception:  # no listing cached (offline, or an older cache): the folder says
            pass
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def fetch(
    repo_id: str,
    config: str | None,
    revision: str | None,
    wanted: Iterable[str] | None = None,
) -> tuple[Path, dict[str, list[str]], list[str]]:
    """(snapshot folder, {split: files}, files that fit no split) of a Hub dataset, with the
    files of the `wanted` splits (all splits when None) in the cache. Splits that are not
    in the set are left for the caller to report with the names the set has."""
    folder = _snapshot(repo_id, revision, [README])
    files = _listing(repo_id, revision, folder)
    readme = folder / README
    text = readme.read_text(errors="replace") if readme.is_file() else None
    try:
        layout, ignored = split_layout(files, config, text)
    except UserError as err:
        raise UserError(f"{repo_id}: {err}") from None
    if not layout:
        raise UserError(f"{repo_id}: no data files (parquet or json lines) in this dataset")
    wanted = set(layout) if wanted is None else set(wanted) & set(layout)
    needed = sorted({f for name in wanted for f in layout[name]})
    if needed:
        folder = _snapshot(repo_id, revision, [README, *needed])
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"{repo_id}: the cached copy in {hub_cache_dir()} lacks {', '.join(missing[:3])}; "
            "run once with HF_HUB_OFFLINE=0 to complete it"
        )
    layout = {name: [f for f in names if data_suffix(f)] for name, names in layout.items()}
    return folder, layout, ignored
