"""Causal depthwise conv1d (Mamba's short convolution) and its single-step update."""
from .naive import causal_conv1d_naive, causal_conv1d_update_naive

__all__ = ["causal_conv1d_naive", "causal_conv1d_update_naive"]
