"""`mlx-dpo compare`: answers of the reference and of the trained policy, side by side.

One model in memory: the reference is the same weights with the adapter switched off
(model.reference_mode), exactly as in training — the base, or base + the init adapter for a
run that started from one. Prompts are formatted as training formatted them (the chat
template with the generation prompt, or the plain text without one), and the answers come
from mlx_dpo/generation.py (mlx-lm's own generation and sampler; loading a run's adapters and
its reference is there too): greedy by default, sampled with a seed when temp > 0 (the same
seed for both sides, so they draw the same random stream).

The flags of `mlx-dpo compare` are read in mlx_dpo/cli/compare.py; these functions take plain
arguments. Only generating needs MLX, so generation.py is imported there: the CLI imports this
module for every command, `--help` included.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from mlx_dpo.data import (
    Message,
    PreferenceRecord,
    plain_text,
    read_records,
    split_files,
)
from mlx_dpo.errors import UserError
from mlx_dpo.events import CONFIG_FILE

DEFAULT_MAX_TOKENS = 64
DEFAULT_LIMIT = 8


def compare_answers(
    session: Any,
    prompts: list[list[Message]],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temp: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """[{prompt, reference, policy}] for each prompt. `session` is a trainer Session or a
    generation.Policy: anything with .model, .tokenizer and (optionally) .frozen_adapter."""
    from mlx_dpo.generation import sample_answer
    from mlx_dpo.model import reference_mode
    from mlx_dpo.sampling import Sampling

    # top_p 0: off, as mlx-lm's make_sampler(temp=temp) has it.
    sampling = Sampling(temp, 0.0, max_tokens)

    model, tokenizer = session.model, session.tokenizer
    frozen = getattr(session, "frozen_adapter", None)
    was_training = model.training
    model.eval()  # no LoRA dropout while generating
    results = []
    try:
        for messages in prompts:
            with reference_mode(model, frozen):
                reference = sample_answer(model, tokenizer, messages, sampling, seed).text
            policy = sample_answer(model, tokenizer, messages, sampling, seed).text
            results.append({"prompt": messages, "reference": reference, "policy": policy})
    finally:
        model.train(was_training)
    return results


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.strip(), b.strip(), autojunk=False).ratio()


def closer_to(answer: str, chosen: str, rejected: str) -> dict[str, Any]:
    """Which response of the pair an answer resembles more (character-level similarity, 0..1)."""
    c, r = similarity(answer, chosen), similarity(answer, rejected)
    label = "chosen" if c > r else "rejected" if r > c else "neither"
    return {"closer_to": label, "chosen_similarity": c, "rejected_similarity": r}


def response_text(messages: list[Message]) -> str:
    """A response as one text, as a pair shows it (the messages' contents, a blank line apart)."""
    return plain_text(messages)


def compare_records(
    session: Any,
    records: list[PreferenceRecord],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temp: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """compare_answers on the prompts of preference pairs, with the pair's chosen and
    rejected responses and which of them each answer is closer to."""
    rows = compare_answers(session, [r.prompt for r in records], max_tokens, temp, seed)
    for row, record in zip(rows, records, strict=True):
        chosen, rejected = response_text(record.chosen), response_text(record.rejected)
        row.update(source=record.source, chosen=chosen, rejected=rejected)
        row["reference_match"] = closer_to(row["reference"], chosen, rejected)
        row["policy_match"] = closer_to(row["policy"], chosen, rejected)
    return rows


def read_prompts(data: str, split: str | None, limit: int, fields: dict) -> list[PreferenceRecord]:
    """The first `limit` records of a data file, or of a split of a data folder (default:
    test, else valid, else train)."""
    files = split_files(data)
    if split is None:
        split = next(s for s in ("test", "valid", "train") if s in files)
    if split not in files:
        raise UserError(f"{data}: no {split} split")
    return read_records(files[split], fields)[:limit]


def run_fields(adapter_path: str) -> dict[str, str]:
    """The run's field-name mapping (in its config.yaml; adapter_config.json leaves it out),
    so --data reads the records as training did."""
    path = Path(adapter_path) / CONFIG_FILE
    try:
        fields = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("fields")
    except (OSError, ValueError, RecursionError, yaml.YAMLError, AttributeError):
        return {}  # ValueError: not UTF-8, or a number past Python's limit on digits
    return fields if isinstance(fields, dict) else {}


def user_prompts(texts: list[str], system: str | None = None) -> list[list[Message]]:
    """One conversation per text: the text as the user's message, after `system` (as the
    data's 'system' field puts it) when there is one."""
    before = [{"role": "system", "content": system}] if system else []
    return [[*before, {"role": "user", "content": text}] for text in texts]


# ---------------------------------------------------------------------------------------------
# Output


def _block(label: str, text: str, note: str = "") -> str:
    lines = text.strip().splitlines() or [""]
    out = [f"  {label:<10} {lines[0]}"] + [f"  {'':<10} {line}" for line in lines[1:]]
    if note:
        out.append(f"  {'':<10} ({note})")
    return "\n".join(out)


def _match_note(match: dict | None) -> str:
    if not match:
        return ""
    return (
        f"closer to {match['closer_to']}: similarity {match['chosen_similarity']:.2f} to "
        f"chosen, {match['rejected_similarity']:.2f} to rejected"
    )


def format_comparison(rows: list[dict], reference_name: str = "base") -> str:
    parts = []
    for number, row in enumerate(rows, start=1):
        prompt = "\n".join(f"[{m['role']}] {m['content']}" for m in row["prompt"])
        header = f"── {number}/{len(rows)}" + (f"  {row['source']}" if "source" in row else "")
        parts.append(
            "\n".join(
                [
                    header,
                    _block("prompt", prompt),
                    _block("reference", row["reference"], _match_note(row.get("reference_match"))),
                    _block("policy", row["policy"], _match_note(row.get("policy_match"))),
                ]
                + (
                    [_block("chosen", row["chosen"]), _block("rejected", row["rejected"])]
                    if "chosen" in row
                    else []
                )
            )
        )
    if rows and "policy_match" in rows[0]:
        policy = sum(r["policy_match"]["closer_to"] == "chosen" for r in rows)
        reference = sum(r["reference_match"]["closer_to"] == "chosen" for r in rows)
        parts.append(
            f"closer to chosen: policy {policy}/{len(rows)}, reference ({reference_name}) "
            f"{reference}/{len(rows)}"
        )
    changed = sum(r["policy"].strip() != r["reference"].strip() for r in rows)
    parts.append(f"answers that changed: {changed}/{len(rows)}")
    return "\n\n".join(parts)
