"""Where preference data comes from: `--data` as a local file or folder (.jsonl, .json, their
.gz, .parquet), a Hugging Face dataset id (`org/name`, with a revision and a config), or a YAML
list of sets mixed with weights; which files make which split; and the rows they hold.

A Hub id goes through huggingface-hub's own cache (snapshot_download, only the README and the
files of the splits a run needs), so HF_HUB_OFFLINE=1 works from the cache and a second run
downloads nothing. Split names come from the set itself: the README's `configs:` data_files
when it has them, else the file names (`data/train_prefs-00000-of-00001.parquet`,
`<config>/train-*.parquet`, `harmless-base/train.jsonl.gz`, `train.jsonl`), as the `datasets`
library reads them.

Parquet is read with pyarrow directly: one columnar reader, only the columns the shape needs,
no second on-disk copy of the data (which `datasets` makes in its own cache) and none of its
dependencies (pandas, multiprocess, dill, xxhash).
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mlx_dpo import hub, token_cache
from mlx_dpo.data import (
    TokenizedSplit,
    read_raw_records,
    tokenize_records,
    validate_pair,
    validated_records,
)
from mlx_dpo.errors import UserError
from mlx_dpo.events import Progress
from mlx_dpo.layout import DATA_SUFFIXES, data_suffix, split_layout
from mlx_dpo.platform import return_free_memory
from mlx_dpo.shapes import Shape, detect_shape, shape

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class DataFile:
    path: Path  # where the bytes are
    label: str  # how sources name it: the local path, or org/name/<file in the repo>


@dataclass
class Source:
    """One data set, resolved: its split names (the set's own) and their files."""

    spec: str  # what the user gave
    kind: str  # "file" | "folder" | "hub"
    splits: dict[str, list[DataFile]]
    revision: str | None = None  # the Hub commit
    ignored: list[str] = field(default_factory=list)  # data files that fit no split

    @property
    def single_file(self) -> bool:
        return self.kind == "file"

    def describe(self) -> str:
        names = ", ".join(f"{name} ({len(files)} file(s))" for name, files in self.splits.items())
        at = f" at {self.revision[:12]}" if self.revision else ""
        return f"{self.spec}{at}: splits {names}"


def is_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


# ---------------------------------------------------------------------------------------------
# Resolving --data


def resolve_source(
    spec: str,
    config: str | None = None,
    revision: str | None = None,
    wanted: Iterable[str] | None = None,
) -> Source:
    """A local file, a local folder or a Hub dataset id, with its splits (for a Hub id only
    the files of the `wanted` split names are fetched; None: all). Raises UserError naming the
    path, or the id, the cache folder and HF_HUB_OFFLINE."""
    path = Path(spec).expanduser()
    if path.is_file():
        if not data_suffix(path.name):
            raise UserError(f"{path}: not a data file ({', '.join(DATA_SUFFIXES)})")
        return Source(spec, "file", {"train": [DataFile(path, str(path))]})
    if path.is_dir():
        files = [
            p.relative_to(path).as_posix()
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and data_suffix(p.name)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        readme = path / "README.md"
        text = readme.read_text(errors="replace") if readme.is_file() else None
        layout, ignored = split_layout(files, config, text)
        if not layout:
            raise UserError(f"{path}: no data files ({', '.join(DATA_SUFFIXES)}) in this folder")
        splits = {
            name: [DataFile(path / f, str(path / f)) for f in names]
            for name, names in layout.items()
        }
        return Source(spec, "folder", splits, ignored=ignored)
    if not is_hub_id(spec):
        raise UserError(f"{path}: no such data file or folder (nor a Hugging Face id org/name)")
    folder, layout, ignored = hub.fetch(spec, config, revision, wanted)
    splits = {
        name: [DataFile(folder / f, f"{spec}/{f}") for f in names] for name, names in layout.items()
    }
    return Source(spec, "hub", splits, revision=folder.name, ignored=ignored)


# ---------------------------------------------------------------------------------------------
# Reading rows


def file_columns(file: DataFile) -> tuple[list[str], dict | None]:
    """A parquet file's column names and first row, without reading the rest."""
    pq = _parquet()
    try:
        parquet = pq.ParquetFile(file.path)
        columns = list(parquet.schema_arrow.names)
        first = next(parquet.iter_batches(batch_size=1), None)
    except Exception as err:
        raise UserError(
            f"{file.path}: not a readable parquet file ({_arrow_message(err)})"
        ) from None
    sample = first.to_pylist()[0] if first is not None and first.num_rows else None
    return columns, sample


def read_parquet_rows(file: DataFile, columns: tuple[str, ...] | None) -> list[tuple[str, Any]]:
    pq = _parquet()
    try:
        parquet = pq.ParquetFile(file.path)
        names = set(parquet.schema_arrow.names)
        wanted = None if columns is None else [c for c in columns if c in names]
        rows = parquet.read(columns=wanted).to_pylist()
    except Exception as err:
        raise UserError(
            f"{file.path}: not a readable parquet file ({_arrow_message(err)})"
        ) from None
    # Arrow's allocator keeps freed buffers for reuse; the table is gone, so hand them back.
    _arrow().default_memory_pool().release_unused()
    return [(f"{file.label}[{i}]", row) for i, row in enumerate(rows)]


def _parquet():
    """pyarrow.parquet, imported on first use: a command that reads no parquet does not pay
    for loading Arrow."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet needs pyarrow: pip install pyarrow") from None
    return pq


def _arrow():
    import pyarrow

    return pyarrow


def _arrow_message(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def read_split(
    files: list[DataFile], fields: dict[str, str]
) -> tuple[Shape, list[tuple[str, Any]], list[str]]:
    """(shape, normalised rows as (source, record), problems) of one split's files. Every
    file must have the same shape."""
    shape: Shape | None = None
    rows: list[tuple[str, Any]] = []
    problems: list[str] = []
    for file in files:
        if file.path.name.endswith(".parquet"):
            columns, sample = file_columns(file)
            file_shape = _file_shape(file, columns, sample, fields)
            raw = read_parquet_rows(file, file_shape.columns)
        else:
            raw, file_problems = read_raw_records(file.path, file.label)
            problems += file_problems
            dicts = [v for _, v in raw[:100] if isinstance(v, dict)]
            columns = list(dict.fromkeys(k for d in dicts for k in d))
            file_shape = _file_shape(file, columns, dicts[0] if dicts else None, fields)
        if shape is not None and file_shape.name != shape.name:
            raise UserError(
                f"{file.label}: shape {file_shape.name}, but {files[0].label} is {shape.name}; "
                "the files of one split must have the same columns"
            )
        shape = file_shape
        for source, value in raw:
            record = shape.normalise(value) if isinstance(value, dict) else value
            if isinstance(record, str):
                problems.append(f"{source}: {record}")
            else:
                rows.append((source, record))
    assert shape is not None
    return shape, rows, problems


def _file_shape(file: DataFile, columns, sample, fields) -> Shape:
    if not columns:
        return detect_shape([], None, fields) if fields else _empty_shape(file)
    try:
        return detect_shape(columns, sample, fields)
    except UserError as err:
        raise UserError(f"{file.label}: {err}") from None


def _empty_shape(file: DataFile) -> Shape:
    return shape("standard")


# ---------------------------------------------------------------------------------------------
# Loading: the splits a run uses, tokenized (from the on-disk cache when possible) and selected

ROLES = ("train", "valid", "test")
VALID_NAMES = ("valid", "validation", "dev", "val")
# A run whose data has no validation split gets one carved from train: this share of it, at
# most this many pairs (the whole split is evaluated every eval_every steps), when train has
# at least this many pairs. --valid-fraction sets the share (0: never carve).
AUTO_VALID_FRACTION = 0.05
AUTO_VALID_MAX_PAIRS = 256
AUTO_VALID_MIN_TRAIN = 200
ENTRY_KEYS = ("path", "split", "config", "revision", "weight", "fields", "valid_split")


@dataclass
class Entry:
    """One data set of --data (a YAML list names several, each with a weight)."""

    spec: str
    split: str | None = None
    config: str | None = None
    revision: str | None = None
    weight: float = 1.0
    fields: dict[str, str] = field(default_factory=dict)
    valid_split: str | None = None


@dataclass
class LoadedData:
    splits: dict[str, TokenizedSplit]  # by role (train, valid, test) or asked split name
    notes: list[str]  # what the console says: shapes, the validation split, selections
    info: dict[str, Any]  # run_start fields: data_shape, data_sources, valid_source


def data_entries(config: Any) -> list[Entry]:
    """The data sets of a TrainConfig: `data` a string (one set) or a list of mappings
    {path, split, config, revision, weight, fields, valid_split}."""
    data = config.data
    if isinstance(data, str):
        return [
            Entry(data, config.data_split, config.data_config, config.data_revision, 1.0,
                  dict(config.fields), config.valid_split)
        ]  # fmt: skip
    entries = []
    for i, item in enumerate(data or []):
        where = f"data[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise UserError(
                f"{where}: each data set is a mapping with a 'path' (file, folder or id)"
            )
        unknown = sorted(set(item) - set(ENTRY_KEYS))
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(ENTRY_KEYS)}"
            )
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise UserError(f"{where}: 'weight' must be a number > 0, got {weight!r}")
        entries.append(
            Entry(item["path"], item.get("split") or config.data_split, item.get("config"),
                  item.get("revision"), float(weight), dict(item.get("fields") or config.fields),
                  item.get("valid_split") or config.valid_split)
        )  # fmt: skip
    if not entries:
        raise UserError("no data given: pass --data (a file, a folder or a Hugging Face id)")
    return entries


def _wanted_names(entry: Entry, roles: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for role in roles:
        if role == "train":
            names.add(entry.split or "train")
        elif role == "valid":
            names |= {entry.valid_split} if entry.valid_split else set(VALID_NAMES)
        else:
            names.add(role)
    return names


def _find_split(source: Source, entry: Entry, role: str, primary: bool) -> str | None:
    """The set's own split name that serves `role`, or None."""
    if source.single_file:
        return "train" if primary else None
    if role == "train":
        name = entry.split or "train"
        if name not in source.splits:
            raise UserError(
                f"{entry.spec}: no split {name!r}; its splits: {', '.join(source.splits)} "
                "(choose one with --data-split)"
            )
        return name
    if role == "valid":
        if entry.valid_split:
            if entry.valid_split not in source.splits:
                raise UserError(
                    f"{entry.spec}: no split {entry.valid_split!r} for validation; its splits: "
                    f"{', '.join(source.splits)}"
                )
            return entry.valid_split
        return next((n for n in VALID_NAMES if n in source.splits), None)
    # A folder or a Hub set with one split does not stand in for another: evaluating "test" on
    # the only split there is, train, would report training numbers as held-out ones.
    return role if role in source.splits else None


def tokenized_split(
    files: list[DataFile],
    fields: dict[str, str],
    tokenizer: Any,
    max_length: int,
    name: str,
    notes: list[str],
    use_cache: bool = True,
    progress: Progress | None = None,
) -> TokenizedSplit:
    """One split's files read, shaped, validated and tokenized, or taken from the cache.
    `progress` hears the "tokenizing" phase, in "<name> pairs" (nothing for a cached split)."""
    label = files[0].label if len(files) == 1 else f"{files[0].label} (+{len(files) - 1} files)"
    key = None
    if use_cache:
        key = token_cache.split_key(
            [f.path for f in files],
            fields,
            token_cache.tokenizer_fingerprint(tokenizer),
            max_length,
        )
        hit = token_cache.load(key, name, label)
        if hit is not None:
            split, meta = hit
            notes.extend(meta.get("notes", []))
            return split
    shape, rows, problems = read_split(files, fields)
    records = validated_records(label, rows, problems, validate_pair, shape.fields)
    split_notes: list[str] = []
    told = None if progress is None else partial(_tell_tokenizing, progress, name)
    split = tokenize_records(
        records, tokenizer, max_length, name, label, shape.name, split_notes, told
    )
    notes.extend(split_notes)
    if key is not None:
        token_cache.store(key, split, {"notes": split_notes})
    return split


def _tell_tokenizing(progress: Progress, name: str, done: int, total: int) -> None:
    progress("tokenizing", done, total, f"{name} pairs")


def weighted(split: TokenizedSplit, weight: float, rng: np.random.Generator) -> TokenizedSplit:
    """A mixture's share of one set: `weight` times its pairs (whole copies for weight > 1,
    then a seeded sample without replacement for the rest)."""
    if weight == 1.0:
        return split
    copies, rest = divmod(weight * len(split), len(split)) if len(split) else (0, 0)
    positions = [np.arange(len(split))] * int(copies)
    positions.append(np.sort(rng.choice(len(split), int(round(rest)), replace=False)))
    return split.subset(np.concatenate(positions))


def carve_count(train_pairs: int, fraction: float | None) -> int:
    """Validation pairs carved from a train split with no validation split beside it."""
    if fraction is None:
        if train_pairs < AUTO_VALID_MIN_TRAIN:
            return 0
        return min(math.ceil(AUTO_VALID_FRACTION * train_pairs), AUTO_VALID_MAX_PAIRS)
    if fraction <= 0:
        return 0
    return min(max(1, math.ceil(fraction * train_pairs)), train_pairs - 1)


def load_data(
    config: Any,
    tokenizer: Any,
    roles: tuple[str, ...] = ROLES,
    progress: Progress | None = None,
) -> LoadedData:
    """The splits of a run: `roles` are train, valid, test (found under the set's own names:
    --data-split, --valid-split) or a set's own split names (`mlx-dpo eval --split NAME`).
    A single file serves the first role asked for. Train is mixed from the sets by weight;
    validation is the sets' own, else carved from train (--valid-fraction); --max-pairs
    keeps a seeded sample of train. Raises UserError for anything the user can fix.
    `progress` hears the tokenizing of each split (tokenized_split)."""
    entries = data_entries(config)
    notes: list[str] = []
    per_role: dict[str, list[TokenizedSplit]] = {role: [] for role in roles}
    sources_info = []
    for index, entry in enumerate(entries):
        source = resolve_source(
            entry.spec, entry.config, entry.revision, _wanted_names(entry, roles)
        )
        if source.ignored:
            notes.append(
                f"{entry.spec}: {len(source.ignored)} file(s) name no split and are not read "
                f"({', '.join(source.ignored[:3])})"
            )
        shapes = {}
        for position, role in enumerate(roles):
            name = _find_split(source, entry, role, position == 0)
            if name is None:
                continue
            split = tokenized_split(
                source.splits[name],
                entry.fields,
                tokenizer,
                config.max_length,
                role,
                notes,
                progress=progress,
            )
            shapes[name] = split.shape
            if role == "train" and len(entries) > 1:
                rng = np.random.default_rng([config.seed, 11, index])
                split = weighted(split, entry.weight, rng)
            per_role[role].append(split)
        shape_names = sorted(set(shapes.values()))
        notes.append(f"data {source.describe()}; shape {', '.join(shape_names)}")
        sources_info.append(
            {
                "path": entry.spec,
                "revision": source.revision,
                "splits": {n: s for n, s in shapes.items()},
                "weight": entry.weight,
            }
        )
    splits = {
        role: parts[0] if len(parts) == 1 else TokenizedSplit.concat(role, "mixture", parts)
        for role, parts in per_role.items()
        if parts
    }
    valid_source = select_splits(config, splits, roles, notes)
    # The records and texts of a large set are garbage now; only the token arrays stay.
    gc.collect()
    return_free_memory()
    shapes = sorted({s["splits"][n] for s in sources_info for n in s["splits"]})
    info = {
        "data_shape": "+".join(shapes),
        "data_sources": sources_info,
        "valid_source": valid_source,
    }
    return LoadedData(splits, notes, info)


def select_splits(
    config: Any, splits: dict, roles: tuple[str, ...], notes: list[str]
) -> str | None:
    """Carve validation from train when there is none, then --max-pairs; says both."""
    train = splits.get("train")
    valid_source = None
    if "valid" in splits:
        valid_source = "split"
    elif train is not None and "valid" in roles:
        count = carve_count(len(train), config.valid_fraction)
        if count:
            order = np.random.default_rng([config.seed, 7]).permutation(len(train))
            splits["valid"] = train.subset(np.sort(order[:count]), "valid")
            splits["train"] = train = train.subset(np.sort(order[count:]), "train")
            share = len(splits["valid"]) / (len(train) + count)
            how = (
                "--valid-fraction"
                if config.valid_fraction is not None
                else (f"default: {AUTO_VALID_FRACTION:.0%}, at most {AUTO_VALID_MAX_PAIRS} pairs")
            )
            notes.append(
                f"valid: none in the data; {count} pairs ({share:.1%}) carved from train with "
                f"seed {config.seed} ({how}; --valid-fraction 0 turns it off)"
            )  # fmt: skip
            valid_source = f"carved {count}"
        elif config.valid_fraction is None:
            notes.append(
                f"valid: none in the data, and train has {len(train)} pairs (under "
                f"{AUTO_VALID_MIN_TRAIN}), so none is carved: no evaluation during the run "
                "(--valid-fraction F carves one)"
            )
        else:
            notes.append("valid: none (--valid-fraction 0): no evaluation during the run")
    if train is not None and config.max_pairs is not None and config.max_pairs < len(train):
        rng = np.random.default_rng([config.seed, 13])
        keep = np.sort(rng.choice(len(train), config.max_pairs, replace=False))
        notes.append(
            f"train: {config.max_pairs} of {len(train)} pairs (--max-pairs, seed {config.seed})"
        )
        splits["train"] = train.subset(keep)
    return valid_source
