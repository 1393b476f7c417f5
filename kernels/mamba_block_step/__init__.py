"""One token through a pre-norm residual Mamba block (norm, in_proj, conv, x_proj, Δ, state update, gate, out_proj)."""
from .naive import mamba_block_step_naive

__all__ = ["mamba_block_step_naive"]
