"""The mlx-dpo benchmark: mlx-dpo against mlx-lm-lora and TRL on the same offline workloads.

    python benchmarks/run.py [--workloads W1,W2,W3] [--steps N] [--warmup K]
                             [--tools mlx-dpo,mlx-lm-lora,trl-live,trl-precomputed]
                             [--rounds R]
    python benchmarks/run.py --workloads W4     # the real model (SmolLM2-135M-Instruct)

Each tool runs in its own process, one after another, on the same data with the same LoRA
rank and targets, batch size, sequence lengths and learning rate, in float32. Results: a
markdown table (printed, and written to benchmarks/results/<name>.md) and JSON beside it.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import QUANTIZED_MODEL, WORKLOADS  # noqa: E402

TOOLS = ("mlx-dpo", "mlx-lm-lora", "trl-live", "trl-precomputed")
# QLoRA on the workload's 4-bit model: only real-model workloads (W4) have one. Not run by
# default: MLX's CPU quantized matmul runs at ~2.5 GFLOP/s against ~170 for float32 (a
# (1800, 576) x (576, 1536) product, 4 bits, group 64: 1.28 s vs 19 ms), so W4's 4-bit
# reference precompute alone takes ~40 s a pair here (hours for W4). Ask for them with
# --tools on a machine with Metal. TRL has no 4-bit training on the CPU (bitsandbytes'
# kernels need a GPU): the report says so in their place.
QUANTIZED_TOOLS = ("mlx-dpo-q4", "mlx-lm-lora-q4")
EXTRA_TOOLS = QUANTIZED_TOOLS + (
    "mlx-dpo-live",
    "mlx-dpo-rows",
    "mlx-dpo-gc",
    "mlx-dpo-orpo",
    "mlx-dpo-simpo",
)
# Reference-free losses, measured against sigmoid DPO (mlx-dpo, and mlx-dpo-live if run).
REFERENCE_FREE_TOOLS = {"mlx-dpo-orpo": "orpo", "mlx-dpo-simpo": "simpo"}
# Modules each tool needs beyond mlx-dpo's own dependencies.
NEEDS = {
    "mlx-dpo": (),
    "mlx-dpo-live": (),
    "mlx-dpo-rows": (),
    "mlx-dpo-gc": (),
    "mlx-dpo-orpo": (),
    "mlx-dpo-simpo": (),
    "mlx-lm-lora": ("mlx_lm_lora",),
    "mlx-dpo-q4": (),
    "mlx-lm-lora-q4": ("mlx_lm_lora",),
    "trl-live": ("torch", "transformers", "trl", "peft", "datasets"),
    "trl-precomputed": ("torch", "transformers", "trl", "peft", "datasets"),
}
VERSIONS = (
    "mlx-dpo",
    "mlx",
    "mlx-lm",
    "mlx-lm-lora",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "numpy",
)
DEFAULT_STEPS = "W1=8,W2=3,W3=6,W4=4"
# Seconds per tool run (--timeout overrides): W4 precomputes the reference of 232 pairs and
# evaluates 32 after training, on a 135M model (~2-4 s a pair each in float32 here).
DEFAULT_TIMEOUTS = {"W4": 3600}
LOGIT_TOKENS = "1,87,85,71,84,201,489,277,900,311,293,328,1136,2"


def command_for(tool: str, workload: Path, steps: int, warmup: int, out: Path) -> list[str]:
    common = ["--workload", str(workload), "--steps", str(steps), "--warmup", str(warmup)]
    common += ["--out", str(out)]
    py = sys.executable
    if tool == "mlx-dpo":
        return [py, str(HERE / "bench_mlx_dpo.py"), *common, "--reference", "cached"]
    if tool == "mlx-dpo-q4":
        return [py, str(HERE / "bench_mlx_dpo.py"), *common, "--model", QUANTIZED_MODEL]
    if tool == "mlx-lm-lora-q4":
        return [py, str(HERE / "bench_mlx_lm_lora.py"), *common, "--model", QUANTIZED_MODEL]
    if tool == "mlx-dpo-live":
        return [py, str(HERE / "bench_mlx_dpo.py"), *common, "--reference", "live"]
    if tool == "mlx-dpo-rows":
        return [py, str(HERE / "bench_mlx_dpo.py"), *common, "--layout", "rows"]
    if tool == "mlx-dpo-gc":
        return [py, str(HERE / "bench_mlx_dpo.py"), *common, "--grad-checkpoint"]
    if tool in REFERENCE_FREE_TOOLS:
        return [py, str(HERE / "bench_mlx_dpo.py"), *common, "--loss", REFERENCE_FREE_TOOLS[tool]]
    if tool == "mlx-lm-lora":
        return [py, str(HERE / "bench_mlx_lm_lora.py"), *common]
    if tool in ("trl-live", "trl-precomputed"):
        reference = tool.split("-", 1)[1]
        return [py, str(HERE / "bench_trl.py"), *common, "--reference", reference]
    raise ValueError(tool)


def parse_steps(text: str, workloads: list[str]) -> dict[str, int]:
    """'8' (every workload) or 'W1=8,W2=3' (others: the default's)."""
    text = str(text)
    if text.isdigit():
        return dict.fromkeys(workloads, int(text))
    defaults = dict(item.split("=") for item in DEFAULT_STEPS.split(","))
    given = dict(item.split("=") for item in text.split(",") if item)
    merged = {**defaults, **given}
    return {w: int(merged.get(w, 6)) for w in workloads}


def missing_dependencies(tools: list[str]) -> list[str]:
    missing = []
    for tool in tools:
        for module in NEEDS[tool]:
            if importlib.util.find_spec(module) is None and module not in missing:
                missing.append(module)
    return missing


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def engine_state() -> str:
    """Where mlx_dpo is imported from, and whether its files differ from the commit."""
    spec = importlib.util.find_spec("mlx_dpo")
    origin = Path(spec.origin).parent if spec and spec.origin else None
    if origin is None:
        return "not found"
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=origin,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(origin)
    return f"{origin}, {'with uncommitted changes' if dirty else 'as committed'}"


def run_logged(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run cmd with its output to log; (exit code, seconds). A timeout is exit code 124."""
    tic = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as handle:
        try:
            code = subprocess.run(
                cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - tic


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def measure_peak(log_dir: Path, label: str) -> dict:
    out = log_dir / f"matmul-peak-{label}.json"
    log = out.with_suffix(".log")
    code, _ = run_logged([sys.executable, str(HERE / "flops.py"), str(out)], log, 300)
    if code != 0:
        raise SystemExit(f"measuring the matmul peak failed:\n{tail(log)}")
    return json.loads(out.read_text())


def verify_logits(model_dir: Path, log_dir: Path) -> dict:
    """MLX and PyTorch (transformers' LlamaForCausalLM) logits of the same folder agree."""
    import numpy as np

    mlx_out, torch_out = log_dir / "logits-mlx.npy", log_dir / "logits-torch.npy"
    for cmd, out in (
        ([sys.executable, str(HERE / "workloads.py"), "logits"], mlx_out),
        ([sys.executable, str(HERE / "bench_trl.py"), "--logits"], torch_out),
    ):
        code, _ = run_logged(
            [*cmd, str(model_dir), str(out), LOGIT_TOKENS], out.with_suffix(".log"), 300
        )
        if code != 0:
            raise SystemExit(f"logits check failed:\n{tail(out.with_suffix('.log'))}")
    a, b = np.load(mlx_out), np.load(torch_out)
    diff = float(np.abs(a - b).max())
    scale = float(np.abs(a).max())
    return {
        "max_abs_difference": diff,
        "max_abs_logit": scale,
        "agree": diff <= 1e-4 * max(scale, 1),
    }


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(value, base) -> str:
    if value is None or base in (None, 0):
        return "–"
    return f"{value / base:.2f}×"


def report(meta: dict, results: dict[str, dict[str, dict]]) -> tuple[str, dict]:
    lines = [
        f"# mlx-dpo benchmark — {meta['name']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Commit {meta['commit']} (engine {meta['engine']}), {meta['machine']}; measured steps "
        + ", ".join(f"{w} {n}" for w, n in meta["steps"].items())
        + f" after {meta['warmup']} warm-up steps per tool; batch 4 pairs, LoRA rank 8 on "
        "q/k/v/o of every layer, float32 (`-q4` rows: 4-bit base weights, QLoRA; their ratios "
        "are to mlx-dpo-q4).  ",
        f"Load average before {meta['load_before']}, after {meta['load_after']} "
        f"({os.cpu_count()} cores); total time {meta['total_seconds'] / 60:.1f} min.  ",
        "Float32 matmul peak (MLX, best of a few shapes): "
        + ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s" for k, v in meta["matmul_peak"].items())
        + f"; used: {meta['peak_gflops']:.1f} GFLOP/s.",
        "",
        "Ratios are the tool's value over mlx-dpo's on the same workload (throughput: below 1 "
        "means slower than mlx-dpo; memory: above 1 means more memory). Load: the 1-minute "
        "load average when the tool started and ended (2 cores: above ~2 the machine was "
        "shared with other work).",
        "",
    ]
    header = (
        "| workload | tool | pairs/s | tokens/s | step s (mean / median) | ref. precompute s "
        "| ref. precompute s/pair | eval s/pair | peak RSS MB | MLX peak MB | pairs/s ÷ mlx-dpo "
        "| RSS ÷ mlx-dpo | MLX peak ÷ mlx-dpo | load |"
    )
    lines += [header, "|" + "---|" * 14]
    for workload, by_tool in results.items():
        for tool, r in by_tool.items():
            # 4-bit rows against mlx-dpo's 4-bit row, the others against mlx-dpo's.
            base = by_tool.get("mlx-dpo-q4" if tool.endswith("-q4") else "mlx-dpo", {})
            if "error" in r:
                lines.append(f"| {workload} | {tool} | failed: {r['error']} |" + " |" * 11)
                continue
            label = f"{tool} (shared prompts)" if r.get("prefix_sharing") else tool
            lines.append(
                "| "
                + " | ".join(
                    [
                        workload,
                        label,
                        _fmt(r["pairs_per_second"], 3),
                        _fmt(r["tokens_per_second"], 0),
                        f"{r['step_seconds_mean']:.2f} / {r['step_seconds_median']:.2f}",
                        _fmt(r.get("reference_precompute_seconds"), 1),
                        _fmt(precompute_per_pair(meta, workload, r), 3),
                        _fmt(r.get("eval_seconds_per_pair"), 3),
                        _fmt(r["peak_rss_mb"], 0),
                        _fmt(r.get("mlx_peak_memory_mb"), 0),
                        _ratio(r["pairs_per_second"], base.get("pairs_per_second")),
                        _ratio(r["peak_rss_mb"], base.get("peak_rss_mb")),
                        _ratio(r.get("mlx_peak_memory_mb"), base.get("mlx_peak_memory_mb")),
                        "→".join(str(x) for x in r.get("load_average_1min", [])) or "–",
                    ]
                )
                + " |"
            )
        if any(t in by_tool for t in QUANTIZED_TOOLS):
            for tool in ("trl-live-q4", "trl-precomputed-q4"):
                lines.append(
                    f"| {workload} | {tool} | – (TRL/PEFT have no 4-bit training on the CPU: "
                    "bitsandbytes needs a GPU) |" + " |" * 11
                )
    lines.append("")
    lines += phase_peak_lines(results)
    lines += reference_free_lines(results)
    targets = evaluate_targets(meta, results)
    if targets:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
        lines.append("")
    mfu = [
        (w, r["mlx-dpo"]["model_flops_per_second"] / 1e9)
        for w, r in results.items()
        if "model_flops_per_second" in r.get("mlx-dpo", {})
    ]
    if mfu:
        lines.append(
            "mlx-dpo model FLOP rate (benchmarks/flops.py): "
            + ", ".join(
                f"{w} {g:.1f} GFLOP/s = {100 * g / meta['peak_gflops']:.0f}% of peak"
                for w, g in mfu
            )
            + "."
        )
        lines.append("")
    data = {"meta": meta, "results": results, "targets": targets}
    return "\n".join(lines), data


def precompute_per_pair(meta: dict, workload: str, r: dict) -> float | None:
    """The reference precompute's seconds per train pair (results from before that field:
    its seconds over the workload's pairs)."""
    if r.get("reference_precompute_seconds_per_pair") is not None:
        return r["reference_precompute_seconds_per_pair"]
    seconds = r.get("reference_precompute_seconds")
    pairs = meta.get("workload_stats", {}).get(workload, {}).get("pairs")
    return seconds / pairs if seconds is not None and pairs else None


def phase_peak_lines(results: dict[str, dict[str, dict]]) -> list[str]:
    """MLX's peak memory of each phase of an mlx-dpo run (the peak reset between phases)."""
    rows = []
    for workload, by_tool in results.items():
        for tool, r in by_tool.items():
            if r.get("mlx_peak_training_mb") is None and r.get("mlx_peak_reference_mb") is None:
                continue
            rows.append(
                f"| {workload} | {tool} | {_fmt(r.get('mlx_peak_reference_mb'), 0)} | "
                f"{_fmt(r.get('mlx_peak_training_mb'), 0)} | {_fmt(r.get('mlx_peak_eval_mb'), 0)} |"
            )
    if not rows:
        return []
    return [
        "MLX peak memory (MB) of each phase of the mlx-dpo runs: the reference precompute and "
        "the evaluation are forward passes only; training is the steps.",
        "",
        "| workload | tool | reference precompute | training | evaluation |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def reference_free_lines(results: dict[str, dict[str, dict]]) -> list[str]:
    """What a reference-free loss saves against sigmoid DPO (issue 20): the training step's
    time per pair and MLX's peak memory, and the reference precompute it never runs."""
    rows = []
    for workload, by_tool in results.items():
        base = by_tool.get("mlx-dpo", {})
        if "pairs_per_second" not in base:
            continue
        for tool, r in by_tool.items():
            if tool not in (*REFERENCE_FREE_TOOLS, "mlx-dpo-live") or "pairs_per_second" not in r:
                continue
            per_pair = 1000 / r["pairs_per_second"]
            base_per_pair = 1000 / base["pairs_per_second"]
            base_precompute = base.get("reference_precompute_seconds")
            own = r.get("reference_precompute_seconds") or 0.0
            saved = None if base_precompute is None else base_precompute - own
            rows.append(
                f"| {workload} | {tool} | {per_pair:,.0f} ms | {base_per_pair:,.0f} ms | "
                f"{per_pair / base_per_pair:.2f}× | {_fmt(r.get('mlx_peak_memory_mb'), 0)} MB | "
                f"{_fmt(base.get('mlx_peak_memory_mb'), 0)} MB | "
                f"{_ratio(r.get('mlx_peak_memory_mb'), base.get('mlx_peak_memory_mb'))} | "
                f"{_fmt(saved, 1)} s |"
            )
    if not rows:
        return []
    return [
        "## Reference-free losses against sigmoid DPO",
        "",
        "Time per pair of a training step (the step's own time, pairs/s inverted) and MLX's "
        "peak memory, against mlx-dpo (sigmoid DPO, reference cached); the last column is the "
        "reference precompute of the train split that a reference-free run does not do "
        "(mlx-dpo-live computes its reference in every step instead).",
        "",
        "| workload | tool | time / pair | sigmoid DPO | ratio | MLX peak | sigmoid DPO | ratio "
        "| precompute saved |",
        "|" + "---|" * 9,
        *rows,
        "",
    ]


def merge_rounds(runs: list[dict]) -> dict:
    """One tool's result over interleaved rounds: its fastest round, the one the machine's
    other work disturbed least (its numbers stay consistent with each other), with every
    round's throughput, peak memory and load kept beside it."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    merged = dict(max(ok, key=lambda r: r["pairs_per_second"]))
    if len(runs) > 1:
        merged["rounds"] = [
            {k: r.get(k) for k in ("pairs_per_second", "mlx_peak_memory_mb",
                                    "reference_precompute_seconds", "load_average_1min", "error")}
            for r in runs
        ]  # fmt: skip
        merged["load_average_1min"] = [x for r in runs for x in r.get("load_average_1min", [])]
    return merged


def evaluate_targets(meta: dict, results: dict[str, dict[str, dict]]) -> list[dict]:
    out = []

    def value(workload, tool, key):
        r = results.get(workload, {}).get(tool, {})
        return r.get(key)

    def speed(tool, factor):
        ours, theirs = (
            value("W1", "mlx-dpo", "pairs_per_second"),
            value("W1", tool, "pairs_per_second"),
        )
        if ours and theirs:
            out.append(
                {
                    "target": f"W1 pairs/s ≥ {factor}× {tool}",
                    "measured": f"{ours / theirs:.2f}×",
                    "met": ours / theirs >= factor,
                }
            )

    speed("trl-precomputed", 2)
    speed("mlx-lm-lora", 4)
    rate = value("W1", "mlx-dpo", "model_flops_per_second")
    if rate:
        share = rate / 1e9 / meta["peak_gflops"]
        out.append(
            {
                "target": "W1 ≥ 60% of the measured float32 matmul peak",
                "measured": f"{100 * share:.0f}% ({rate / 1e9:.1f} of {meta['peak_gflops']:.1f} GFLOP/s)",
                "met": share >= 0.6,
            }
        )
    shared, rows = (
        value("W3", "mlx-dpo", "pairs_per_second"),
        value("W3", "mlx-dpo-rows", "pairs_per_second"),
    )
    if shared and rows and results["W3"]["mlx-dpo"].get("prefix_sharing"):
        out.append(
            {
                "target": "W3 prefix sharing ≥ 1.3× the rows layout",
                "measured": f"{shared / rows:.2f}×",
                "met": shared / rows >= 1.3,
            }
        )
    out += forward_pass_targets(meta, results)
    for workload, limit in (("W1", 0.5), ("W2", 0.3)):
        for key, label in (("mlx_peak_memory_mb", "MLX peak"), ("peak_rss_mb", "peak RSS")):
            ours, theirs = value(workload, "mlx-dpo", key), value(workload, "mlx-lm-lora", key)
            if ours and theirs:
                out.append(
                    {
                        "target": f"{workload} {label} ≤ {limit}× mlx-lm-lora",
                        "measured": f"{ours / theirs:.2f}× ({ours:,.0f} vs {theirs:,.0f} MB)",
                        "met": ours / theirs <= limit,
                    }
                )
    return out


def forward_pass_targets(meta: dict, results: dict[str, dict[str, dict]]) -> list[dict]:
    """Issue 21's targets: the reference precompute and the evaluation cost per pair at most a
    third of a training step's time per pair (W1, W3, W4); W4: mlx-dpo's precompute ≥ 1.3×
    TRL's speed, training ≥ 2× TRL-precomputed and ≥ 3× mlx-lm-lora; the forward-only
    passes' MLX peak at most the training steps'."""
    out = []
    for workload in ("W1", "W3", "W4"):
        r = results.get(workload, {}).get("mlx-dpo", {})
        if not r.get("pairs_per_second"):
            continue
        step_per_pair = 1 / r["pairs_per_second"]
        for label, per_pair in (
            ("reference precompute", precompute_per_pair(meta, workload, r)),
            ("eval", r.get("eval_seconds_per_pair")),
        ):
            if per_pair is not None:
                out.append(
                    {
                        "target": f"{workload} {label} per pair ≤ 1/3 of a training step per pair",
                        "measured": f"{per_pair / step_per_pair:.2f} ({per_pair:.3f} s vs "
                        f"{step_per_pair:.3f} s)",
                        "met": per_pair <= step_per_pair / 3,
                    }
                )
        for label, key in (("reference precompute", "mlx_peak_reference_mb"),
                           ("eval", "mlx_peak_eval_mb")):  # fmt: skip
            forward, training = r.get(key), r.get("mlx_peak_training_mb")
            if forward and training:
                out.append(
                    {
                        "target": f"{workload} MLX peak of the {label} (forward only) ≤ the "
                        "training steps'",
                        "measured": f"{forward:,.0f} vs {training:,.0f} MB",
                        "met": forward <= training,
                    }
                )
    w4 = results.get("W4", {})
    ours = w4.get("mlx-dpo", {})
    theirs = w4.get("trl-precomputed", {})
    a, b = precompute_per_pair(meta, "W4", ours), precompute_per_pair(meta, "W4", theirs)
    if a and b:
        out.append(
            {
                "target": "W4 reference precompute ≥ 1.3× TRL's speed",
                "measured": f"{b / a:.2f}× ({a:.3f} vs {b:.3f} s/pair)",
                "met": b / a >= 1.3,
            }
        )
    for tool, factor in (("trl-precomputed", 2), ("mlx-lm-lora", 3)):
        mine, other = ours.get("pairs_per_second"), w4.get(tool, {}).get("pairs_per_second")
        if mine and other:
            out.append(
                {
                    "target": f"W4 pairs/s ≥ {factor}× {tool}",
                    "measured": f"{mine / other:.2f}×",
                    "met": mine / other >= factor,
                }
            )
    return out


# ---------------------------------------------------------------------------------------------


def run_tool(args, w: str, tool: str, steps: int, log_dir: Path, suffix: str) -> dict:
    """One tool's run on one workload, with the load around it; its result (or the error)."""
    out = log_dir / f"{w}-{tool}{suffix}.json"
    log = log_dir / f"{w}-{tool}{suffix}.log"
    cmd = command_for(tool, args.work_dir / w, steps, args.warmup, out)
    print(f"{w} {tool}{suffix} ...", flush=True)
    load_start = round(os.getloadavg()[0], 2)
    timeout = args.timeout or DEFAULT_TIMEOUTS.get(w, 900)
    code, seconds = run_logged(cmd, log, timeout)
    load_end = round(os.getloadavg()[0], 2)
    if code != 0 or not out.exists():
        reason = "timed out" if code == 124 else f"exit code {code}"
        print(f"  failed ({reason}); log {log}:\n{tail(log)}")
        return {"error": reason, "log": str(log), "load_average_1min": [load_start, load_end]}
    r = json.loads(out.read_text())
    r["load_average_1min"] = [load_start, load_end]
    r["wall_seconds"] = seconds
    print(
        f"  {r['pairs_per_second']:.3f} pairs/s, {r['tokens_per_second']:.0f} tokens/s, "
        f"peak RSS {r['peak_rss_mb']:.0f} MB ({seconds:.0f}s, load {load_start} -> "
        f"{load_end})",
        flush=True,
    )
    return r


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default="W1,W2,W3")
    parser.add_argument(
        "--tools",
        help=f"default: {','.join(TOOLS)}; more: {','.join(EXTRA_TOOLS)} ("
        f"{','.join(QUANTIZED_TOOLS)} only on W4: slow on a CPU)",
    )
    parser.add_argument(
        "--steps",
        default=DEFAULT_STEPS,
        help="measured steps per tool: N for every workload, or W1=N,W2=M,... "
        f"(default {DEFAULT_STEPS}; W2 is there for memory, its steps are slow)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps, not measured")
    parser.add_argument("--work-dir", type=Path, default=HERE / ".work")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--name", help="results file name (default: date and time)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds per tool run (default 900; "
        + ", ".join(f"{w} {t}" for w, t in DEFAULT_TIMEOUTS.items())
        + ")",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the workloads")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the tools this many times, interleaved (tool order again each round), and "
        "report each tool's fastest round (every round kept in the JSON): fairer on a shared "
        "machine",
    )
    parser.add_argument(
        "--report-only",
        metavar="NAME",
        help="rebuild the report of run NAME from its per-tool results under the work "
        "folder's logs (runs nothing)",
    )
    args = parser.parse_args()
    if args.report_only:
        write_report(*rebuild(args.report_only, args.work_dir, args.results_dir), args)
        return

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    try:
        steps = parse_steps(args.steps, workloads)
    except ValueError:
        parser.error(f"--steps: expected N or W1=N,W2=M,..., got {args.steps!r}")
    if args.tools is None:
        args.tools = ",".join(TOOLS)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS] + [
        t for t in tools if t not in TOOLS + EXTRA_TOOLS
    ]
    if unknown:
        parser.error(
            f"unknown {', '.join(unknown)}; workloads: {', '.join(WORKLOADS)}; tools: "
            f"{', '.join(TOOLS + EXTRA_TOOLS)}"
        )
    missing = missing_dependencies(tools)
    if missing:
        print(
            f"missing benchmark dependencies: {', '.join(missing)}\n"
            "They are not mlx-dpo dependencies; install them into this environment with\n"
            "    pip install torch==2.13.0        # first, a CPU build (see benchmarks/README.md)\n"
            "    pip install -r benchmarks/requirements.txt\n"
            "or leave those tools out with --tools.",
            file=sys.stderr,
        )
        raise SystemExit(2)

    name = args.name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    log_dir = args.work_dir / "logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before: {load_before}")

    print(f"building workloads {', '.join(workloads)} in {args.work_dir} ...", flush=True)
    build_cmd = [sys.executable, str(HERE / "workloads.py"), "build", "--root", str(args.work_dir)]
    code, seconds = run_logged(
        build_cmd + (["--force"] if args.rebuild else []) + workloads, log_dir / "build.log", 1800
    )
    if code != 0:
        raise SystemExit(f"building the workloads failed:\n{tail(log_dir / 'build.log')}")
    print(f"  done in {seconds:.0f}s")
    stats = {
        w: json.loads((args.work_dir / w / "workload.json").read_text())["stats"] for w in workloads
    }

    logit_checks = {}
    if any(t.startswith("trl") for t in tools):
        for w in workloads:
            key = WORKLOADS[w].model_key
            if key not in logit_checks:
                check = verify_logits(args.work_dir / w / "model", log_dir)
                logit_checks[key] = check
                print(f"MLX vs PyTorch logits ({key}): max |Δ| {check['max_abs_difference']:.2e}")
                if not check["agree"]:
                    raise SystemExit("the HF folder does not reproduce the MLX model's logits")

    peaks = {"before": measure_peak(log_dir, "before")}
    print(f"float32 matmul peak: {peaks['before']['gflops']:.1f} GFLOP/s", flush=True)

    results: dict[str, dict[str, dict]] = {}
    for w in workloads:
        runs: dict[str, list[dict]] = {tool: [] for tool in tools}
        for round_index in range(args.rounds):
            for tool in tools:
                if tool in QUANTIZED_TOOLS and WORKLOADS[w].source == "tiny":
                    continue  # no 4-bit model (random weights, nothing to compare)
                suffix = f"-r{round_index + 1}" if args.rounds > 1 else ""
                runs[tool].append(run_tool(args, w, tool, steps[w], log_dir, suffix))
        results[w] = {tool: merge_rounds(runs[tool]) for tool in tools if runs[tool]}

    peaks["after"] = measure_peak(log_dir, "after")
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average after: {load_after}")
    meta = {
        "name": name,
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "engine": engine_state(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "versions": versions(),
        "steps": steps,
        "warmup": args.warmup,
        "workload_stats": stats,
        "logit_checks": logit_checks,
        "matmul_peak": peaks,
        # The higher of the two measurements: the fraction of peak is not flattered by a
        # busy moment.
        "peak_gflops": max(p["gflops"] for p in peaks.values()),
        "load_before": load_before,
        "load_after": load_after,
        "total_seconds": time.perf_counter() - started,
    }
    write_report(meta, results, args)


def write_report(meta: dict, results: dict[str, dict[str, dict]], args) -> None:
    name = meta["name"]
    text, data = report(meta, results)
    (args.results_dir / f"{name}.md").write_text(text + "\n")
    (args.results_dir / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print()
    print(text)
    print(f"written: {args.results_dir / name}.md and .json")


def rebuild(
    name: str, work_dir: Path, results_dir: Path
) -> tuple[dict, dict[str, dict[str, dict]]]:
    """A finished run's meta and results, its rounds merged again from the per-tool files
    (`W1-mlx-dpo-r2.json`) with each file's load from the saved results."""
    saved = json.loads((results_dir / f"{name}.json").read_text())
    log_dir = work_dir / "logs" / name
    results: dict[str, dict[str, dict]] = {}
    for workload, by_tool in saved["results"].items():
        results[workload] = {}
        for tool, old in by_tool.items():
            rounds = old.get("rounds") or [old]
            runs = []
            for index, kept in enumerate(rounds):
                suffix = f"-r{index + 1}" if "rounds" in old else ""
                path = log_dir / f"{workload}-{tool}{suffix}.json"
                run = json.loads(path.read_text()) if path.exists() else {"error": "missing"}
                run["load_average_1min"] = kept.get("load_average_1min", [])
                runs.append(run)
            results[workload][tool] = merge_rounds(runs)
    return saved["meta"], results


if __name__ == "__main__":
    main()
