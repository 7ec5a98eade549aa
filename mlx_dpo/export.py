"""`mlx-dpo export`: fuse a run's LoRA adapters into a standalone model folder.

The result is an ordinary mlx-lm model folder: `mlx_lm.load(OUT)`, `mlx_lm.generate` and
`mlx_lm.chat --model OUT` use it as it is. The pieces are mlx-lm's own (LoRALinear.fuse,
dequantize_model, save_model, save_config, the tokenizer's save_pretrained), as in
`mlx_lm.fuse`, with three differences:

- A quantized base (a 4-/8-bit folder, or a run trained with --quantize) is written
  dequantized by default: a light DPO fine-tune moves weights by less than one quantization
  step, so re-quantizing the fused weights can erase it. `--quantize` keeps it quantized.
- The model is written into OUT.tmp-XXXX/ and renamed into place (an existing OUT, with
  --overwrite, is first moved into OUT.old-XXXX/), so a crash never leaves a half model at
  OUT; the adapter folder is never written into (only an `export` event is appended to the
  run's metrics.jsonl, where there is one). Both temporaries hold a marker file naming their
  export: the next export to the same OUT removes those a killed export left (and puts back
  an OUT it had moved aside), never any other folder.
- Every user mistake (missing or mismatched adapter, a save path inside the run) is a
  UserError with the reason, before anything is loaded where possible.

Plain arguments only; `mlx-dpo export` (mlx_dpo/cli/export.py) reads the flags. MLX and
mlx-lm are imported inside the functions that use them, so importing this module (the CLI
does, for every command and for `--help`) stays light.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlx_dpo import paths
from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.errors import UserError
from mlx_dpo.events import (
    ADAPTER_CONFIG_FILE,
    METRICS_FILE,
    EventWriter,
    current_umask,
    read_events,
)
from mlx_dpo.formatting import format_size
from mlx_dpo.rundir import pid_alive

# Files of the base model folder that mlx-lm's own `save` copies beside the weights.
COPIED_FILES = ("*.py", "generation_config.json")
# Inside each temporary folder of an export (OUT.tmp-*, OUT.old-*): {"pid", "target"}.
TEMPORARY_MARKER = ".mlx-dpo-export"


def base_model_of(adapter_config: dict[str, Any], adapter_path: str | Path) -> str:
    """The base model an adapter was trained on: mlx-dpo writes `base_model`, mlx-lm `model`."""
    base = adapter_config.get("base_model") or adapter_config.get("model")
    if not base:
        raise UserError(
            f"{adapter_path}/{ADAPTER_CONFIG_FILE} does not record the base model: pass --model"
        )
    return str(base)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_save_path(save_path: Path, adapter_path: Path, base_path: Path | None = None) -> None:
    """Refuse a destination that would write into (or replace) the run or the base model."""
    save = save_path.expanduser().resolve()
    run = adapter_path.expanduser().resolve()
    if _is_within(save, run):
        raise UserError(
            f"--save-path {save_path} is inside the adapter folder {adapter_path}; export "
            "never writes into the run: choose a folder outside it"
        )
    if _is_within(run, save):
        raise UserError(f"--save-path {save_path} contains the adapter folder {adapter_path}")
    if base_path is not None:
        base = base_path.expanduser().resolve()
        if _is_within(save, base) or _is_within(base, save):
            raise UserError(
                f"--save-path {save_path} overlaps the base model folder {base_path}; choose "
                "another folder"
            )


def last_step(run_dir: Path) -> int:
    steps = [e.get("step", 0) for e in read_events(run_dir) if e.get("event") == "step"]
    return int(steps[-1]) if steps else 0


@contextlib.contextmanager
def export_events(adapter_path: Path, destination: Path) -> Iterator[Callable[..., None]]:
    """A run directory's event stream records an export: `started` here, `failed` (with the
    reason) when the block raises, and `done` when the block calls the yielded
    `record("done", message, **fields)`. An adapter folder without a stream records nothing."""
    writer = EventWriter(adapter_path) if (adapter_path / METRICS_FILE).is_file() else None
    step = last_step(adapter_path) if writer else 0

    def record(status: str, message: str, **fields: Any) -> None:
        if writer:
            writer.write(
                "export", step, status=status, path=str(destination), message=message, **fields
            )

    record("started", f"fusing into {destination}")
    try:
        yield record
    except BaseException as err:
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):
            record("failed", message)
        raise
    finally:
        if writer:
            writer.close()


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fuse_model(model: Any, dequantize: bool) -> int:
    """Merge every LoRA layer into its base linear in place (mlx-lm's own `fuse`). With
    `dequantize`, every quantized layer (fused or not) becomes full precision. Returns the
    number of fused layers."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model

    fused = [
        (name, m.fuse(dequantize=dequantize))
        for name, m in model.named_modules()
        if hasattr(m, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        dequantize_model(model)
    return len(fused)


def _write_model_folder(
    folder: Path, model: Any, tokenizer: Any, config: dict, base_path: Path, note: str
) -> None:
    import mlx.core as mx
    from mlx_lm.utils import save_config, save_model

    mx.eval(model.parameters())
    save_model(folder, model)
    save_config(dict(config), folder / "config.json")
    tokenizer.save_pretrained(str(folder))
    for pattern in COPIED_FILES:
        for name in glob.glob(str(base_path / pattern)):
            shutil.copy(name, folder)
    (folder / "README.md").write_text(note, encoding="utf-8")


def temporary_folder(save_path: Path, kind: str) -> Path:
    """A new OUT.tmp-XXXX or OUT.old-XXXX folder beside save_path, marked as this export's."""
    folder = Path(tempfile.mkdtemp(dir=save_path.parent, prefix=f"{save_path.name}.{kind}-"))
    marker = {"pid": os.getpid(), "target": save_path.name}
    (folder / TEMPORARY_MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return folder


def _left_by_a_killed_export(folder: Path, save_path: Path) -> bool:
    """Whether `folder` (named OUT.tmp-* or OUT.old-*) is a temporary of an export to
    save_path whose process is gone: its marker says so."""
    try:
        marker = json.loads((folder / TEMPORARY_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(marker, dict) or marker.get("target") != save_path.name:
        return False
    pid = marker.get("pid")
    return isinstance(pid, int) and not pid_alive(pid)


def clean_up_killed_exports(save_path: Path, on_line: Callable[[str], None] = print) -> None:
    """Remove what an export to save_path that was killed left beside it: its OUT.tmp-*
    folder, and its OUT.old-* folder after putting the OUT it held back in place when there
    is none (the kill came between the two renames). Folders without the marker of such an
    export (the user's own, a running export's) are left alone."""
    parent = save_path.parent
    if not parent.is_dir():
        return
    for kind in ("old", "tmp"):  # an old model goes back before the new half-work goes
        for folder in sorted(parent.glob(f"{glob.escape(save_path.name)}.{kind}-*")):
            if not folder.is_dir() or not _left_by_a_killed_export(folder, save_path):
                continue
            moved_aside = folder / save_path.name
            if kind == "old" and moved_aside.is_dir() and not save_path.exists():
                os.rename(moved_aside, save_path)
                on_line(f"put back {save_path}, which an export that was cut short had moved aside")
            shutil.rmtree(folder, ignore_errors=True)
            on_line(f"removed {folder}, left by an export that was cut short")


def _move_into_place(tmp: Path, save_path: Path, overwrite: bool) -> None:
    """Rename the finished folder to save_path. An existing folder is replaced only with
    `overwrite`, and only after the new one is complete."""
    if not save_path.exists():
        os.rename(tmp, save_path)
        return
    if not overwrite:
        raise UserError(f"{save_path} already exists: pass --overwrite or choose another folder")
    old = temporary_folder(save_path, "old")
    os.rename(save_path, old / save_path.name)
    os.rename(tmp, save_path)
    shutil.rmtree(old, ignore_errors=True)


def export_model(
    adapter_path: str | Path,
    save_path: str | Path,
    model: str | None = None,
    quantize: bool = False,
    overwrite: bool = False,
    on_line: Callable[[str], None] = print,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Fuse the adapters of `adapter_path` into its base model and write the result to
    `save_path`. Returns {path, size_bytes, seconds, fused_layers, dequantized, quantization}.
    A run directory's event stream records the export: started, then done or failed."""
    tic = time.perf_counter()
    adapter_path = Path(adapter_path).expanduser()
    save_path = Path(save_path).expanduser()
    adapter_config = read_adapter_config(adapter_path)
    base = model or base_model_of(adapter_config, adapter_path)
    clean_up_killed_exports(save_path, on_line)
    check_destination(save_path, adapter_path, base, overwrite, base_given=model is not None)
    with export_events(adapter_path, save_path) as record:
        result = _fuse_and_write(
            base,
            adapter_path,
            adapter_config,
            save_path,
            quantize=quantize,
            overwrite=overwrite,
            trust_remote_code=trust_remote_code,
            on_line=on_line,
        )
        size, seconds = result["size_bytes"], time.perf_counter() - tic
        on_line(
            f"done: {save_path} ({format_size(size)} on disk, {result['fused_layers']} LoRA "
            f"layers fused, {seconds:.1f}s). chat with it: mlx_lm.chat --model "
            f"{paths.shown(save_path)}"
        )
        record("done", f"{format_size(size)} on disk", size_bytes=size)
        return {**result, "seconds": seconds}


def check_destination(
    save_path: Path, adapter_path: Path, base: str, overwrite: bool, base_given: bool
) -> None:
    """Before anything is loaded: the destination is free (or may be replaced), the base
    model exists, and neither the run nor the base is inside the destination or around it."""
    from mlx_dpo.model import resolve_model_path

    check_save_path(save_path, adapter_path)
    if save_path.exists() and not overwrite:
        raise UserError(f"{save_path} already exists: pass --overwrite or choose another folder")
    try:
        base_path = resolve_model_path(base)
    except UserError as err:
        hint = "" if base_given else f" (the base model recorded in {adapter_path}); pass --model"
        raise UserError(f"{err}{hint}") from None
    check_save_path(save_path, adapter_path, base_path)


def _fuse_and_write(
    base: str,
    adapter_path: Path,
    adapter_config: dict[str, Any],
    save_path: Path,
    *,
    quantize: bool,
    overwrite: bool,
    trust_remote_code: bool,
    on_line: Callable[[str], None],
) -> dict[str, Any]:
    """Load the base as training loaded it, load and fuse the adapter, write the model into a
    temporary folder beside `save_path` and rename it into place: a failure leaves nothing at
    `save_path`. Returns {path, size_bytes, fused_layers, dequantized, quantization}."""
    from mlx_dpo.model import load_adapter_into, load_model

    load_quantize = adapter_config.get("quantize")
    at_load = (
        f" (quantized to {load_quantize}-bit at load, as in training)" if load_quantize else ""
    )
    on_line(f"loading {base}{at_load}")
    # Trust is the user's to give on this command line, never read from an adapter folder
    # that may have come from someone else.
    net, tokenizer, base_path, config = load_model(base, load_quantize, trust_remote_code)
    quantization = config.get("quantization")
    if quantize and not quantization:
        raise UserError(
            f"{base} is not quantized: --quantize keeps a quantized base quantized; to "
            f"quantize the export, run mlx_lm.convert --hf-path {save_path} -q on it"
        )
    dequantize = bool(quantization) and not quantize
    on_line(f"loading adapter {adapter_path}")
    load_adapter_into(net, adapter_path)
    action = "dequantizing" if dequantize else ("keeping it quantized" if quantization else "")
    on_line("fusing LoRA layers" + (f" ({action})" if action else ""))
    fused = fuse_model(net, dequantize)
    if dequantize:
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    on_line(f"saving to {save_path}")
    save_path.parent.mkdir(parents=True, exist_ok=True)
    # The model is written into OUT.tmp-XXXX/OUT, beside the marker of this export.
    work = temporary_folder(save_path, "tmp")
    tmp = work / save_path.name
    tmp.mkdir()
    note = (
        f"# {save_path.name}\n\nFused by `mlx-dpo export` from base model `{base}` and the "
        f"LoRA adapters in `{adapter_path.resolve()}`"
        + (" (dequantized)" if dequantize else "")
        + f".\n\nUse it with mlx-lm: `mlx_lm.chat --model {save_path}`\n"
    )
    try:
        _write_model_folder(tmp, net, tokenizer, config, base_path, note)
        os.chmod(tmp, 0o777 & ~current_umask())
        _move_into_place(tmp, save_path, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "path": str(save_path),
        "size_bytes": folder_size(save_path),
        "fused_layers": fused,
        "dequantized": dequantize,
        "quantization": None if dequantize else quantization,
    }
