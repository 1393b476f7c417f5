"""Selective scan: `naive.py` is the definition (a loop over tokens), `chunked.py` the PyTorch implementation."""
from .chunked import selective_scan_chunked
from .naive import selective_scan_naive

__all__ = ["selective_scan_chunked", "selective_scan_naive"]
