"""Damage done to model folders, adapter folders and files, as an interrupted download, a
bad disk, a careless edit or a hostile user leaves them: shared by the tests of the one-line
user errors (tests/e2e/test_cli.py) and the fuzz harness (tests/e2e/test_fuzz.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

WEIGHTS = "model.safetensors"


def copy_folder(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


def truncate(path: Path, fraction: float = 0.5) -> None:
    """An interrupted download: the file cut at `fraction` of its size."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def overwrite(path: Path, offset: int, data: bytes) -> None:
    """Bytes written over the file at `offset` (a zero-filled block, a flipped byte)."""
    content = bytearray(path.read_bytes())
    offset %= max(len(content), 1)
    content[offset : offset + len(data)] = data
    path.write_bytes(bytes(content))


def edit_json(path: Path, **changes) -> None:
    """A JSON object file with `changes` set (a value of None removes the key)."""
    value = json.loads(path.read_text())
    for key, new in changes.items():
        if new is None:
            value.pop(key, None)
        else:
            value[key] = new
    path.write_text(json.dumps(value))


def set_chat_template(folder: Path, template: str) -> None:
    edit_json(folder / "tokenizer_config.json", chat_template=template)


def scale_weights(folder: Path, factor: float) -> None:
    """One weight of the model multiplied by `factor` (NaN: a model broken before any data
    is seen; 1e30: finite, but its first step overflows)."""
    import mlx.core as mx

    weights = mx.load(str(folder / WEIGHTS))
    name = sorted(weights)[len(weights) // 2]
    weights[name] = weights[name] * factor
    mx.save_safetensors(str(folder / WEIGHTS), weights)


# Each damage of a model folder, by name: what the user's folder may look like.
MODEL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated weights": lambda f: truncate(f / WEIGHTS),
    "weights cut inside the header": lambda f: truncate(f / WEIGHTS, 0.0005),
    "corrupt weights header": lambda f: overwrite(f / WEIGHTS, 12, b"\x00\xff" * 8),
    "weights header longer than the file": lambda f: overwrite(f / WEIGHTS, 0, b"\xff" * 8),
    "garbage tokenizer.json": lambda f: (f / "tokenizer.json").write_text("garbage{"),
    "tokenizer.json of the wrong shape": lambda f: (f / "tokenizer.json").write_text('{"model": 3}'),
    "garbage config.json": lambda f: (f / "config.json").write_text("garbage"),
    "config.json not an object": lambda f: (f / "config.json").write_text("[1, 2]"),
    "config.json of wrong types": lambda f: edit_json(f / "config.json", hidden_size="big"),
    "garbage tokenizer_config.json": lambda f: (f / "tokenizer_config.json").write_bytes(b"\xff\xfe{"),
    "a template that raises": lambda f: set_chat_template(
        f, "{{ raise_exception('Conversation roles must alternate') }}"
    ),
    "a template that does not parse": lambda f: set_chat_template(f, "{% for m in messages %"),
    "NaN weights": lambda f: scale_weights(f, float("nan")),
    "NaN-free weights of 1e30": lambda f: scale_weights(f, 1e30),
}  # fmt: skip


def write_adapter(folder: Path, config: dict, weights: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapters.safetensors").write_bytes(weights or b"")
    return folder
