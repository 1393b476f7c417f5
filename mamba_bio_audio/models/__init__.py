from .backbone import MambaBackbone
from .classifier import MambaForSequenceClassification
from .lm import MambaLMHeadModel

__all__ = ["MambaBackbone", "MambaForSequenceClassification", "MambaLMHeadModel"]
