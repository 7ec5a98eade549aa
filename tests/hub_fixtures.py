"""The public preference sets, a few rows each, in their exact column layout and file layout,
built offline; and a fake Hugging Face cache folder holding them, laid out as huggingface-hub
lays out its own (datasets--org--name/{blobs, refs/main, snapshots/<commit>/...} with the
snapshot's files as symlinks to their blobs), so `--data org/name` works with HF_HUB_OFFLINE=1.

Column layouts, as their dataset cards list them:
    trl-lib/ultrafeedback_binarized   data/{train,test}-00000-of-00001.parquet:
                                      chosen, rejected (messages), score_chosen, score_rejected
    HuggingFaceH4/ultrafeedback_binarized  data/{train,test}_{prefs,sft,gen}-00000-of-00001-<hash>
                                      .parquet, README configs: prompt, prompt_id, chosen,
                                      rejected, messages, score_chosen, score_rejected
    argilla/dpo-mix-7k                data/{train,test}-00000-of-00001.parquet: dataset, chosen,
                                      rejected (messages), chosen_rating, rejected_rating
    Anthropic/hh-rlhf                 {harmless-base,helpful-base}/{train,test}.jsonl.gz and
                                      red-team-attempts/red_team_attempts.jsonl.gz: chosen,
                                      rejected ("\\n\\nHuman: ...\\n\\nAssistant: ..." texts)
    Intel/orca_dpo_pairs              orca_rlhf.jsonl: system, question, chosen, rejected
    mlabonne/orpo-dpo-mix-40k         data/train-00000-of-00001.parquet: source, chosen,
                                      rejected (messages), prompt, question

Every set is built from the same standard pairs (`pairs`), so each has an explicit equivalent
(`explicit_records`): the same prompts and responses as TRL conversational records.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COLORS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "lime", "plum", "rust"]
SETS = (
    "trl-lib/ultrafeedback_binarized",
    "HuggingFaceH4/ultrafeedback_binarized",
    "argilla/dpo-mix-7k",
    "Anthropic/hh-rlhf",
    "Intel/orca_dpo_pairs",
    "mlabonne/orpo-dpo-mix-40k",
)
# The split each set trains on, and the shape mlx-dpo reads it as.
TRAIN_SPLIT = {"HuggingFaceH4/ultrafeedback_binarized": "train_prefs"}
SHAPES = {
    "trl-lib/ultrafeedback_binarized": "implicit-prompt",
    "HuggingFaceH4/ultrafeedback_binarized": "ultrafeedback-binarized",
    "argilla/dpo-mix-7k": "implicit-prompt",
    "Anthropic/hh-rlhf": "hh-text",
    "Intel/orca_dpo_pairs": "question+system",
    "mlabonne/orpo-dpo-mix-40k": "conversations+prompt",
}

H4_README = """---
license: mit
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: train_sft
    path: data/train_sft-*
  - split: test_prefs
    path: data/test_prefs-*
  - split: test_sft
    path: data/test_sft-*
  - split: train_gen
    path: data/train_gen-*
  - split: test_gen
    path: data/test_gen-*
---
# Dataset Card for UltraFeedback Binarized
"""
SIMPLE_README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---
"""


def pairs(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    """Standard pairs: a question about an item's color, a pleasant and a rude answer; every
    third has a system text, every fourth a second turn before the question."""
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        a, b = rng.sample(COLORS, 2)
        turns = [{"role": "user", "content": f"what color is item {i}?"}]
        if i % 4 == 3:
            turns = [
                {"role": "user", "content": f"hi, item {i} here."},
                {"role": "assistant", "content": "hello there."},
                *turns,
            ]
        rows.append(
            {
                "system": "be kind" if i % 3 == 1 else None,
                "turns": turns,
                "chosen": f"the item is {a} and nice.",
                "rejected": f"ugh it is {b} obviously.",
            }
        )
    return rows


def _prompt(row: dict) -> list[dict]:
    system = [{"role": "system", "content": row["system"]}] if row["system"] else []
    return system + row["turns"]


def explicit_records(rows: list[dict], with_system: bool = True) -> list[dict]:
    """The same pairs as TRL conversational records (explicit prompt)."""
    return [
        {
            "prompt": _prompt(r) if with_system else r["turns"],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


def _conversation(row: dict, answer: str, with_system: bool = True) -> list[dict]:
    """A message list as published sets store it: content before role (their parquet schema)."""
    messages = (_prompt(row) if with_system else row["turns"]) + [
        {"role": "assistant", "content": answer}
    ]
    return [{"content": m["content"], "role": m["role"]} for m in messages]


def _hh_text(row: dict, answer: str) -> str:
    names = {"user": "Human", "assistant": "Assistant"}
    turns = "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in row["turns"])
    return f"{turns}\n\nAssistant: {answer}"


def _parquet(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def _jsonl(rows: list[dict], compress: bool = False) -> bytes:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return gzip.compress(data, mtime=0) if compress else data


# Which rows a set can carry: HH has no system turns; orca has one user turn.
def uses_system(repo_id: str) -> bool:
    return repo_id != "Anthropic/hh-rlhf"


def usable(repo_id: str, row: dict) -> bool:
    return repo_id != "Intel/orca_dpo_pairs" or len(row["turns"]) == 1


def set_rows(repo_id: str, n: int = 12, seed: int = 0, start: int = 0) -> list[dict]:
    return [r for r in pairs(n * 2, seed, start) if usable(repo_id, r)][:n]


def set_files(repo_id: str, n: int = 12) -> dict[str, bytes]:
    """The files of one public set (path in the repo -> bytes), with `n` train rows."""
    train, test = set_rows(repo_id, n), set_rows(repo_id, 4, seed=1, start=500)
    attrs = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    if repo_id == "trl-lib/ultrafeedback_binarized":

        def convert(rows):
            return _parquet(
                [
                    {
                        "chosen": _conversation(r, r["chosen"]),
                        "rejected": _conversation(r, r["rejected"]),
                        "score_chosen": 8.0,
                        "score_rejected": 4.0,
                    }
                    for r in rows
                ]
            )

        return {
            ".gitattributes": attrs,
            "README.md": SIMPLE_README.encode(),
            "data/train-00000-of-00001.parquet": convert(train),
            "data/test-00000-of-00001.parquet": convert(test),
        }
    if repo_id == "HuggingFaceH4/ultrafeedback_binarized":

        def convert(rows):
            return _parquet(
                [
                    {
                        "prompt": r["turns"][-1]["content"],
                        "prompt_id": hashlib.sha256(r["turns"][-1]["content"].encode()).hexdigest(),
                        "chosen": _conversation(r, r["chosen"]),
                        "rejected": _conversation(r, r["rejected"]),
                        "messages": _conversation(r, r["chosen"]),
                        "score_chosen": 9.0,
                        "score_rejected": 5.5,
                    }
                    for r in rows
                ]
            )

        files = {".gitattributes": attrs, "README.md": H4_README.encode()}
        for split, rows in (("train", train), ("test", test)):
            for kind, digest in (("prefs", "17309c769bfe5733"), ("sft", "3d1c5b6a2f0e4d77")):
                files[f"data/{split}_{kind}-00000-of-00001-{digest}.parquet"] = convert(rows)
            files[f"data/{split}_gen-00000-of-00001-9a8b7c6d5e4f3a2b.parquet"] = convert(rows)
        return files
    if repo_id == "argilla/dpo-mix-7k":

        def convert(rows):
            return _parquet(
                [
                    {
                        "dataset": "argilla/distilabel-capybara-dpo-7k-binarized",
                        "chosen": _conversation(r, r["chosen"]),
                        "rejected": _conversation(r, r["rejected"]),
                        "chosen_rating": 5.0,
                        "rejected_rating": 2.0,
                    }
                    for r in rows
                ]
            )

        return {
            ".gitattributes": attrs,
            "README.md": SIMPLE_README.encode(),
            "data/train-00000-of-00001.parquet": convert(train),
            "data/test-00000-of-00001.parquet": convert(test),
        }
    if repo_id == "Anthropic/hh-rlhf":

        def convert(rows):
            return _jsonl(
                [
                    {"chosen": _hh_text(r, r["chosen"]), "rejected": _hh_text(r, r["rejected"])}
                    for r in rows
                ],
                compress=True,
            )

        half = len(train) // 2
        red_team = [{"transcript": "\n\nHuman: hi\n\nAssistant: no.", "rating": 0.0}]
        return {
            ".gitattributes": b"*.jsonl.gz filter=lfs diff=lfs merge=lfs -text\n",
            "README.md": b"---\nlicense: mit\n---\n# Dataset Card for HH-RLHF\n",
            "harmless-base/train.jsonl.gz": convert(train[:half]),
            "harmless-base/test.jsonl.gz": convert(test[:2]),
            "helpful-base/train.jsonl.gz": convert(train[half:]),
            "helpful-base/test.jsonl.gz": convert(test[2:]),
            "red-team-attempts/red_team_attempts.jsonl.gz": _jsonl(red_team, compress=True),
        }
    if repo_id == "Intel/orca_dpo_pairs":
        rows = [
            {
                "system": r["system"] or "",
                "question": r["turns"][-1]["content"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
            }
            for r in train
        ]
        return {
            ".gitattributes": b"*.jsonl filter=lfs diff=lfs merge=lfs -text\n",
            "README.md": b"---\nlicense: apache-2.0\n---\nThe data of Intel/neural-chat.\n",
            "orca_rlhf.jsonl": _jsonl(rows),
        }
    if repo_id == "mlabonne/orpo-dpo-mix-40k":
        rows = [
            {
                "source": "argilla/Capybara-Preferences",
                "chosen": _conversation(r, r["chosen"]),
                "rejected": _conversation(r, r["rejected"]),
                "prompt": r["turns"][-1]["content"],
                "question": r["turns"][-1]["content"],
            }
            for r in train
        ]
        return {
            ".gitattributes": attrs,
            "README.md": b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n",
            "data/train-00000-of-00001.parquet": _parquet(rows),
        }
    raise KeyError(repo_id)


def explicit_train(repo_id: str, n: int = 12) -> list[dict]:
    """The train pairs of a set as explicit TRL conversational records."""
    return explicit_records(set_rows(repo_id, n), with_system=uses_system(repo_id))


def commit_of(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()


def add_to_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay out `files` as huggingface-hub's cache holds a downloaded dataset: blobs named by
    their hash, refs/main naming the commit, the snapshot's files linking to the blobs.
    Returns the snapshot folder."""
    repo = cache / ("datasets--" + repo_id.replace("/", "--"))
    commit = commit_of(repo_id)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


def build_hub_cache(cache: Path, n: int = 12) -> Path:
    """Every public set above in one fake cache folder (use as HF_HUB_CACHE)."""
    for repo_id in SETS:
        add_to_hub_cache(cache, repo_id, set_files(repo_id, n))
    return cache
