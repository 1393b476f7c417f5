from .backbone import MambaBackbone
from .classifier import MambaForSequenceClassification
from .lm import MambaLMHeadModel
from .presets import DNA_MODEL_SIZES, dna_mamba_config, dna_transformer_config
from .transformer import TransformerConfig, TransformerLM

__all__ = ["DNA_MODEL_SIZES", "MambaBackbone", "MambaForSequenceClassification", "MambaLMHeadModel",
           "TransformerConfig", "TransformerLM", "dna_mamba_config", "dna_transformer_config"]
