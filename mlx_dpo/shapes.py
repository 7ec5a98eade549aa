"""The shapes preference data is published in, told apart by their columns, and normalised to
our records ({prompt, chosen, rejected, system?}, strings or message lists; data.validate_record
then checks them as it checks any record).

    standard                 prompt, chosen, rejected strings (+ system): TRL's standard form
    conversational           prompt a list of messages; chosen/rejected assistant messages
    implicit-prompt          chosen and rejected are whole conversations (or texts) sharing a
                             prefix; the prompt is the longest common prefix, as TRL's
                             extract_prompt takes it (argilla/dpo-mix-7k,
                             trl-lib/ultrafeedback_binarized)
    conversations+prompt     the same, with a redundant prompt string beside them
                             (mlabonne/orpo-dpo-mix-40k: source, prompt, question)
    ultrafeedback-binarized  prompt + whole conversations + score_chosen/score_rejected
                             (HuggingFaceH4/ultrafeedback_binarized)
    hh-text                  Anthropic HH: chosen/rejected are "\\n\\nHuman: ...\\n\\nAssistant: ..."
                             texts; the prompt is every turn before the last assistant turn
    question+system          question (+ system) with chosen/rejected strings (Intel/orca_dpo_pairs)
    fields                   the config's `fields:` mapping names the columns (always wins)

Columns that fit none of these, or more than one, are a UserError that lists the columns found
and a `fields:` mapping that would work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mlx_dpo.errors import UserError

HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    # The columns a row needs (a parquet reader reads only these); None: every column.
    columns: tuple[str, ...] | None
    # row -> a record for data.validate_record, or a problem (a string) for this row.
    normalise: Callable[[dict], dict | str]
    # The field mapping data.validate_record applies to the normalised record.
    fields: dict[str, str]


def _identity(row: dict) -> dict:
    return row


def _is_conversation(value: Any) -> bool:
    """A list of messages that holds more than assistant turns: a whole conversation."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) for m in value)
        and any(m.get("role") != "assistant" for m in value)
    )


def common_prefix_length(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def split_conversations(chosen: Any, rejected: Any) -> dict | str:
    """Implicit prompt: the longest shared prefix of two conversations (message lists, or
    texts) is the prompt, the rest of each is its response (TRL's extract_prompt)."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = common_prefix_length(chosen, rejected)
        # A shared space before the first differing word belongs to the responses.
        if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
            n -= 1
        return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        return "'chosen' and 'rejected' must both be conversations (lists of messages)"
    n = common_prefix_length(chosen, rejected)
    if n == 0:
        return "'chosen' and 'rejected' share no prompt (their first messages differ)"
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def _implicit(row: dict) -> dict | str:
    return split_conversations(row.get("chosen"), row.get("rejected"))


def hh_turns(text: str) -> list[dict[str, str]] | None:
    """Anthropic HH text -> messages, or None when the text has no Human/Assistant turns."""
    parts = HH_TURN.split(text)
    if len(parts) < 3:
        return None
    return [
        {"role": HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _hh(row: dict) -> dict | str:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "'chosen' and 'rejected' must be HH texts (strings)"
    turns = {}
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        messages = hh_turns(text)
        if not messages or messages[-1]["role"] != "assistant":
            return f"field '{name}': no final '\\n\\nAssistant:' turn"
        turns[name] = messages
    prompt = turns["chosen"][:-1]
    if turns["rejected"][:-1] != prompt:
        return "'chosen' and 'rejected' differ before their last assistant turn"
    if not prompt:
        return "no Human turn before the last assistant turn"
    return {"prompt": prompt, "chosen": turns["chosen"][-1:], "rejected": turns["rejected"][-1:]}


def _question(row: dict) -> dict:
    record = {"prompt": row.get("question"), "chosen": row.get("chosen")}
    record["rejected"] = row.get("rejected")
    if isinstance(row.get("system"), str):
        record["system"] = row["system"]
    return record


SHAPES = {
    "standard": ("TRL standard: prompt, chosen, rejected strings", ("prompt", "chosen", "rejected", "system"), _identity),
    "conversational": ("TRL conversational: prompt messages, assistant responses", ("prompt", "chosen", "rejected", "system"), _identity),
    "implicit-prompt": ("whole conversations; the prompt is their common prefix", ("chosen", "rejected"), _implicit),
    "conversations+prompt": ("whole conversations beside a prompt string; the prompt is their common prefix", ("chosen", "rejected"), _implicit),
    "ultrafeedback-binarized": ("UltraFeedback binarized: prompt, whole conversations, score_chosen/score_rejected", ("chosen", "rejected"), _implicit),
    "hh-text": ("Anthropic HH text: the prompt is every turn before the last Assistant turn", ("chosen", "rejected"), _hh),
    "question+system": ("question (+ system), chosen and rejected strings", ("question", "system", "chosen", "rejected"), _question),
}  # fmt: skip


def shape(name: str) -> Shape:
    description, columns, normalise = SHAPES[name]
    return Shape(name, description, columns, normalise, {})


def detect_shape(columns: Iterable[str], sample: dict | None, fields: dict[str, str]) -> Shape:
    """The shape of rows with these columns (`sample`: one row, to tell strings from
    message lists). A non-empty `fields` mapping always wins."""
    columns = list(columns)
    present = set(columns)
    if fields:
        mapped = {key: fields.get(key, key) for key in ("prompt", "chosen", "rejected", "system")}
        missing = [mapped[k] for k in ("prompt", "chosen", "rejected") if mapped[k] not in present]
        if missing:
            raise UserError(
                f"the 'fields' mapping names column(s) {', '.join(map(repr, missing))} that the "
                f"data does not have; columns found: {', '.join(columns)}"
            )
        description = ", ".join(f"{k} <- {v}" for k, v in fields.items())
        wanted = tuple(v for v in mapped.values() if v in present)
        return Shape("fields", f"mapped by 'fields' ({description})", wanted, _identity, fields)
    sample = sample or {}
    names = _candidates(present, sample)
    if len(names) == 1:
        return shape(names[0])
    found = ", ".join(columns) or "(none)"
    if len(names) > 1:
        raise UserError(
            f"the columns fit more than one shape ({', '.join(names)}); columns found: {found}. "
            f"Say which is which with a 'fields' mapping in the config, e.g. {suggest_fields(columns)}"
        )
    raise UserError(
        f"unknown data shape: columns found: {found}. Name the prompt, chosen and rejected "
        f"columns with a 'fields' mapping in the config, e.g. {suggest_fields(columns)}"
    )


def _candidates(present: set[str], sample: dict) -> list[str]:
    if not {"chosen", "rejected"} <= present:
        # Our own records with a field missing: validation names the record and the field.
        return ["standard"] if "prompt" in present else []
    chosen = sample.get("chosen")
    if _is_conversation(chosen):
        if "prompt" in present and {"score_chosen", "score_rejected"} <= present:
            return ["ultrafeedback-binarized"]
        if "prompt" in present:
            return ["conversations+prompt"]
        return ["implicit-prompt"]
    prompts = [name for name in ("prompt", "question") if name in present]
    if len(prompts) > 1:
        return ["standard", "question+system"]
    if prompts == ["prompt"]:
        values = (sample.get("prompt"), chosen, sample.get("rejected"))
        return ["standard" if all(isinstance(v, str) for v in values) else "conversational"]
    if prompts == ["question"]:
        return ["question+system"]
    if isinstance(chosen, str) and hh_turns(chosen):
        return ["hh-text"]
    if isinstance(chosen, str | list):
        return ["implicit-prompt"]
    return []


def suggest_fields(columns: list[str]) -> str:
    """A `fields:` mapping guessed from column names, for the error message."""
    hints = {
        "prompt": ("prompt", "question", "instruction", "input", "query"),
        "chosen": ("chosen", "prefer", "accept", "good", "win"),
        "rejected": ("rejected", "reject", "dispref", "bad", "los"),
    }
    mapping = {}
    for key, words in hints.items():
        match = next(
            (c for w in words for c in columns if w in c.lower() and c not in mapping.values()),
            None,
        )
        mapping[key] = match or f"<{key} column>"
    return "fields: {" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"
