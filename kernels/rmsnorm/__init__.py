"""Residual add + RMSNorm (the pre-norm of every block)."""
from .naive import add_rmsnorm_naive

__all__ = ["add_rmsnorm_naive"]
