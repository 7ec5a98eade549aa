"""Which files of a data set make which split, read from the set itself: the README's
`configs:` data_files when it has them, else the file names (`data/train_prefs-00000-of-00001
.parquet`, `<config>/train-*.parquet`, `harmless-base/train.jsonl.gz`, `train.jsonl`), then
split keywords in names, as the `datasets` library reads them. Pure functions of file names.
"""

from __future__ import annotations

import fnmatch
import re

import yaml

from mlx_dpo.errors import UserError

DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
# Split keywords in file and folder names, as the `datasets` library reads them.
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
SEPARATORS = r"[-._ 0-9/]"
SHARD = re.compile(r"^(?:(?P<dir>.*)/)?(?P<split>[^/]+?)-\d{5}-of-\d{5}(?:-[0-9a-f]+)?$")


def data_suffix(name: str) -> str | None:
    return next((s for s in DATA_SUFFIXES if name.endswith(s)), None)


def readme_configs(text: str | None) -> list[dict]:
    """The `configs:` list of a dataset card's YAML front matter (empty when none)."""
    if not text or not text.startswith("---"):
        return []
    end = text.find("\n---", 3)
    if end < 0:
        return []
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else []


def _config_layout(
    configs: list[dict], config: str | None, files: list[str]
) -> dict[str, list[str]]:
    names = [str(c.get("config_name", "default")) for c in configs]
    if config is not None:
        if config not in names:
            raise UserError(
                f"no config {config!r} in this data set; its configs: {', '.join(names)}"
            )
        chosen = configs[names.index(config)]
    else:
        defaults = [c for c in configs if c.get("default")] or [
            c for c in configs if c.get("config_name", "default") == "default"
        ]
        chosen = (defaults or configs)[0]
    data_files = chosen.get("data_files")
    if data_files is None:
        return {}
    if isinstance(data_files, str | list) and not (
        isinstance(data_files, list) and data_files and isinstance(data_files[0], dict)
    ):
        data_files = [{"split": "train", "path": data_files}]
    layout: dict[str, list[str]] = {}
    for entry in data_files:
        patterns = entry.get("path", [])
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        matched = [f for f in files if any(fnmatch.fnmatch(f, p) for p in patterns)]
        if matched:
            layout.setdefault(str(entry.get("split", "train")), []).extend(sorted(matched))
    return layout


def _keyword_split(path: str) -> str | None:
    """train/validation/test from keywords in a file's name or folders (the `datasets` rules)."""
    lowered = "/" + path.lower()
    for split, words in SPLIT_KEYWORDS.items():
        for word in words:
            if re.search(rf"{SEPARATORS}{word}(?:{SEPARATORS}|$)", lowered):
                return split
    return None


def split_layout(
    files: list[str], config: str | None = None, readme: str | None = None
) -> tuple[dict[str, list[str]], list[str]]:
    """({split: [files]}, files that fit no split) for the data files of a set (paths relative
    to its root, '/'-separated). The README's configs win; else shard names
    (`<dir>/<split>-00000-of-00001*.parquet`), plain names (`train.jsonl`, `test.jsonl.gz`),
    then split keywords; a set where no file names a split is all train."""
    files = sorted(f for f in files if data_suffix(f))
    configs = readme_configs(readme)
    if configs:
        layout = _config_layout(configs, config, files)
        if layout:
            return layout, []
    if config is not None:
        files = [f for f in files if f.startswith(f"{config}/")]
        if not files:
            raise UserError(f"no config {config!r} (no folder {config}/ with data files)")
    layout: dict[str, list[str]] = {}
    unmatched = []
    for name in files:
        stem = name[: -len(data_suffix(name))]
        shard = SHARD.match(stem)
        base = stem.rsplit("/", 1)[-1]
        if shard:
            split = shard.group("split")
        elif any(base == w for words in SPLIT_KEYWORDS.values() for w in words):
            split = base
        else:
            split = _keyword_split(stem)
        if split is None:
            unmatched.append(name)
        else:
            layout.setdefault(split, []).append(name)
    if not layout:
        return ({"train": unmatched} if unmatched else {}), []
    return layout, unmatched
