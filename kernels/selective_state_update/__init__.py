"""One decoding step of the selective scan."""
from .naive import selective_state_update_naive

__all__ = ["selective_state_update_naive"]
