"""mlx_dpo/hub.py: a dataset repository fetched with huggingface_hub; what the Hub refuses is
said as a user error naming the set (the offline cache itself: test_sources.py)."""

from __future__ import annotations

import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.sources import resolve_source

pytestmark = pytest.mark.usefixtures("use_hub_cache")


@pytest.mark.parametrize(
    "error,expected",
    [("GatedRepoError", "hf auth login"), ("RepositoryNotFoundError", "no such dataset")],
)
def test_gated_and_missing_sets_online(monkeypatch, error, expected):
    import huggingface_hub.errors as hub_errors

    from mlx_dpo import hub as mlx_hub

    class FakeResponse:
        status_code = 401
        headers: dict = {}
        request = None

    def refuse(*args, **kwargs):
        raise getattr(hub_errors, error)("refused", response=FakeResponse())

    monkeypatch.setattr(mlx_hub, "snapshot_download", refuse)
    with pytest.raises(UserError) as caught:
        resolve_source("someone/private-set")
    assert expected in str(caught.value) and "someone/private-set" in str(caught.value)
    assert "HF_HUB_OFFLINE" in str(caught.value)
