"""`mlx-dpo data audit`: what a preference data set holds before anything trains on it.

Counts per split, invalid records (with the first few problems), chosen == rejected,
duplicate records, repeated prompts and prompts shared between splits, prompt/response
lengths of chosen vs rejected, the length bias the DPO literature warns about, and how many
pairs a max_length would cut. Unlike training, the audit never stops at a bad record: it
reads leniently and reports.

Lengths are tokens exactly as training counts them (data.tokenize_record: the chat template,
end-of-turn tokens included) when a tokenizer is given, else whitespace-separated words. The
length-bias verdict is mlx_dpo.health's own (HealthMonitor.length_bias with the same
thresholds), so the audit and the training run's health warning always agree.

Plain arguments only; `mlx-dpo data audit` (mlx_dpo/cli/data.py) reads the flags.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlx_dpo.config import HealthThresholds
from mlx_dpo.data import (
    PreferenceRecord,
    TemplateRefused,
    parse_messages,
    tokenize_record,
    truncate,
    validate_record,
)
from mlx_dpo.errors import UserError
from mlx_dpo.health import HealthMonitor
from mlx_dpo.sources import read_split, resolve_source

SHOWN_PROBLEMS = 5


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0, "min": 0}
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "p95": float(np.percentile(array, 95)),
        "max": int(array.max()),
        "min": int(array.min()),
    }


def _identical_responses(value: Any, fields: dict[str, str]) -> bool:
    """A record that is valid except that chosen and rejected are the same."""
    if not isinstance(value, dict):
        return False
    chosen, rejected = fields.get("chosen", "chosen"), fields.get("rejected", "rejected")
    if chosen not in value or rejected not in value:
        return False
    a, problem_a = parse_messages(value[chosen], chosen, "assistant")
    b, problem_b = parse_messages(value[rejected], rejected, "assistant")
    return problem_a is None and problem_b is None and a == b


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, ensure_ascii=False)


def _words(messages: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def _lengths(record: PreferenceRecord, tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    if tokenizer is not None:
        prompt, chosen, rejected, _ = tokenize_record(record, tokenizer)
        return prompt, chosen, rejected
    return (
        [0] * _words(record.prompt),
        [0] * _words(record.chosen),
        [0] * _words(record.rejected),
    )


@dataclass
class _Lengths:
    """Token lengths of a split's pairs, as training would see them, and what max_length cuts."""

    prompt: list[int] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    same_tokens: int = 0  # pairs whose answers tokenize the same: training refuses them
    refused: int = 0  # pairs the chat template refuses
    cut: dict[str, int] = field(
        default_factory=lambda: {"pairs": 0, "prompt": 0, "response": 0, "identical_after_cut": 0}
    )


def _validated(raw: list, fields: dict[str, str], problems: list[str]):
    """The rows that are pairs, and how many were identical answers or invalid (their
    problems appended to `problems`)."""
    records: list[PreferenceRecord] = []
    identical = invalid = 0
    for source, value in raw:
        record, record_problems = validate_record(source, value, fields)
        if record is not None:
            records.append(record)
        elif _identical_responses(value, fields):
            identical += 1
        else:
            invalid += 1
            problems += record_problems
    return records, identical, invalid


def _token_lengths(
    records: list[PreferenceRecord], tokenizer: Any, max_length: int | None, problems: list[str]
) -> _Lengths:
    found = _Lengths()
    for record in records:
        try:
            prompt, chosen, rejected = _lengths(record, tokenizer)
        except TemplateRefused as err:
            found.refused += 1
            problems.append(f"{record.source}: the chat template refuses this conversation ({err})")
            continue
        if tokenizer is not None and chosen == rejected:
            found.same_tokens += 1
            continue
        found.prompt.append(len(prompt))
        found.chosen.append(len(chosen))
        found.rejected.append(len(rejected))
        if tokenizer is not None and max_length is not None:
            _, kept_chosen, kept_rejected, prompt_cut, response_cut = truncate(
                prompt, chosen, rejected, max_length
            )
            found.cut["pairs"] += bool(prompt_cut or response_cut)
            found.cut["prompt"] += bool(prompt_cut)
            found.cut["response"] += bool(response_cut)
            found.cut["identical_after_cut"] += kept_chosen == kept_rejected
    return found


def audit_split(
    files: list,
    fields: dict[str, str],
    tokenizer: Any = None,
    max_length: int | None = None,
    thresholds: HealthThresholds | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """The figures of one split (its files: sources.DataFile), and the set of its prompts
    (for cross-split overlap). Rows are read in the data's shape, as training reads them."""
    shape, raw, problems = read_split(files, fields)
    unparsed = len(problems)  # lines that are not JSON (or not UTF-8), rows the shape refuses
    records, identical, invalid = _validated(raw, shape.fields, problems)
    record_keys = Counter(_key(r.prompt, r.chosen, r.rejected) for r in records)
    prompt_keys = Counter(_key(r.prompt) for r in records)
    repeated = {k: n for k, n in prompt_keys.items() if n > 1}
    lengths = _token_lengths(records, tokenizer, max_length, problems)

    pairs = len(lengths.chosen)
    chosen_longer = sum(c > r for c, r in zip(lengths.chosen, lengths.rejected, strict=True))
    rejected_longer = sum(c < r for c, r in zip(lengths.chosen, lengths.rejected, strict=True))
    mean_chosen = float(np.mean(lengths.chosen)) if pairs else 0.0
    mean_rejected = float(np.mean(lengths.rejected)) if pairs else 0.0
    findings = HealthMonitor(thresholds).length_bias(
        chosen_longer / pairs if pairs else 0.0, mean_chosen, mean_rejected, pairs
    )
    result = {
        "file": ", ".join(str(f.path) for f in files),
        "shape": shape.name,
        "records": len(raw) + unparsed,
        "valid_pairs": len(records),
        "invalid_records": unparsed + invalid + lengths.refused,
        "problems": problems[:SHOWN_PROBLEMS],
        "chosen_equals_rejected": identical,
        "same_tokens": lengths.same_tokens,
        "duplicate_records": sum(n - 1 for n in record_keys.values()),
        "repeated_prompts": len(repeated),
        "records_with_repeated_prompt": sum(repeated.values()),
        "pairs": pairs,
        "lengths": {
            "prompt": length_stats(lengths.prompt),
            "chosen": length_stats(lengths.chosen),
            "rejected": length_stats(lengths.rejected),
        },
        "chosen_longer_share": chosen_longer / pairs if pairs else 0.0,
        "rejected_longer_share": rejected_longer / pairs if pairs else 0.0,
        "mean_length_ratio": mean_chosen / mean_rejected if mean_rejected else None,
        # The verdict is the health check's (same thresholds); the words are the audit's,
        # which names the split and the length unit.
        "length_bias": bool(findings),
        "truncation": None
        if max_length is None or tokenizer is None
        else {"max_length": max_length, **lengths.cut},
        "pair_lengths": {
            "prompt": lengths.prompt,
            "chosen": lengths.chosen,
            "rejected": lengths.rejected,
        },
    }
    return result, set(prompt_keys)


def audit(
    data_path: str | Path,
    tokenizer: Any = None,
    max_length: int | None = None,
    fields: dict[str, str] | None = None,
    thresholds: HealthThresholds | None = None,
    config: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Audit a data folder (train/valid/test) or one file. Never raises on bad records (it
    counts them); raises UserError only when there is no data to read. The figures of each
    split are under result["splits"][name]; result["train"] is the train split's (the one
    the trainer's length-bias check uses) and result["warnings"] lists what needs a look."""
    source = resolve_source(str(data_path), config, revision)
    splits: dict[str, dict] = {}
    prompts: dict[str, set[str]] = {}
    for name, files in source.splits.items():
        splits[name], prompts[name] = audit_split(
            files, fields or {}, tokenizer, max_length, thresholds
        )
    # Evaluation splits are compared with the train split (train, or train_prefs and the like).
    train_name = "train" if "train" in prompts else next((n for n in prompts if "train" in n), None)
    overlap = {
        name: len(prompts[name] & prompts[train_name])
        for name in prompts
        if train_name and name != train_name and "train" not in name
    }
    result = {
        "data": str(data_path),
        "length_unit": "tokens" if tokenizer is not None else "words",
        "max_length": max_length,
        "splits": splits,
        "prompts_shared_with_train": overlap,
        "thresholds": {
            "length_bias_share": (thresholds or HealthThresholds()).length_bias_share,
            "length_bias_ratio": (thresholds or HealthThresholds()).length_bias_ratio,
            "length_bias_min_pairs": (thresholds or HealthThresholds()).length_bias_min_pairs,
        },
    }
    result["train"] = splits.get(train_name) if train_name else None
    result["warnings"] = _warnings(result)
    return result


def _warnings(result: dict) -> list[str]:
    warnings = []
    for name, s in result["splits"].items():
        if s["invalid_records"]:
            warnings.append(
                f"{name}: {s['invalid_records']} invalid record(s); training refuses the file "
                "until they are fixed"
            )
        if s["chosen_equals_rejected"]:
            warnings.append(
                f"{name}: {s['chosen_equals_rejected']} pair(s) with chosen == rejected "
                "(nothing to prefer; training refuses them)"
            )
        if s["same_tokens"]:
            warnings.append(
                f"{name}: {s['same_tokens']} pair(s) whose chosen and rejected tokenize the same"
            )
        if s["duplicate_records"]:
            warnings.append(
                f"{name}: {s['duplicate_records']} duplicate record(s) (the same prompt, chosen "
                "and rejected): they count several times"
            )
        if s["length_bias"]:
            c, r = s["lengths"]["chosen"]["mean"], s["lengths"]["rejected"]["mean"]
            warnings.append(
                f"{name}: length bias: the chosen response is longer in "
                f"{s['chosen_longer_share']:.0%} of {s['pairs']} pairs (mean {c:.1f} vs {r:.1f} "
                f"{result['length_unit']}, {s['mean_length_ratio']:.2f}x); DPO can learn "
                "'longer is better' instead of the preference you mean"
            )
        cut = s["truncation"]
        if cut and cut["pairs"]:
            warnings.append(
                f"{name}: {cut['pairs']} pair(s) longer than max_length {cut['max_length']} "
                "would be cut"
            )
    for name, count in result["prompts_shared_with_train"].items():
        if count:
            warnings.append(f"{name}: {count} prompt(s) also in train (evaluation leaks)")
    return warnings


def length_bias_figures(split: dict) -> dict[str, float]:
    """An audited split's figures as HealthMonitor.length_bias takes them (keyword args)."""
    return {
        "chosen_longer_share": split["chosen_longer_share"],
        "mean_chosen_tokens": split["lengths"]["chosen"]["mean"],
        "mean_rejected_tokens": split["lengths"]["rejected"]["mean"],
        "pairs": split["pairs"],
    }


def summary(result: dict) -> dict:
    """The result without the per-pair length lists (they are for the plot), for --json."""
    out = dict(result)
    out["splits"] = {
        name: {k: v for k, v in s.items() if k != "pair_lengths"}
        for name, s in result["splits"].items()
    }
    out["train"] = out["splits"].get("train")
    return out


# ---------------------------------------------------------------------------------------------
# The readable report


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]


def format_report(result: dict, model: str | None = None) -> str:
    """The audit as a person reads it: what counts as length, then one section each for
    records, lengths, length bias, cuts, shared prompts, problems and warnings."""
    splits = result["splits"]
    shapes = {name: s["shape"] for name, s in splits.items()}
    if len(set(shapes.values())) == 1:
        shape = f"shape: {next(iter(shapes.values()))}"
    else:
        shape = "shapes: " + ", ".join(f"{n} {v}" for n, v in shapes.items())
    if result["length_unit"] == "tokens":
        unit = f"lengths in tokens ({model or 'the given tokenizer'}, chat template applied)"
    else:
        unit = "lengths in whitespace-separated words (pass --model for exact token counts)"
    lines = [f"data: {result['data']}", shape, unit]
    lines += ["", "records", *_records_table(splits)]
    lines += ["", f"lengths ({result['length_unit']})", *_lengths_table(splits)]
    lines += ["", *_length_bias_section(splits, result["thresholds"])]
    lines += _cuts_section(splits, result["max_length"])
    if result["prompts_shared_with_train"]:
        shared = ", ".join(f"{k} {v}" for k, v in result["prompts_shared_with_train"].items())
        lines += ["", f"prompts also in train: {shared}"]
    problems = [p for s in splits.values() for p in s["problems"]]
    if problems:
        lines += ["", "first problems", *[f"  {p}" for p in problems]]
    lines += [""]
    if result["warnings"]:
        lines += ["warnings"] + [f"  - {w}" for w in result["warnings"]]
    else:
        lines.append("no warnings")
    return "\n".join(lines)


def _records_table(splits: dict[str, dict]) -> list[str]:
    return _table(
        [
            "split",
            "records",
            "valid",
            "invalid",
            "chosen=rejected",
            "duplicates",
            "repeated prompts",
        ],
        [
            [
                name,
                s["records"],
                s["valid_pairs"],
                s["invalid_records"],
                s["chosen_equals_rejected"],
                s["duplicate_records"],
                f"{s['repeated_prompts']} ({s['records_with_repeated_prompt']} records)",
            ]
            for name, s in splits.items()
        ],
    )


def _lengths_table(splits: dict[str, dict]) -> list[str]:
    rows = []
    for name, s in splits.items():
        for part in ("prompt", "chosen", "rejected"):
            st = s["lengths"][part]
            rows.append(
                [
                    f"{name} {part}",
                    f"{st['mean']:.1f}",
                    f"{st['median']:.0f}",
                    f"{st['p95']:.0f}",
                    st["max"],
                ]
            )
    return _table(["", "mean", "median", "p95", "max"], rows)


def _length_bias_section(splits: dict[str, dict], t: dict[str, Any]) -> list[str]:
    lines = [
        f"length bias (warned at chosen longer >= {t['length_bias_share']:.0%} and mean ratio "
        f">= {t['length_bias_ratio']}, from {t['length_bias_min_pairs']} pairs)",
    ]
    rows = []
    for name, s in splits.items():
        ratio = s["mean_length_ratio"]
        if s["length_bias"]:
            verdict = "WARNING"
        elif s["pairs"] < t["length_bias_min_pairs"]:
            verdict = "too few pairs to judge"
        else:
            verdict = "ok"
        rows.append(
            [
                name,
                f"{s['chosen_longer_share']:.0%}",
                f"{s['rejected_longer_share']:.0%}",
                "-" if ratio is None else f"{ratio:.2f}",
                verdict,
            ]
        )
    return lines + _table(
        ["split", "chosen longer", "rejected longer", "mean ratio", "verdict"], rows
    )


def _cuts_section(splits: dict[str, dict], max_length: int | None) -> list[str]:
    cuts = [(name, s["truncation"]) for name, s in splits.items() if s["truncation"]]
    if cuts:
        return [
            "",
            f"cut at max_length {cuts[0][1]['max_length']}",
            *_table(
                ["split", "pairs cut", "prompts cut", "responses cut"],
                [[name, c["pairs"], c["prompt"], c["response"]] for name, c in cuts],
            ),
        ]
    if max_length is not None:
        return ["", "cut at max_length: needs --model (token counts)"]
    return []


# ---------------------------------------------------------------------------------------------
# The length histogram (Pillow: one small, well-kept library; no plotting stack needed)

CHOSEN_COLOUR = (46, 139, 87)
REJECTED_COLOUR = (200, 60, 60)


def _histogram(values: list[float], edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=edges)
    return counts


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = max(high - low, 1e-9)
    raw = span / count
    step = 10 ** np.floor(np.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    start = np.ceil(low / step) * step
    return [float(v) for v in np.arange(start, high + step * 1e-6, step)]


def _panel(draw, font, box, title, series, edges, x_label, zero_line=False) -> None:
    """Bars of each (label, colour, counts) over `edges`, side by side within a bin."""
    left, top, right, bottom = box
    plot = (left + 50, top + 24, right - 10, bottom - 36)
    px0, py0, px1, py1 = plot
    draw.text((left + 50, top + 2), title, fill=(20, 20, 20), font=font)
    # Headroom above the highest bar keeps the legend clear of the bars.
    top_count = 1.25 * max(1, max(int(c.max()) if len(c) else 0 for _, _, c in series))
    x0, x1 = float(edges[0]), float(edges[-1])

    def x_of(v: float) -> float:
        return px0 + (v - x0) / max(x1 - x0, 1e-9) * (px1 - px0)

    def y_of(c: float) -> float:
        return py1 - c / top_count * (py1 - py0)

    for tick in _nice_ticks(0, top_count / 1.25):
        y = y_of(tick)
        draw.line([(px0, y), (px1, y)], fill=(225, 225, 225))
        draw.text((left + 4, y - 7), f"{tick:g}", fill=(60, 60, 60), font=font)
    for tick in _nice_ticks(x0, x1):
        x = x_of(tick)
        draw.line([(x, py1), (x, py1 + 4)], fill=(60, 60, 60))
        draw.text((x - 10, py1 + 6), f"{tick:g}", fill=(60, 60, 60), font=font)
    for k, (_, colour, counts) in enumerate(series):
        for i, c in enumerate(counts):
            if c:
                a, b = x_of(edges[i]), x_of(edges[i + 1])
                share = (b - a) / len(series)
                draw.rectangle(
                    [a + k * share + 1, y_of(c), a + (k + 1) * share - 1, py1],
                    fill=(*colour, 150),
                    outline=(*colour, 255),
                )
    if zero_line and x0 < 0 < x1:
        draw.line([(x_of(0), py0), (x_of(0), py1)], fill=(40, 40, 40), width=2)
    draw.line([(px0, py1), (px1, py1)], fill=(60, 60, 60))
    draw.line([(px0, py0), (px0, py1)], fill=(60, 60, 60))
    draw.text(((px0 + px1) / 2 - 60, py1 + 20), x_label, fill=(40, 40, 40), font=font)
    legend_x = px1 - 150
    for i, (label, colour, _) in enumerate(series):
        y = py0 + 4 + 18 * i
        draw.rectangle([legend_x, y, legend_x + 12, y + 12], fill=(*colour, 160))
        draw.text((legend_x + 18, y - 1), label, fill=(20, 20, 20), font=font)


def plot_lengths(result: dict, path: str | Path, split: str | None = None) -> Path:
    """A PNG with two histograms of one split (train by default): response lengths of chosen
    and rejected, and the per-pair difference chosen - rejected (right of 0: chosen longer)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError("--plot needs Pillow: pip install pillow") from None
    name = split or ("train" if "train" in result["splits"] else next(iter(result["splits"])))
    s = result["splits"][name]
    chosen, rejected = s["pair_lengths"]["chosen"], s["pair_lengths"]["rejected"]
    if not chosen:
        raise UserError(f"{name}: no valid pairs to plot")
    unit = result["length_unit"]
    width, height = 900, 700
    image = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    overlay = Image.new("RGBA", (width, height), (255, 255, 255, 0))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default(size=13)
    title_font = ImageFont.load_default(size=16)
    ratio = s["mean_length_ratio"]
    draw.text(
        (20, 12),
        f"{name}: {s['pairs']} pairs; chosen longer in {s['chosen_longer_share']:.0%}, mean "
        f"chosen/rejected {'-' if ratio is None else f'{ratio:.2f}'}"
        + ("  (length bias!)" if s["length_bias"] else ""),
        fill=(0, 0, 0),
        font=title_font,
    )
    top = max(max(chosen), max(rejected))
    edges = np.linspace(0, top + 1, min(40, top + 1) + 1)
    _panel(
        draw,
        font,
        (20, 40, width - 20, 370),
        f"response length ({unit})",
        [
            (f"chosen (mean {np.mean(chosen):.1f})", CHOSEN_COLOUR, _histogram(chosen, edges)),
            (
                f"rejected (mean {np.mean(rejected):.1f})",
                REJECTED_COLOUR,
                _histogram(rejected, edges),
            ),
        ],
        edges,
        f"{unit} per response",
    )
    difference = [c - r for c, r in zip(chosen, rejected, strict=True)]
    reach = max(1, max(abs(d) for d in difference))
    edges = np.linspace(-reach - 0.5, reach + 0.5, min(41, 2 * reach + 1) + 1)
    _panel(
        draw,
        font,
        (20, 380, width - 20, height - 10),
        f"chosen - rejected ({unit}); right of the line: chosen longer",
        [("pairs", (70, 110, 200), _histogram(difference, edges))],
        edges,
        f"difference in {unit}",
        zero_line=True,
    )
    image = Image.alpha_composite(image, overlay).convert("RGB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
