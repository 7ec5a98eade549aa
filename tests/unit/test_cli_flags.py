"""The flags (mlx_dpo/cli/flags.py): one train flag per TrainConfig field a command line can
set, none that counts unless given, help texts whose defaults are TrainConfig's, and the
flags that several subcommands share declared the same everywhere."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import mlx_dpo.cli.flags as flags
from mlx_dpo.cli import build_parser
from mlx_dpo.config import CONFIG_KEYS, TrainConfig


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    flags.add_train_flags(parser)
    return parser


def flag_keys(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions if a.dest != "help"]


def subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def test_every_config_field_is_a_flag_or_yaml_only():
    keys = flag_keys(train_parser())
    assert len(keys) == len(set(keys))  # no field has two flags
    assert set(keys) == set(flags.TRAIN_FLAG_KEYS)  # every flag maps to a field and back
    assert set(flags.TRAIN_FLAG_KEYS) | set(flags.YAML_ONLY_KEYS) == set(CONFIG_KEYS)
    assert not set(flags.TRAIN_FLAG_KEYS) & set(flags.YAML_ONLY_KEYS)
    assert set(flags.YAML_ONLY_KEYS) == {"fields", "health"}


def test_the_train_command_has_every_train_flag():
    keys = set(flag_keys(subcommand("train")))
    others = {"config", "resume", "no_tui", "plan", *flags.ROUNDS_FLAG_KEYS}
    assert keys == set(flags.TRAIN_FLAG_KEYS) | others
    # The rounds' flags are not TrainConfig fields (each round's run is an ordinary run).
    assert not set(flags.ROUNDS_FLAG_KEYS) & set(CONFIG_KEYS)


def test_rounds_flags_count_only_when_given():
    parser = argparse.ArgumentParser()
    flags.add_rounds_flags(parser)
    assert all(value is None for value in vars(parser.parse_args([])).values())


def test_no_train_flag_counts_unless_given():
    values = flags.train_flag_values(train_parser().parse_args([]))
    assert values == dict.fromkeys(flags.TRAIN_FLAG_KEYS)


def test_flags_parse_to_the_config_types():
    args = train_parser().parse_args(
        ["--batch-size", "auto", "--lora-keys", "a", "b", "--no-prefix-sharing",
         "--grad-checkpoint", "--trust-remote-code", "--learning-rate", "2e-4"]
    )  # fmt: skip
    values = flags.train_flag_values(args)
    assert values["batch_size"] == "auto" and values["lora_keys"] == ["a", "b"]
    assert values["prefix_sharing"] is False and values["grad_checkpoint"] is True
    assert values["trust_remote_code"] is True and values["learning_rate"] == 2e-4
    assert (
        flags.train_flag_values(train_parser().parse_args(["--batch-size", "6"]))["batch_size"] == 6
    )


def test_a_bad_batch_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_parser().parse_args(["--batch-size", "big"])
    assert exit_.value.code == 2
    assert "an integer or 'auto', not 'big'" in capsys.readouterr().err


def test_help_prints_trainconfigs_defaults(monkeypatch):
    """Change TrainConfig's defaults and the help follows: no default is re-typed."""

    @dataclasses.dataclass
    class Other(TrainConfig):
        beta: float = 0.37
        max_length: int = 777
        batch_size: int | str = 5
        learning_rate: float = 3e-6
        lora_rank: int = 13
        eval_every: int = 41
        save_every: int = 43
        warmup: int = 7
        reference: str = "live"

    monkeypatch.setattr(flags, "TrainConfig", Other)
    text = " ".join(train_parser().format_help().split())
    for expected in (
        "DPO β (default 0.37)",
        "tokens per sequence (default 777)",
        "pairs per batch (default 5)",
        "peak learning rate (default 3e-06)",
        "--lora-rank LORA_RANK default 13",
        "(default 41; 0 = end only)",
        "checkpoints (default 43)",
        "warmup steps (default 7)",
        "every step (default live)",
    ):
        assert expected in text
    parser = argparse.ArgumentParser()
    flags.add_batch_size(parser, allow_auto=False)
    # eval's default is the forward batch the memory plan allows, against a step at 5.
    assert parser.parse_args([]).batch_size is None
    assert "at batch size 5" in parser.format_help()


@pytest.mark.parametrize("name", ["train", "eval", "export", "compare"])
def test_trust_remote_code_is_one_flag(name):
    action = next(a for a in subcommand(name)._actions if a.dest == "trust_remote_code")
    assert action.option_strings == ["--trust-remote-code"]
    assert "never inherited from an adapter or a run directory" in action.help
    # The train flag is unset (None) unless given, so that YAML may give it; the others are off.
    assert action.default is (None if name == "train" else False)
    assert action.const is True


@pytest.mark.parametrize(
    "dest,names",
    [
        ("model", ["train", "eval", "export", "compare"]),
        ("adapter_path", ["eval", "export", "compare"]),
        ("beta", ["train", "eval"]),
        ("max_length", ["train", "eval"]),
        ("json", ["eval", "compare"]),
        ("temp", ["collect", "pairs", "train"]),
        ("top_p", ["collect", "pairs", "train"]),
        ("max_tokens", ["collect", "pairs", "train"]),
        ("judge", ["pairs", "train"]),
        ("judge_prompt", ["pairs", "train"]),
        ("candidates", ["pairs", "train"]),
    ],
)
def test_shared_flags_have_one_type(dest, names):
    actions = [next(a for a in subcommand(n)._actions if a.dest == dest) for n in names]
    assert len({(tuple(a.option_strings), a.type, type(a)) for a in actions}) == 1


@pytest.mark.parametrize("name", ["train", "eval", "export", "compare", "collect", "pairs"])
def test_every_number_a_flag_takes_is_checked_where_it_is_typed(name):
    """Plain int/float let `--epochs inf`, `--beta inf`, `--lora-scale nan`, `--seed -1` and
    5000-digit numbers through, to fail later (blamed on the data, or as a traceback)."""
    plain = [a.dest for a in subcommand(name)._actions if a.type in (int, float)]
    assert plain == []
    for action in subcommand(name)._actions:
        if action.type in flags.NUMBER_TYPES:
            for text in ("inf", "nan", "-inf", "9" * 5000, "x"):
                with pytest.raises(argparse.ArgumentTypeError):
                    action.type(text)


def test_number_flags_refuse_what_no_setting_takes():
    assert flags.finite_number("1e-5") == 1e-5 and flags.whole_number("-3") == -3
    assert flags.seed_number(str(2**32 - 1)) == 2**32 - 1
    for parse, text in ((flags.seed_number, "-1"), (flags.seed_number, str(2**32)),
                        (flags.whole_number, str(2**31)), (flags.finite_number, "1e309")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
