"""Unit tests of mlx_dpo/errors.py: a user's mistake as one message listing its problems, and
the machine running out of memory or disk told apart from bugs."""

from __future__ import annotations

import errno

from mlx_dpo.errors import UserError, is_out_of_memory, resource_failure


def test_a_user_error_lists_its_problems_under_the_message():
    assert str(UserError("data.jsonl: 2 problem(s)", ["a", "b"])) == (
        "data.jsonl: 2 problem(s)\n  a\n  b"
    )
    assert str(UserError("alone")) == "alone" and UserError("alone").problems == []


def test_a_long_list_of_problems_is_cut_at_30_and_says_how_many_more():
    text = str(UserError("bad", [f"p{i}" for i in range(45)]))
    lines = text.splitlines()
    assert lines[0] == "bad" and lines[1] == "  p0" and lines[30] == "  p29"
    assert lines[-1] == "  ... and 15 more" and len(lines) == 32


def test_memory_and_disk_failures_are_told_apart_from_bugs():
    assert "out of memory" in resource_failure(MemoryError())
    assert "--batch-size" in resource_failure(RuntimeError("[metal::malloc] Unable to allocate"))
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/adapters.safetensors")
    said = resource_failure(full)
    assert said.startswith("disk full writing /runs/a/adapters.safetensors") and "--resume" in said
    short = RuntimeError("[write] Unable to write 1024 bytes to file.")
    assert resource_failure(short).startswith("disk full (")
    assert resource_failure(OSError(errno.ENOENT, "No such file")) is None
    assert resource_failure(ValueError("shapes do not match")) is None
    assert is_out_of_memory(
        RuntimeError("[METAL] Command buffer execution failed: Insufficient Memory")
    )
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(OSError(28, "No space"))
