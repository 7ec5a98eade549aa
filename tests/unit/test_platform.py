"""OpenBLAS is loaded before MLX on Linux, and can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlx_dpo import platform

PROBE = "import mlx_dpo, mlx_dpo.platform as p; print(p._loaded_blas)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_openblas_is_loaded_and_can_be_disabled():
    env = {k: v for k, v in os.environ.items() if k != platform.DISABLE_BLAS_ENV}
    loaded = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert "openblas" in loaded.stdout.lower()
    env[platform.DISABLE_BLAS_ENV] = "1"
    disabled = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env
    )
    assert disabled.stdout.strip() == "None"


def test_metal_only_calls_are_guarded():
    platform.set_wired_limit()  # no Metal here: must not raise
    assert platform.device_memory_limit() > 0


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse sse2 {flags}
"""


@pytest.mark.parametrize(
    ("flags", "kernels"),
    [
        ("avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16", "Cooperlake"),
        ("avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl", "SkylakeX"),
        ("avx avx2 fma avx512f", "Haswell"),  # AVX-512 without the parts SkylakeX's use
        ("avx avx2 fma", "Haswell"),
        ("avx", None),
    ],
)
def test_kernels_follow_the_processors_flags(flags, kernels):
    assert platform.coretype_for(platform.cpu_flags(CPUINFO.format(flags=flags))) == kernels


def test_no_cpuinfo_means_no_flags():
    assert platform.cpu_flags("processor\t: 0\n") == frozenset()


KERNELS_PROBE = (
    "import os, mlx_dpo, mlx_dpo.platform as p; "
    "print(p.openblas_kernels(), os.environ.get('OPENBLAS_CORETYPE'))"
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 Linux"
)
def test_openblas_runs_the_kernels_the_processor_can_run():
    """OpenBLAS 0.3.21 falls back to Prescott (SSE3) kernels on a processor model it does not
    know: a sixth of the speed on this machine's Xeon. The package picks them by the flags,
    leaves the variable unset for child processes, and a user's choice wins."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "MLX_DPO_BLAS")}
    env.pop(platform.DISABLE_BLAS_ENV, None)
    expected = platform.coretype_for(platform.cpu_flags())
    found = subprocess.run(
        [sys.executable, "-c", KERNELS_PROBE], capture_output=True, text=True, env=env
    )
    kernels, left_set = found.stdout.split()
    assert left_set == "None"
    if expected is not None:
        assert kernels == expected
    env["OPENBLAS_CORETYPE"] = "Sandybridge"
    chosen = subprocess.run(
        [sys.executable, "-c", KERNELS_PROBE], capture_output=True, text=True, env=env
    )
    assert chosen.stdout.split() == ["Sandybridge", "Sandybridge"]
