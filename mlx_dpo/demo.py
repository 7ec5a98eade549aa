"""The built-in default: `mlx-dpo train` with no arguments.

A tiny Llama-family model is built offline on first use (a BPE tokenizer trained on the demo
data, a ChatML template, random weights), then warmed up with a short supervised pass on both
the chosen and the rejected answers of every pair, so it already says both. DPO then teaches
it which one to prefer. The model is cached; nothing is downloaded.

The demo prepares its configuration and model (`prepare_demo`), measures the model before
(`test_report`) and reports what changed after (`report_demo`); the command line
(mlx_dpo/cli/train.py) runs the training in between, headless or with the dashboard. MLX,
mlx-lm and the trainer are imported inside the functions that need them, so importing this
module (the CLI does, for every command and for `--help`) stays light.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mlx_dpo.batching import collate
from mlx_dpo.compare import compare_answers
from mlx_dpo.config import TrainConfig, build_config
from mlx_dpo.data import SPLITS, TokenizedPair, read_records, tokenize_records

DEMO_VERSION = "1"
# The demo model: about 3.4M parameters.
DEMO_MODEL = {
    "hidden_size": 256,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 512,
    "vocab_size": 2048,
}
WARMUP = {"epochs": 100, "batch_size": 32, "learning_rate": 3e-3, "warmup_steps": 50}

# The documented defaults of the demo run (README "Quick start"); β and the loss are the
# library's own defaults.
DEMO_SETTINGS = {
    "epochs": 8.0,
    "batch_size": 8,
    "learning_rate": 1e-4,
    "lr_schedule": "cosine",
    "warmup": 5,
    "beta": TrainConfig().beta,
    "loss": TrainConfig().loss,
    # RPO: keeping the chosen answer likely keeps a model this small fluent while DPO moves it.
    "sft_weight": 1.0,
    "lora_rank": 8,
    "lora_scale": 10.0,
    "max_length": 128,
    "eval_every": 20,
    "save_every": 50,
    "seed": 0,
}


def demo_data_dir() -> Path:
    """examples/data: inside an installed wheel it is mlx_dpo/demo_data (pyproject maps it);
    in a source checkout or an editable install it is the repository's folder."""
    package = Path(str(resources.files("mlx_dpo")))
    for candidate in (package / "demo_data", package.parent / "examples" / "data"):
        if (candidate / "train.jsonl").is_file():
            return candidate
    raise FileNotFoundError("the demo data (examples/data) is missing from this installation")


def demo_config_values() -> dict[str, Any]:
    return {"model": "<demo>", "data": str(demo_data_dir()), **DEMO_SETTINGS}


def _data_fingerprint() -> str:
    digest = hashlib.sha256(DEMO_VERSION.encode() + repr((DEMO_MODEL, WARMUP)).encode())
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        digest.update((demo_data_dir() / name).read_bytes())
    return digest.hexdigest()[:16]


SHIPPED_MODEL = Path(__file__).parent / "demo_model"


def demo_model_path() -> Path:
    """The model that ships with the package when it was built from this very data and these
    settings (its fingerprint.txt says so); otherwise one built on first use in the cache."""
    fingerprint = _data_fingerprint()
    shipped = SHIPPED_MODEL / "fingerprint.txt"
    if shipped.is_file() and shipped.read_text().strip() == fingerprint:
        return SHIPPED_MODEL
    from mlx_dpo.reference import cache_dir

    return cache_dir() / f"demo-model-{fingerprint}"


def _texts_for_tokenizer(records) -> list[str]:
    texts = []
    for record in records:
        for messages in (record.prompt, record.chosen, record.rejected):
            texts += [m["content"] for m in messages]
    return texts


def ensure_demo_model(say: Callable[[str], None] = print) -> Path:
    """The cached demo model, built and warmed up on first use (about a minute)."""
    path = demo_model_path()
    if (path / "config.json").is_file():
        return path
    from mlx_dpo.tiny import TEMPLATES, build_model, train_tokenizer

    tic = time.perf_counter()
    say("building the demo model (once; it is cached for later runs)...")
    records = [r for split in SPLITS for r in read_records(demo_data_dir() / f"{split}.jsonl")]
    tokenizer = train_tokenizer(
        _texts_for_tokenizer(records), DEMO_MODEL["vocab_size"], TEMPLATES["chatml"][1]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=path.parent, prefix=".demo-model-"))
    try:
        build_model(
            building,
            model_type="llama",
            tokenizer=tokenizer,
            template="chatml",
            seed=0,
            **{k: v for k, v in DEMO_MODEL.items() if k != "vocab_size"},
        )
        _warm_up(building, records, say)
        if path.exists():
            shutil.rmtree(building)
        else:
            os.replace(building, path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    say(f"demo model ready in {time.perf_counter() - tic:.0f}s: {path}")
    return path


def _warm_up(path: Path, records, say: Callable[[str], None]) -> None:
    """Supervised pass over chosen and rejected answers alike (full fine-tuning), so the
    model can say both before DPO decides between them."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.utils import load, save_model

    from mlx_dpo.logprobs import find_head_split, response_logps

    model, tokenizer = load(str(path))
    split = tokenize_records(records, tokenizer, DEMO_SETTINGS["max_length"], "all", "demo")
    # Whole conversations (prompt and answer), chosen and rejected alike: the prompt tokens
    # teach the language too. Every ChatML text starts with the same token, so two texts
    # make one "pair" whose shared prompt is that token, and collate stacks them.
    texts = [
        np.concatenate([p.prompt_ids, r])
        for p in split.pairs
        for r in (p.chosen_ids, p.rejected_ids)
    ]
    assert len({t[0] for t in texts}) == 1
    head = find_head_split(model)
    rows = WARMUP["batch_size"]
    steps_per_epoch = -(-len(texts) // rows)
    total = WARMUP["epochs"] * steps_per_epoch
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(1e-5, WARMUP["learning_rate"], WARMUP["warmup_steps"]),
            optim.cosine_decay(WARMUP["learning_rate"], total, 1e-4),
        ],
        [WARMUP["warmup_steps"]],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.0)

    def loss_fn(tokens, positions, mask):
        logps = response_logps(model, tokens, positions, mask, head)
        return -logps.sum() / mask.sum()

    value_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(tokens, positions, mask):
        loss, grads = value_and_grad(tokens, positions, mask)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    tic = time.perf_counter()
    for epoch in range(WARMUP["epochs"]):
        order = rng.permutation(len(texts))
        losses = []
        for start in range(0, len(order), rows):
            chunk = [texts[i] for i in order[start : start + rows]]
            if len(chunk) % 2:
                chunk.append(chunk[0])
            pseudo = [
                TokenizedPair(0, "", a[:1], a[1:], b[1:])
                for a, b in zip(chunk[::2], chunk[1::2], strict=True)
            ]
            batch = collate(pseudo)
            loss = step(
                mx.array(batch.tokens),
                mx.array(batch.response_positions),
                mx.array(batch.response_mask),
            )
            mx.eval(loss, model.state, optimizer.state)
            losses.append(loss.item())
        if epoch % 5 == 4 or epoch == WARMUP["epochs"] - 1:
            say(
                f"  warm-up epoch {epoch + 1}/{WARMUP['epochs']}: loss {np.mean(losses):.3f} "
                f"({time.perf_counter() - tic:.0f}s)"
            )
    save_model(path, model)


def _say(line: str) -> None:
    print(line, flush=True)


def prepare_demo(config: TrainConfig, say: Callable[[str], None] = _say) -> TrainConfig:
    """The demo run's configuration with the demo model (built on first use) as its model;
    says what the demo is about to do."""
    model_path = ensure_demo_model(say)
    config = build_config({**config.to_dict(), "model": str(model_path)}, {})
    say(f"mlx-dpo demo: teaching a tiny model ({model_path.name}) which answers to prefer")
    say(f"  data: {config.data} (see examples/README.md); run directory: {config.adapter_path}")
    return config


def report_or_defer(config: TrainConfig, before: dict, status: dict) -> bool:
    """After the dashboard or the headless run returned: what changed (report_demo) for a
    finished run (`status`: the run's status.json); for one that goes on in the background,
    is paused or was stopped, where its results will be instead (report_later). Whether it
    reported."""
    if status.get("state") == "finished":
        report_demo(config, before)
        return True
    report_later(config, before, status)
    return False


def report_later(config: TrainConfig, before: dict, status: dict) -> None:
    """The demo's results for a run that has not finished: not measured from a half-trained
    adapter, but the commands that show them once it has."""
    run_dir = str(config.adapter_path)
    state, step, steps = status.get("state"), status.get("step"), status.get("total_steps")
    at = f" at step {step}/{steps}" if step is not None and steps else ""
    say = _say
    say("")
    if state == "stopped":
        say(f"The demo run stopped{at}; its results are reported for a finished run.")
        say(f"  continue it: mlx-dpo train --resume --adapter-path {shlex.quote(run_dir)}")
    else:
        pid = status.get("pid")
        going = "paused" if state == "paused" else "still training in the background"
        process = f" (process {pid})" if pid else ""
        say(f"The demo run is {going}{at}{process}; its results come when it has finished.")
        say(f"  watch it: mlx-dpo view {shlex.quote(run_dir)}")
    if "prefers_chosen" in before:
        say(
            f"Before training the model preferred the chosen answer (log p) on "
            f"{before['prefers_chosen']:.2f} of the held-out test pairs. Once finished:"
        )
    else:
        say("Once finished:")
    data, run = shlex.quote(str(config.data)), shlex.quote(run_dir)
    say(f"  mlx-dpo eval --adapter-path {run} --data {data} --split test")
    say(f"  mlx-dpo compare --adapter-path {run} --data {data} --split test --limit 10")


def report_demo(config: TrainConfig, before: dict) -> None:
    """After the run: the test split and greedy answers again, and what changed since
    `before` (test_report of the model before training)."""
    after = test_report(config, adapter_path=config.adapter_path)
    print_summary(before, after, config)


def test_report(config: TrainConfig, adapter_path: str | None, examples: int = 10) -> dict:
    """Test-split numbers and a few greedy answers, before (adapter_path None) or after."""
    from mlx_dpo.session import open_session
    from mlx_dpo.trainer.evaluation import evaluate_split

    session = open_session(config, splits=("test",), adapter_path=adapter_path)
    session.model.eval()
    test = session.splits["test"]
    result = evaluate_split(session, test, config, per_pair=True)
    rows = result.pop("per_pair")
    prefers_chosen = sum(r["policy_chosen_logp"] > r["policy_rejected_logp"] for r in rows)
    result["prefers_chosen"] = prefers_chosen / len(rows)
    records = read_records(Path(test.path))
    # Consecutive records cycle through the data's categories.
    shown = records[:examples]
    result["answers"] = [
        {**answer, "chosen": r.chosen[-1]["content"], "rejected": r.rejected[-1]["content"]}
        for answer, r in zip(
            compare_answers(session, [r.prompt for r in shown], max_tokens=40), shown, strict=True
        )
    ]
    return result


def _which(answer: str, chosen: str, rejected: str) -> str:
    """ "chosen"/"rejected" for an exact match, "~chosen"/"~rejected" for the closer one."""
    answer = answer.strip()
    if answer == chosen.strip():
        return "chosen"
    if answer == rejected.strip():
        return "rejected"
    to_chosen = difflib.SequenceMatcher(None, answer, chosen.strip()).ratio()
    to_rejected = difflib.SequenceMatcher(None, answer, rejected.strip()).ratio()
    return "~chosen" if to_chosen > to_rejected else "~rejected"


def _is_chosen(kind: str) -> bool:
    return kind.endswith("chosen") and not kind.endswith("rejected")


def print_summary(before: dict, after: dict, config: TrainConfig) -> None:
    say = _say
    say("")
    say("What changed on the held-out test split:")
    say(
        f"  model prefers the chosen answer (log p): {before['prefers_chosen']:.2f} -> "
        f"{after['prefers_chosen']:.2f}"
    )
    say(
        f"  DPO reward accuracy: {after['rewards/accuracies']:.2f}, reward margin "
        f"{after['rewards/margins']:.3f} (both 0 before: the policy starts as the reference)"
    )
    say("")
    say("Greedy answers, reference -> trained policy ([~x]: not exact, closer to x):")
    kinds = []
    for answer in after["answers"]:
        prompt = answer["prompt"][-1]["content"]
        ref_kind = _which(answer["reference"], answer["chosen"], answer["rejected"])
        pol_kind = _which(answer["policy"], answer["chosen"], answer["rejected"])
        kinds.append((ref_kind, pol_kind))
        say(f"  Q: {prompt}")
        say(f"    reference [{ref_kind}]: {answer['reference'].strip()}")
        say(f"    policy    [{pol_kind}]: {answer['policy'].strip()}")
    moved = sum(not _is_chosen(r) and _is_chosen(p) for r, p in kinds)
    not_chosen = sum(not _is_chosen(r) for r, _ in kinds)
    say("")
    say(
        f"Answers like the chosen one: reference {len(kinds) - not_chosen}/{len(kinds)}, trained "
        f"policy {sum(_is_chosen(p) for _, p in kinds)}/{len(kinds)}; {moved} of the "
        f"{not_chosen} that were not moved to it. Chat with it:"
    )
    say(f"  mlx_lm.chat --model {config.model} --adapter-path {config.adapter_path}")
