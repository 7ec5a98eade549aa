"""The configuration (mlx_dpo/config.py): YAML and flags merged (flags win, an unset flag does
not count), every validation rule with its message, YAML errors with file and line, a loader
that never crashes on arbitrary input, and the loss options: what is refused, with which
message, and the gate that keeps losses the training step does not run yet out of training."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_dpo.config import (
    CONFIG_KEYS,
    TrainConfig,
    build_config,
    check_value,
    load_config_file,
    loss_problems,
    read_yaml,
    save_config,
    thresholds_from_dict,
)
from mlx_dpo.errors import UserError
from mlx_dpo.loss_catalog import LOSSES
from tests.shared import json_values


def problems_of(yaml_values: dict, flags: dict | None = None) -> list[str]:
    with pytest.raises(UserError) as err:
        build_config(yaml_values, flags or {})
    return err.value.problems


def test_flags_win_and_unset_flags_do_not_count():
    config = build_config(
        {"model": "m", "beta": 0.3, "learning_rate": 1e-4}, {"beta": 0.7, "learning_rate": None}
    )
    assert config.model == "m" and config.beta == 0.7 and config.learning_rate == 1e-4
    assert build_config({}, {}) == TrainConfig()


def test_ints_are_floats_where_floats_are_expected():
    config = build_config({"beta": 1, "epochs": 2, "memory_limit_gb": 8}, {})
    assert (config.beta, config.epochs, config.memory_limit_gb) == (1.0, 2.0, 8.0)
    assert all(isinstance(v, float) for v in (config.beta, config.epochs, config.memory_limit_gb))


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"beta": 0}, "'beta' must be > 0, got 0"),
        ({"lora_rank": 0}, "'lora_rank' must be > 0, got 0"),
        ({"lora_dropout": 1.0}, "'lora_dropout' must be in [0, 1), got 1.0"),
        ({"lora_dropout": -0.1}, "'lora_dropout' must be in [0, 1), got -0.1"),
        ({"label_smoothing": 0.5}, "'label_smoothing' must be in [0, 0.5), got 0.5"),
        ({"batch_size": 0}, "'batch_size' must be > 0, got 0"),
        ({"grad_accumulation": 0}, "'grad_accumulation' must be > 0, got 0"),
        ({"learning_rate": 0}, "'learning_rate' must be > 0, got 0.0"),
        ({"warmup": -1}, "'warmup' must be >= 0, got -1"),
        ({"weight_decay": -0.1}, "'weight_decay' must be >= 0, got -0.1"),
        ({"max_grad_norm": -1}, "'max_grad_norm' must be >= 0 (0 = no clipping)"),
        ({"sft_weight": -1}, "'sft_weight' must be >= 0, got -1.0"),
        ({"max_length": 7}, "'max_length' must be >= 8, got 7"),
        ({"eval_every": -1}, "'eval_every' must be >= 0 (0 = only at the end)"),
        ({"save_every": -1}, "'save_every' must be >= 0 (0 = only at the end)"),
        ({"iters": 0}, "'iters' must be > 0, got 0"),
        ({"epochs": 0}, "'epochs' must be > 0, got 0.0"),
        ({"iters": 2, "epochs": 1.0}, "give 'iters' or 'epochs', not both"),
        ({"lora_layers": 0}, "'lora_layers' must be > 0"),
        ({"memory_limit_gb": 0}, "'memory_limit_gb' must be > 0, got 0.0"),
        ({"quantize": 3}, "'quantize' must be 4 or 8, got 3"),
        ({"loss": "dpo"}, "'loss' must be one of sigmoid, robust, hinge, ipo,"),
        ({"lr_schedule": "step"}, "'lr_schedule' must be one of constant, linear, cosine"),
        ({"reference": "none"}, "'reference' must be one of cached, live, got 'none'"),
        (
            {"loss": "ipo", "label_smoothing": 0.1},
            "'label_smoothing' applies to the sigmoid, robust,",
        ),
        ({"simpo_gamma": 1.0}, "'simpo_gamma' applies to the simpo loss, not 'sigmoid'"),
        (
            {"fields": {"answer": "x"}},
            "'fields' maps prompt, chosen, rejected, system, completion, label; unknown",
        ),
    ],
)
def test_each_range_rule(values, expected):
    problems = problems_of(values)
    assert len(problems) == 1 and expected in problems[0], problems


def test_values_at_the_edge_of_each_range_are_accepted():
    config = build_config(
        {
            "lora_dropout": 0.0,
            "warmup": 0,
            "weight_decay": 0,
            "max_grad_norm": 0,
            "max_length": 8,
            "eval_every": 0,
            "save_every": 0,
            "quantize": 4,
            "loss": "simpo",
            "simpo_gamma": 0.0,
            "fields": {"prompt": "question", "system": "sys"},
        },
        {},
    )
    assert config.quantize == 4 and config.fields == {"prompt": "question", "system": "sys"}
    assert build_config({"loss": "robust", "label_smoothing": 0.49}, {}).label_smoothing == 0.49


def test_every_problem_is_reported_at_once():
    problems = problems_of({"beta": 0, "lora_rank": 0, "warmup": -1})
    assert len(problems) == 3


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("lerning_rate", 0.1, "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"),
        ("lora-rank", 4, "unknown key 'lora-rank' (did you mean 'lora_rank'?)"),
        ("zzz", 1, "unknown key 'zzz'"),
        ("beta", "high", "'beta' must be a number, got 'high'"),
        ("lora_rank", 4.5, "'lora_rank' must be an integer, got 4.5"),
        ("lora_rank", True, "'lora_rank' must be an integer, got True"),
        ("grad_checkpoint", "yes", "'grad_checkpoint' must be true or false, got 'yes'"),
        ("iters", "ten", "'iters' must be an integer (or null), got 'ten'"),
        ("lora_keys", "q_proj", "'lora_keys' must be a list of strings (or null), got 'q_proj'"),
        ("lora_keys", ["q", 1], "'lora_keys' must be a list of strings (or null)"),
        ("fields", ["prompt"], "'fields' must be a mapping"),
        ("batch_size", 2.5, "'batch_size' must be an integer or 'auto', got 2.5"),
    ],
)
def test_check_value(key, value, expected):
    (problem,) = check_value(key, value)
    assert expected in problem


def test_check_value_accepts_every_default():
    defaults = TrainConfig().to_dict()
    assert set(defaults) == set(CONFIG_KEYS)
    assert all(check_value(key, value) == [] for key, value in defaults.items())


def test_config_accepts_auto_and_checks_the_limit():
    assert build_config({}, {"batch_size": "auto"}).batch_size == "auto"
    with pytest.raises(UserError) as err:
        build_config({"batch_size": "big"}, {})
    assert "'batch_size' must be an integer or 'auto', got 'big'" in str(err.value)
    with pytest.raises(UserError) as err:
        build_config({}, {"memory_limit_gb": 0})
    assert "'memory_limit_gb' must be > 0" in str(err.value)
    assert build_config({"memory_limit_gb": 8}, {}).memory_limit_gb == 8.0


def test_health_thresholds_are_checked_with_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("health:\n  length_bias_share: 0.8\n  patience: 8\n")
    config = build_config(read_yaml(path), {})
    assert config.health == {"length_bias_share": 0.8, "patience": 8}
    with pytest.raises(UserError) as err:
        build_config({"health": {"no_such_threshold": 1}}, {})
    assert "health.no_such_threshold: unknown threshold" in str(err.value)


# ---------------------------------------------------------------------------------------------
# YAML files


def test_yaml_problems_name_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\n\nlerning_rate: 0.1\nbeta: high\n")
    with pytest.raises(UserError) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}: invalid configuration")
    assert err.value.problems == [
        f"{path}:3: unknown key 'lerning_rate' (did you mean 'learning_rate'?)",
        f"{path}:4: 'beta' must be a number, got 'high'",
    ]


@pytest.mark.parametrize(
    "content,expected",
    [
        (None, "config file not found"),
        (b"beta: 0.1\n\xff\n", "not valid UTF-8 (invalid start byte at byte 10)"),
        (b"beta: 0.1\nmodel: a: b\n", ":2: not valid YAML"),
        (b"- beta\n- model\n", "a config must be a mapping of keys to values"),
    ],
)
def test_unreadable_yaml_is_a_user_error(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_yaml(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_yaml_reads_exponents_as_numbers_and_empty_as_nothing(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-5\nmodel: 1e-5\n")  # YAML 1.1 reads 1e-5 as a string
    assert read_yaml(path) == {"learning_rate": 1e-5, "model": "1e-5"}
    path.write_text("")
    assert read_yaml(path) == {}


def test_saved_config_loads_back_equal(tmp_path):
    config = build_config(
        {"model": "m", "data": "d", "lora_keys": ["self_attn.q_proj"], "fields": {"prompt": "q"}},
        {"batch_size": "auto", "beta": 0.25},
    )
    save_config(config, tmp_path / "config.yaml")
    assert load_config_file(tmp_path / "config.yaml") == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["beta"] == 0.25


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.dictionaries(
        st.sampled_from(
            [
                "beta",
                "lora_rank",
                "label_smoothing",
                "iters",
                "loss",
                "lora_keys",
                "fields",
                "health",
                "bogus",
            ]
        ),
        json_values,
        max_size=3,
    )
)
def test_config_loader_never_crashes(tmp_path, values):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    try:
        build_config(read_yaml(path), {})
    except UserError as err:
        assert str(err)


def loss_problems_of(**values) -> list[str]:
    return loss_problems(TrainConfig(**values))


@pytest.mark.parametrize(
    "values",
    [
        {"loss": "apo_zero"},
        {"loss": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        {"loss": "exo_pair", "label_smoothing": 1e-3},
        {"loss": "discopop", "discopop_tau": 0.1},
        {"loss": "cpo", "cpo_alpha": 0.5, "label_smoothing": 0.1},
        {"loss": ["simpo", "sft"], "simpo_gamma": 1.0},
        {"loss": "orpo"},
        {"loss": "kto", "desirable_weight": 1.33, "batch_size": 8},
        {"loss": "sigmoid", "ld_alpha": 0.5, "use_weighting": True},
        {"loss": "aot_pair", "label_smoothing": 0.1},
    ],
)
def test_valid_loss_settings(values):
    assert loss_problems_of(**values) == []


@pytest.mark.parametrize(
    "values,message",
    [
        ({"loss": "dpo"}, "'loss' must be one of sigmoid, robust"),
        ({"loss": "Sigmoid"}, "got 'Sigmoid'"),
        ({"loss": []}, "'loss' must name at least one loss"),
        ({"loss": ["sigmoid", "sigmoid"]}, "'loss' names a loss twice"),
        ({"loss": ["sigmoid", "sft"], "loss_weights": [1.0]}, "needs one weight per loss (2"),
        ({"loss": ["sigmoid", "sft"], "loss_weights": [1.0, -1.0]}, "'loss_weights' must be >= 0"),
        ({"loss": ["kto", "sft"]}, "'kto' trains on unpaired completions"),
        ({"loss": "sft"}, "'sft' alone is supervised fine-tuning"),
        ({"loss": ["sigmoid", "simpo"]}, "mixes reference-free (simpo) and reference-based"),
        ({"loss": ["simpo", "cpo"]}, "whose rewards are measured differently"),
        ({"loss": "hinge", "label_smoothing": 0.1}, "'label_smoothing' applies to the sigmoid"),
        ({"loss": "exo_pair"}, "'exo_pair' needs 'label_smoothing' > 0"),
        ({"loss": "sigmoid", "discopop_tau": 0.1}, "'discopop_tau' applies to the discopop"),
        ({"loss": "discopop", "discopop_tau": 0.0}, "'discopop_tau' must be > 0"),
        ({"loss": "sigmoid", "cpo_alpha": 0.5}, "'cpo_alpha' applies to the cpo"),
        ({"loss": "sigmoid", "desirable_weight": 2.0}, "'desirable_weight' applies to the kto"),
        ({"loss": "kto", "undesirable_weight": 0.0}, "'undesirable_weight' must be > 0"),
        ({"loss": "kto", "batch_size": 1}, "'batch_size' must be at least 2"),
        ({"loss": "sigmoid", "simpo_gamma": 1.0}, "'simpo_gamma' applies to the simpo loss"),
        ({"loss": "orpo", "reference": "live"}, "'reference' does not apply"),
        ({"loss": "sigmoid", "ld_alpha": 1.5}, "'ld_alpha' must be in [0, 1]"),
        ({"loss": "simpo", "ld_alpha": 0.5}, "'ld_alpha' (LD-DPO) applies to pair losses"),
        ({"loss": "kto", "ld_alpha": 0.5}, "'ld_alpha' (LD-DPO) applies to pair losses"),
        ({"loss": "aot", "use_weighting": True}, "aot sorts the batch's pairs"),
        ({"loss": "kto", "use_weighting": True}, "'use_weighting' (WPO) weighs pairs; kto"),
    ],
)
def test_invalid_loss_settings_say_why(values, message):
    problems = loss_problems_of(**values)
    assert any(message in p for p in problems), problems


def test_yaml_reads_a_weighted_list_with_line_numbers(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("loss: [sigmoid, bco_pair, sft]\nloss_weights: [0.8, 0.2, 1]\n")
    values = read_yaml(path)
    assert values == {"loss": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1]}
    path.write_text("beta: 0.1\nloss_weights: [a, 1]\n")
    with pytest.raises(UserError) as caught:
        read_yaml(path)
    assert f"{path}:2: 'loss_weights' must be a list of numbers (or null)" in str(caught.value)


@pytest.mark.parametrize(
    "values",
    [{"loss": n} for n in LOSSES if n not in ("sft", "exo_pair")]
    + [
        {"loss": "exo_pair", "label_smoothing": 1e-3},
        {"loss": ["sigmoid", "sft"]},
        {"loss": "sigmoid", "ld_alpha": 0.5},
        {"loss": "sigmoid", "use_weighting": True},
        {"loss": ["sigmoid"], "loss_weights": [2.0]},
        {"loss": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    ],
)
def test_every_loss_and_option_the_step_runs_is_accepted(values):
    """The training step runs every loss of the catalog and every option (issue 20)."""
    config = build_config({}, values)
    assert config.loss == values["loss"] and loss_problems(config) == []


def test_paths_in_a_yaml_expand_the_home_folder_and_variables(tmp_path, monkeypatch):
    """`adapter_path: ~/runs/x` made a literal ./~/runs/x folder; now every path key is
    expanded as a shell would, and local ones are absolute."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SETS", str(tmp_path / "sets"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(
        "model: ~/models/m\nadapter_path: ~/runs/x\ninit_adapter: sft\n"
        "sample_prompts: $SETS/prompts.txt\n"
        "data:\n  - path: $SETS/a\n  - path: org/name\n"
    )
    config = load_config_file(path)
    assert config.model == f"{tmp_path}/home/models/m"
    assert config.adapter_path == f"{tmp_path}/home/runs/x"
    assert config.init_adapter == f"{tmp_path}/sft"
    assert config.sample_prompts == f"{tmp_path}/sets/prompts.txt"
    assert [entry["path"] for entry in config.data] == [f"{tmp_path}/sets/a", "org/name"]
    assert build_config({}, {"model": "org/model"}).model == "org/model"  # a Hub id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("adapter_path: ''\n", "config.yaml:1: 'adapter_path': an empty path"),
        ("iters: 2\nmodel: ' '\n", "config.yaml:2: 'model': an empty path"),
        ("data: $NOT_SET_HERE/d\n", "config.yaml:1: 'data': '$NOT_SET_HERE/d' uses $NOT_SET_HERE"),
    ],
)
def test_an_empty_or_unexpandable_path_in_a_yaml_names_its_line(
    tmp_path, monkeypatch, text, expected
):
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        read_yaml(tmp_path / "config.yaml")
    assert expected in str(err.value)


def test_the_pause_timeout_is_checked():
    assert build_config({}, {"pause_timeout_minutes": 0.5}).pause_timeout_minutes == 0.5
    for value in (-1.0, float("inf"), float("nan")):
        assert any(
            "'pause_timeout_minutes' must be >= 0" in p
            for p in problems_of({}, {"pause_timeout_minutes": value})
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("beta: .inf\n", "invalid configuration: 'beta' must be a finite number, got inf"),
     ("lora_scale: .nan\n", "'lora_scale' must be a finite number, got nan"),
     ("seed: -1\n", "'seed' must be in [0, 4294967295] (MLX's seeds), got -1"),
     (f"seed: {2**32}\n", "'seed' must be in [0, 4294967295]"),
     (f"iters: {2**40}\n", "'iters' must be at most 2147483647"),
     ("model: m\nlora_rank: " + "9" * 5000 + "\n", "c.yaml:2: a number of 5000 digits"),
     ("lora_keys: ['']\n", "'lora_keys' must name at least one module"),
     ("health:\n  kl_limit: .nan\n", "c.yaml:1: health.kl_limit: must be a finite number"),
     ("trust_remote_code: true\n", "c.yaml:1: 'trust_remote_code' is granted only by "
      "--trust-remote-code on the command line, never by a file")],
    ids=["beta-inf", "scale-nan", "seed-negative", "seed-huge", "iters-huge", "5000-digits",
         "empty-key", "health-nan", "trust"],
)  # fmt: skip
def test_a_yaml_value_no_setting_takes_is_one_line_naming_it(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        build_config(read_yaml(path), {})
    assert "\n" not in str(err.value) and expected in str(err.value)


def test_the_documented_health_keys_work(tmp_path):
    """docs/health.md's example section, as written there."""
    path = tmp_path / "c.yaml"
    path.write_text("health:\n  kl_limit: 80.0\n  collapse_fraction: 0.3\n  patience: 8\n")
    config = build_config(read_yaml(path), {})
    thresholds = thresholds_from_dict(config.health)
    assert (thresholds.kl_limit, thresholds.collapse_fraction, thresholds.patience) == (
        80.0,
        0.3,
        8,
    )


def test_a_run_record_ignores_its_trust_and_a_saved_config_never_grants_it(tmp_path):
    config = build_config({"model": "m", "data": "d", "trust_remote_code": True}, {})
    save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trust_remote_code"] is False
    (tmp_path / "config.yaml").write_text("model: m\ntrust_remote_code: true\n")
    assert load_config_file(tmp_path / "config.yaml", run_record=True).trust_remote_code is False
