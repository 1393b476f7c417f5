"""Generation from a causal Mamba U-Net: every position of every row in one persistent kernel (`fused`), against
the model's own step and draw (`naive`)."""
from .naive import unet_generate_naive

__all__ = ["unet_generate_naive"]
