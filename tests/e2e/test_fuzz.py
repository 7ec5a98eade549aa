"""The fuzz harness of issue 15: a hostile user never sees a traceback and never loses a file.

Hypothesis draws values (inf, nan, negative, huge, empty, of the wrong type) for every train
flag and every YAML key (both lists derived from TrainConfig and the parser, not written
out), damaged model folders (cut-short or overwritten safetensors, bad headers, garbage
tokenizer and config files, templates that raise), damaged adapter folders and damaged run
directories. Every command, run in-process through `mlx_dpo.cli.main`, must end with exit 0
or 2; exit 2 with one line on stderr that is not a traceback; and no file outside the run
directory may change.

The flag and YAML profiles stop at the trainer (`launch` is replaced by a recorder): what
they test is where values enter, and an accepted config must hold only finite numbers in
range. The folder profiles train, evaluate and resume for real on the tiny models of
tests/conftest.py. FUZZ_SCALE (an environment variable, default 1) multiplies every
profile's examples; the slow test runs them ten times over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlx_dpo.cli.train as train_command
from mlx_dpo.cli import build_parser, main
from mlx_dpo.cli.flags import TRAIN_FLAG_KEYS
from mlx_dpo.config import INT_LIMIT, HealthThresholds, TrainConfig
from tests.conftest import preference_rows, write_jsonl
from tests.damage import MODEL_DAMAGE, WEIGHTS, copy_folder, overwrite, truncate, write_adapter
from tests.shared import json_values, train_args

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
# Case counts and seconds of each profile, printed at the end of the session (-s shows them).
MEASURED: dict[str, list[float]] = {}
EXITS: dict[str, dict[int, int]] = {}
ONE_LINE: dict[str, int] = {}  # exits 2 said in a single line


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,  # the default suite draws the same cases every time
        database=None,  # nothing written into the working tree
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def call(argv: list[str]) -> tuple[int, str]:
    """main(argv) in this process: (exit status, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors and --help
            code = exit_.code if isinstance(exit_.code, int) else 2
    # A failed run says why on stdout (its console lines); shown with stderr when it fails.
    if code not in (0, 2):
        return code, err.getvalue() + "\n[stdout] " + out.getvalue()[-1500:]
    return code, err.getvalue()


def assert_no_traceback(code: int, stderr: str, argv, profile: str = "") -> None:
    codes = EXITS.setdefault(profile, {})
    codes[code] = codes.get(code, 0) + 1
    assert "Traceback" not in stderr, (argv, stderr)
    assert code in (0, 2), (argv, code, stderr)
    if code == 2:
        # One line: one mistake. A value that holds several (a mapping of two unknown health
        # thresholds) lists each on an indented line of its own under the first.
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines[0].startswith("mlx-dpo"), (argv, stderr)
        assert all(line.startswith("  ") for line in lines[1:]), (argv, stderr)
        ONE_LINE[profile] = ONE_LINE.get(profile, 0) + (len(lines) == 1)


def snapshot(root: Path, leave_out: list[Path]) -> dict[str, str]:
    """sha256 of every file under root but those under `leave_out`."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(p) for p in leave_out):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def measured(profile: str):
    tic = time.perf_counter()
    yield
    counts = MEASURED.setdefault(profile, [0, 0.0])
    counts[0] += 1
    counts[1] += time.perf_counter() - tic


@pytest.fixture(scope="module", autouse=True)
def report_measurements():
    yield
    for profile, (cases, seconds) in MEASURED.items():
        print(
            f"\nfuzz {profile}: {int(cases)} cases in {seconds:.1f}s, exits {EXITS.get(profile)}, "
            f"{ONE_LINE.get(profile, 0)} of the exits 2 in one line"
        )


# ---------------------------------------------------------------------------------------------
# Values where they enter: every train flag, every YAML key


def train_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["train"]


def train_flags() -> dict[str, str]:
    """TrainConfig key -> its flag, from the parser (tests/unit/test_cli_flags.py: each has one)."""
    actions = {a.dest: a for a in train_parser()._actions}
    return {key: actions[key].option_strings[-1] for key in TRAIN_FLAG_KEYS}


HOSTILE_TEXT = st.one_of(
    st.sampled_from(
        [
            "inf",
            "-inf",
            "nan",
            "NaN",
            "1e309",
            "-1",
            "0",
            "-0",
            "0.0",
            "1",
            "2",
            "8",
            "0.5",
            "1e-320",
            str(2**31),
            str(2**32),
            str(2**63),
            str(2**64),
            "9" * 5000,
            "",
            " ",
            "0x10",
            "1_000",
            "abc",
            "None",
            "true",
            "auto",
            "~",
            "$MLX_DPO_UNSET_VARIABLE",
            "sigmoid",
            "self_attn.q_proj",
            "../../outside",
        ]
    ),  # fmt: skip
    st.integers().map(str),
    st.floats().map(str),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


@pytest.fixture
def recorder(monkeypatch):
    """launch replaced: the configs that would have trained."""
    launched: list[TrainConfig] = []

    def record(config, use_tui, resume=False):
        launched.append(config)
        return 0

    monkeypatch.setattr(train_command, "launch", record)
    return launched


def assert_in_range(config: TrainConfig) -> None:
    """Every number an accepted config holds is finite and fits where it goes."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float):
                assert math.isfinite(item), (field.name, item)
            if isinstance(item, int) and not isinstance(item, bool):
                assert abs(item) <= INT_LIMIT or field.name == "seed", (field.name, item)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Relative run directories land in a folder of their own."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@fuzz_settings(100)
@given(data=st.data())
def test_every_train_flag_takes_hostile_values(
    llama_chatml, preference_data, workdir, recorder, data
):
    flags = train_flags()
    key = data.draw(st.sampled_from(sorted(flags)), label="key")
    flag = flags[key]
    value = data.draw(HOSTILE_TEXT, label="value")
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = train_args(llama_chatml, preference_data, run_dir)
    if key == "epochs":  # the base command's --iters would be a second mistake
        del argv[argv.index("--iters") : argv.index("--iters") + 2]
    action = next(a for a in train_parser()._actions if a.dest == key)
    argv += [flag] if action.nargs == 0 else [f"{flag}={value}"]
    before = snapshot(workdir.parent, [workdir])
    with measured("train flags"):
        code, stderr = call(argv)
    assert_no_traceback(code, stderr, argv, "train flags")
    if code == 0:
        assert_in_range(recorder[-1])
    assert snapshot(workdir.parent, [workdir]) == before


def yaml_keys() -> list[str]:
    """Every TrainConfig key, and each health threshold as health.NAME."""
    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    return keys + [f"health.{f.name}" for f in dataclasses.fields(HealthThresholds)]


RAW_YAML = st.sampled_from(
    [".inf", "-.inf", ".nan", "9" * 5000, "-" + "9" * 5000, "~", "''", "[]", "{}", "[[]]",
     "1e400", "-1", "0", "!!binary AAAA", "2001-01-01", "yes", "0o17", "&a [1, *a]", "[" * 50]
)  # fmt: skip


@fuzz_settings(100)
@given(data=st.data())
def test_every_yaml_key_takes_hostile_values(
    llama_chatml, preference_data, workdir, recorder, data
):
    key = data.draw(st.sampled_from(yaml_keys()), label="key")
    raw = data.draw(RAW_YAML | json_values.map(json.dumps), label="value")
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    line = (
        f"health:\n  {key.split('.', 1)[1]}: {raw}"
        if key.startswith("health.")
        else f"{key}: {raw}"
    )
    config = workdir / "run.yaml"
    base = {"model": str(llama_chatml), "data": str(preference_data), "adapter_path": str(run_dir)}
    config.write_text(yaml.safe_dump({k: v for k, v in base.items() if k != key}) + line + "\n")
    argv = ["train", str(config), "--no-tui"]
    before = snapshot(workdir.parent, [workdir])
    with measured("yaml keys"):
        code, stderr = call(argv)
    assert_no_traceback(code, stderr, (key, raw), "yaml keys")
    if code == 0:
        assert_in_range(recorder[-1])
        assert recorder[-1].trust_remote_code is False
    assert snapshot(workdir.parent, [workdir]) == before


# ---------------------------------------------------------------------------------------------
# Damaged folders: trained on, evaluated, resumed for real


@st.composite
def model_damage(draw):
    """A named damage (tests/damage.py), or bytes of a file of the folder cut or overwritten
    at a drawn place."""
    kind = draw(st.sampled_from(["named", "cut", "overwrite"]))
    if kind == "named":
        name = draw(st.sampled_from(sorted(MODEL_DAMAGE)))
        return name, MODEL_DAMAGE[name]
    file = draw(
        st.sampled_from([WEIGHTS, "config.json", "tokenizer.json", "tokenizer_config.json"])
    )
    if kind == "cut":
        fraction = draw(st.floats(0, 0.999))
        return f"{file} cut at {fraction:.3f}", lambda f: truncate(f / file, fraction)
    offset = draw(st.integers(0, 2**20))
    data = draw(st.binary(min_size=1, max_size=64))
    return f"{file} overwritten at {offset}", lambda f: overwrite(f / file, offset, data)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-data")
    write_jsonl(folder / "train.jsonl", preference_rows(8))
    return folder


def quick_train(model, data, run_dir, *extra) -> list[str]:
    return [*train_args(model, data, run_dir, *extra), "--iters", "1", "--eval-every", "0",
            "--sample-count", "0", "--batch-size", "4"]  # fmt: skip


@fuzz_settings(20)
@given(damage=model_damage())
def test_a_damaged_model_folder_never_ends_in_a_traceback(
    llama_chatml, small_data, tmp_path, damage
):
    name, apply = damage
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    model = copy_folder(llama_chatml, root / "model")
    apply(model)
    run_dir = root / "run"
    before = snapshot(root, [run_dir]) | snapshot(small_data, [])
    with measured("damaged model folders"):
        code, stderr = call(quick_train(model, small_data, run_dir))
    assert_no_traceback(code, stderr, name, "damaged model folders")
    assert snapshot(root, [run_dir]) | snapshot(small_data, []) == before


ADAPTER_FIELDS = ["num_layers", "fine_tune_type", "base_model", "lora_parameters", "beta",
                  "loss", "max_length", "fields", "label_smoothing", "quantize"]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(llama_chatml, small_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fuzz-run") / "run"
    argv = quick_train(llama_chatml, small_data, run_dir, "--save-every", "1")
    code, stderr = call(argv)
    assert code == 0, stderr
    return run_dir


@st.composite
def adapter_damage(draw):
    field = draw(st.sampled_from(ADAPTER_FIELDS + ["lora_parameters.rank", "lora_parameters.scale",
                                                   "lora_parameters.keys", "lora_parameters.dropout"]))  # fmt: skip
    value = draw(json_values | st.sampled_from([0, -1, 2**40, 1e308, "", [], {}]))
    cut = draw(st.none() | st.floats(0, 0.999))
    return field, value, cut


@fuzz_settings(15)
@given(damage=adapter_damage())
def test_a_damaged_adapter_folder_never_ends_in_a_traceback(
    trained_run, small_data, tmp_path, damage
):
    field, value, cut = damage
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    adapter = root / "adapter"
    config = json.loads((trained_run / "adapter_config.json").read_text())
    if field.startswith("lora_parameters."):
        config["lora_parameters"][field.split(".")[1]] = value
    else:
        config[field] = value
    write_adapter(adapter, config, (trained_run / "adapters.safetensors").read_bytes())
    if cut is not None:
        truncate(adapter / "adapters.safetensors", cut)
    argv = ["eval", "--adapter-path", str(adapter), "--data", str(small_data), "--split", "train"]
    before = snapshot(root, []) | snapshot(small_data, [])
    with measured("damaged adapter folders"):
        code, stderr = call(argv)
    assert_no_traceback(code, stderr, (field, value, cut), "damaged adapter folders")
    assert snapshot(root, []) | snapshot(small_data, []) == before


RUN_FILES = ["config.yaml", "adapter_config.json", "adapters.safetensors", "status.json",
             "metrics.jsonl", "run.lock", "checkpoints/step-1/state.json",
             "checkpoints/step-1/adapters.safetensors",
             "checkpoints/step-1/optimizer.safetensors"]  # fmt: skip


@st.composite
def run_damage(draw):
    file = draw(st.sampled_from(RUN_FILES))
    how = draw(st.sampled_from(["cut", "overwrite", "garbage", "delete"]))
    where = draw(st.floats(0, 0.999))
    data = draw(st.binary(min_size=1, max_size=32))
    return file, how, where, data


@fuzz_settings(6)
@given(damage=run_damage())
def test_a_damaged_run_directory_never_ends_in_a_traceback(
    trained_run, llama_chatml, small_data, tmp_path, damage
):
    file, how, where, data = damage
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    run_dir = root / "run"
    shutil.copytree(trained_run, run_dir)
    path = run_dir / file
    if path.exists():
        if how == "cut":
            truncate(path, where)
        elif how == "overwrite":
            overwrite(path, int(where * path.stat().st_size), data)
        elif how == "garbage":
            path.write_bytes(data)
        else:
            path.unlink()
    argv = ["train", "--resume", "--adapter-path", str(run_dir), "--no-tui", "--iters", "2"]
    before = snapshot(small_data, []) | snapshot(llama_chatml, [])
    with measured("damaged run directories"):
        code, stderr = call(argv)
    assert_no_traceback(code, stderr, (file, how, where, data), "damaged run directories")
    assert snapshot(small_data, []) | snapshot(llama_chatml, []) == before


@pytest.mark.slow
def test_the_deep_profile(tmp_path):
    """Every profile with ten times the examples, random (not derandomized) draws."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider",
         "-m", "not slow", __file__],
        env={**os.environ, "FUZZ_SCALE": "10"}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
