"""Paths from flags and YAML keys (mlx_dpo/paths.py): `~` and environment variables expanded
as a shell would, empty paths and unset variables refused, local folders absolute."""

from __future__ import annotations

import os

import pytest

from mlx_dpo import paths
from mlx_dpo.errors import UserError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_tilde_and_variables_are_expanded(home, tmp_path):
    assert paths.expand("~/runs/x", "--adapter-path") == f"{home}/runs/x"
    assert paths.expand("$RUNS/x", "--adapter-path") == f"{tmp_path}/runs/x"
    assert paths.expand("${RUNS}/x", "--adapter-path") == f"{tmp_path}/runs/x"


def test_local_paths_are_absolute(home, tmp_path):
    assert paths.expand_local("runs/x", "--output") == f"{tmp_path}/runs/x"
    assert paths.expand_local("~", "--output") == str(home)


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_path_is_refused_naming_the_setting(value):
    with pytest.raises(UserError, match="--adapter-path: an empty path"):
        paths.expand(value, "--adapter-path")


def test_an_unset_variable_is_refused(home, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(UserError, match=r"'adapter_path': .*\$NOT_SET_ANYWHERE, which is not set"):
        paths.expand("$NOT_SET_ANYWHERE/run", "'adapter_path'")


def test_a_hub_id_stays_as_written_and_a_local_source_becomes_absolute(home, tmp_path):
    assert paths.expand_source("org/model", "--model") == "org/model"
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert paths.expand_source("org/model", "--model") == f"{tmp_path}/org/model"


def test_shown_paths_never_keep_a_tilde(home):
    assert paths.shown("~/runs/x") == f"{home}/runs/x"
    assert os.path.isabs(paths.shown("runs/x"))


@pytest.mark.parametrize(
    "value", ["9" * 256, "runs/" + "x" * 300 + "/run", "/".join(["d" * 200] * 6)]
)
def test_a_name_no_file_system_takes_is_refused_naming_the_setting(value):
    """The deep fuzz profile found `--adapter-path=999…` (5000 digits) ending in a traceback
    (ENAMETOOLONG from the first stat); it is a user's mistake like an empty path."""
    with pytest.raises(UserError, match="--adapter-path: a path of .* file names take at most 255"):
        paths.expand(value, "--adapter-path")
    assert paths.expand("x" * 255, "--adapter-path") == "x" * 255
