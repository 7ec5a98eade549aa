"""Operating-system and backend quirks, kept in one place.

Nothing here imports MLX at module level: `preload_blas` must run before the first
`import mlx`, and the dashboard imports this package without wanting MLX at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

DISABLE_BLAS_ENV = "MLX_DPO_NO_OPENBLAS"
BLAS_PATH_ENV = "MLX_DPO_BLAS"
# OpenBLAS reads it once, when the library loads: the kernels to use instead of its own guess.
CORETYPE_ENV = "OPENBLAS_CORETYPE"
# x86-64 feature flags (/proc/cpuinfo) -> the OpenBLAS kernels written for them, best first.
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
CORETYPES_BY_FLAGS = (
    (AVX512_FLAGS | {"avx512_bf16"}, "Cooperlake"),
    (AVX512_FLAGS, "SkylakeX"),
    (frozenset({"avx2", "fma"}), "Haswell"),
)

# Debian/Ubuntu's threaded OpenBLAS (package libopenblas0-pthread) and the usual fallbacks.
BLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

_loaded_blas: str | None = None


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The processor's feature flags from /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def coretype_for(flags: frozenset[str]) -> str | None:
    """The OpenBLAS kernels for a processor with these flags, or None to leave OpenBLAS's own
    choice. OpenBLAS guesses from the processor's model number and falls back to its slowest
    x86-64 kernels (Prescott: SSE3) for a model it does not know: Debian 12's 0.3.21 runs a
    2023 Xeon (AVX-512, bf16) that way at a sixth of the matrix-product speed it gets from its
    Cooperlake kernels. The flags say what the processor can run, whatever its model."""
    for needed, coretype in CORETYPES_BY_FLAGS:
        if needed <= flags:
            return coretype
    return None


@contextlib.contextmanager
def _coretype_while_loading():
    """OPENBLAS_CORETYPE set from the processor's flags while the library loads, unless the
    user set it; then removed again, so that child processes and other BLAS libraries
    (numpy's, PyTorch's) make their own choice."""
    chosen = None
    if CORETYPE_ENV not in os.environ and os.uname().machine in ("x86_64", "AMD64"):
        chosen = coretype_for(cpu_flags())
    if chosen:
        os.environ[CORETYPE_ENV] = chosen
    try:
        yield
    finally:
        if chosen:
            os.environ.pop(CORETYPE_ENV, None)


def preload_blas() -> str | None:
    """Load a system OpenBLAS globally so MLX's CPU backend uses it instead of its bundled
    reference BLAS (about 35x slower for matrix products).

    Only on Linux, only before MLX is imported, and not when MLX_DPO_NO_OPENBLAS=1.
    MLX_DPO_BLAS names a library explicitly; OPENBLAS_CORETYPE, when set, names the kernels
    (else they are chosen from the processor's flags: coretype_for). Returns the path loaded,
    or None.
    """
    global _loaded_blas
    if _loaded_blas is not None:
        return _loaded_blas
    if not sys.platform.startswith("linux") or os.environ.get(DISABLE_BLAS_ENV, "") not in (
        "",
        "0",
    ):
        return None
    if "mlx.core" in sys.modules:
        return None
    explicit = os.environ.get(BLAS_PATH_ENV)
    candidates = (explicit,) if explicit else BLAS_CANDIDATES
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            try:
                with _coretype_while_loading():
                    ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            _loaded_blas = candidate
            return candidate
    return None


def openblas_kernels() -> str | None:
    """The kernels the loaded OpenBLAS runs (its core name, e.g. "Cooperlake"), or None."""
    if not _loaded_blas:
        return None
    try:
        name = ctypes.CDLL(_loaded_blas).openblas_get_corename
    except (OSError, AttributeError):
        return None
    name.restype = ctypes.c_char_p
    return name().decode(errors="replace")


def blas_status() -> str:
    if _loaded_blas:
        kernels = openblas_kernels()
        return f"OpenBLAS ({_loaded_blas}{f', {kernels} kernels' if kernels else ''})"
    if sys.platform == "darwin":
        return "Accelerate"
    return "MLX's bundled reference BLAS (slow: install libopenblas0-pthread)"


def is_metal() -> bool:
    import mlx.core as mx

    return mx.metal.is_available()


def device_memory_limit() -> int:
    """Bytes the accelerator can use: Metal's recommended working set, else physical memory."""
    import mlx.core as mx

    if is_metal():
        info = mx.device_info()
        if "max_recommended_working_set_size" in info:
            return int(info["max_recommended_working_set_size"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def set_wired_limit() -> None:
    """Wire the model's memory on Metal as mlx-lm does; a no-op on other backends."""
    import mlx.core as mx

    if not is_metal():
        return
    limit = device_memory_limit()
    if limit:
        mx.set_wired_limit(limit)


def peak_memory_gb() -> float:
    import mlx.core as mx

    return mx.get_peak_memory() / 1e9


_default_cache_limit: int | None = None


def set_cache_limit(limit_bytes: int) -> None:
    """Bound MLX's buffer cache (freed buffers kept for reuse). mx.set_cache_limit exists on
    every backend of recent MLX; older ones had it under mx.metal only, and there it is
    skipped without Metal. The first call remembers the default for restore_cache_limit."""
    global _default_cache_limit
    import mlx.core as mx

    setter = getattr(mx, "set_cache_limit", None)
    if setter is None and is_metal():
        setter = mx.metal.set_cache_limit
    if setter is None:
        return
    previous = setter(int(limit_bytes))
    if _default_cache_limit is None:
        _default_cache_limit = previous


def restore_cache_limit() -> None:
    global _default_cache_limit
    if _default_cache_limit is not None:
        set_cache_limit(_default_cache_limit)
        _default_cache_limit = None


def return_free_memory() -> None:
    """Hand the heap memory Python has freed back to the system (glibc's malloc_trim), so a
    large data load leaves only what it keeps resident; nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
