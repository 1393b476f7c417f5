from .block import Block
from .mamba import BiMamba, Mamba
from .norm import RMSNorm

__all__ = ["Block", "BiMamba", "Mamba", "RMSNorm"]
