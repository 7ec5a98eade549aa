"""`mlx-dpo export --gguf OUT.gguf`: a run's adapters fused into its base model and written as
one GGUF file for llama.cpp, Ollama and LM Studio (docs/interop.md).

The fusing is export.py's (mlx-lm's LoRALinear.fuse), always dequantized: GGUF has its own
quantization types, chosen with `tensor_type` (float16 by default). The file is written into
OUT.tmp-XXXX/ beside OUT and renamed into place when complete (a killed export's folder is
removed by the next export to the same OUT); an existing OUT is replaced only with
`overwrite`; the run directory is never written into, apart from `export` events in
its metrics.jsonl.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.errors import UserError
from mlx_dpo.events import current_umask
from mlx_dpo.export import (
    base_model_of,
    check_destination,
    clean_up_killed_exports,
    export_events,
    fuse_model,
    temporary_folder,
)
from mlx_dpo.formatting import format_size
from mlx_dpo.gguf import WRITE_TYPES, write_gguf
from mlx_dpo.model import load_adapter_into, load_model


def export_gguf(
    adapter_path: str | Path,
    out: str | Path,
    model: str | None = None,
    tensor_type: str = "f16",
    overwrite: bool = False,
    on_line: Callable[[str], None] = print,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Fuse the adapters of `adapter_path` into its base model and write `out` (a .gguf file).
    Returns {path, size_bytes, seconds, fused_layers, tensor_type}. The checks before loading
    and the run's `export` events are mlx_dpo/export.py's."""
    tic = time.perf_counter()
    adapter_path = Path(adapter_path).expanduser()
    out = Path(out).expanduser()
    if out.suffix.lower() != ".gguf":
        raise UserError(f"--gguf {out}: name the file .gguf")
    if tensor_type not in WRITE_TYPES:
        raise UserError(f"--gguf-type {tensor_type}: choose one of {', '.join(WRITE_TYPES)}")
    adapter_config = read_adapter_config(adapter_path)
    base = model or base_model_of(adapter_config, adapter_path)
    clean_up_killed_exports(out, on_line)
    check_destination(out, adapter_path, base, overwrite, base_given=model is not None)
    with export_events(adapter_path, out) as record:
        fused = _fuse_and_write(
            base, adapter_path, adapter_config, out, tensor_type, trust_remote_code, on_line
        )
        size, seconds = out.stat().st_size, time.perf_counter() - tic
        on_line(
            f"done: {out} ({format_size(size)}, {fused} LoRA layers fused, {seconds:.1f}s). "
            f"Ollama: see docs/interop.md; llama.cpp: llama-cli -m {out}"
        )
        record("done", format_size(size), size_bytes=size)
        return {
            "path": str(out),
            "size_bytes": size,
            "seconds": seconds,
            "fused_layers": fused,
            "tensor_type": tensor_type,
        }


def _fuse_and_write(
    base: str,
    adapter_path: Path,
    adapter_config: dict[str, Any],
    out: Path,
    tensor_type: str,
    trust_remote_code: bool,
    on_line: Callable[[str], None],
) -> int:
    """Load the base as training did, fuse the adapter (dequantized: GGUF types are chosen
    with --gguf-type), write the file under a temporary name beside `out` and rename it into
    place. Returns the number of fused layers."""
    on_line(f"loading {base}")
    net, tokenizer, _, config = load_model(
        base, adapter_config.get("quantize"), trust_remote_code, on_note=on_line
    )
    on_line(f"loading adapter {adapter_path}")
    load_adapter_into(net, adapter_path)
    fused = fuse_model(net, dequantize=True)
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    on_line(f"writing {out} ({tensor_type})")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written inside OUT.tmp-XXXX/, beside the marker that lets the next export remove it
    # should this one be killed (mlx_dpo/export.py clean_up_killed_exports).
    work = temporary_folder(out, "tmp")
    tmp = work / out.name
    try:
        write_gguf(net, tokenizer, config, tmp, name=out.stem, tensor_type=tensor_type)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return fused
