"""One position of autoregressive sampling: draw (Gumbel-max from given noise) or force a token, its log-probability."""
from .naive import sample_step_naive

__all__ = ["sample_step_naive"]
