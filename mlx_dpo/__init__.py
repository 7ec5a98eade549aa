"""mlx-dpo: Direct Preference Optimization with LoRA on MLX."""

from mlx_dpo.platform import preload_blas

# Before anything in the package imports MLX (see platform.preload_blas).
preload_blas()

__version__ = "0.1.0"
