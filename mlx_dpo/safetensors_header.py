"""A safetensors file's header checked against its size before MLX reads it.

An interrupted download or copy leaves a weights file cut short (the most common damage to a
model folder), and a bad disk or a careless edit leaves a header that is not JSON. MLX then
fails deep inside a lazy load with a message that names no file. Reading the header (8 bytes
of length, then JSON) costs microseconds and names the file: every tensor's bytes must lie
inside the file and match its shape and dtype.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from mlx_dpo.errors import UserError

# Bytes per element of each safetensors dtype (the format's own names).
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
# A header longer than this is not a header (the format's own reader refuses past 100 MB).
MAX_HEADER_BYTES = 100_000_000


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file, or None when its header and size agree."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                return f"its header claims {length} bytes but the file has {size}"
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as err:
        return f"cannot read ({err.strerror})"
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(entry, data_bytes)
        if problem:
            return f"tensor {name!r}: {problem}"
    return None


def _entry_problem(entry: object, data_bytes: int) -> str | None:
    if not isinstance(entry, dict):
        return "not described by a mapping"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        return f"dtype {dtype!r} is not a name"
    if not isinstance(shape, list) or not all(_size(v) for v in shape):
        return f"shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_size, offsets))):
        return f"data offsets {offsets!r} are not two positions"
    begin, end = offsets
    if begin > end:
        return f"data offsets {offsets} are not in order"
    if end > data_bytes:
        return f"its data ends at byte {end} but the file holds {data_bytes} bytes of data"
    # A dtype this table does not know (a newer format's) is only checked for its bounds.
    if dtype in DTYPE_BYTES and end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        return f"{end - begin} bytes for a {dtype} tensor of shape {shape}"
    return None


def _size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_safetensors(path: Path, what: str) -> None:
    """A UserError naming the file when it is cut short or its header is damaged. `what`
    says what the file is to the user (\"the model's weights\", \"the adapter\")."""
    problem = safetensors_problem(path)
    if problem:
        raise UserError(
            f"{path}: {what} are damaged or incomplete ({problem}); an interrupted download "
            "or copy? Fetch or copy the file again"
        )
