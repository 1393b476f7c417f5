"""mamba_bio_audio: Mamba selective state space models for DNA and raw audio.

Importing this package needs only torch; domain libraries (pysam, soundfile, torchaudio, biopython, lightning)
are imported where they are used."""
from .config import MambaConfig
from .generation import InferenceCache, generate
from .models import MambaBackbone, MambaForSequenceClassification, MambaLMHeadModel
from .modules import BiMamba, Block, Mamba, RMSNorm

__version__ = "0.1.0"

__all__ = ["BiMamba", "Block", "InferenceCache", "Mamba", "MambaBackbone", "MambaConfig",
           "MambaForSequenceClassification", "MambaLMHeadModel", "RMSNorm", "generate", "__version__"]
