"""Helpers for the host side of kernel launches: integers (grids, tile counts, block sizes) and the inputs' dtype.

Plain Python on purpose: `triton.cdiv` and `triton.next_power_of_2` are constexpr functions, and each call from host
code goes through Triton's wrapper (~5–7 µs). A scan's fwd+bwd made 15 such calls, about a tenth of its host time
at short L, where that host time is what the call takes (BENCHMARKS.md: the L = 2048 rows)."""
from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for positive b."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n (1 for n ≤ 1)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def floor_power_of_2(n: int) -> int:
    """The largest power of two ≤ n (1 for n ≤ 1)."""
    return 1 << n.bit_length() - 1 if n > 1 else 1


def cast(x, dtype):
    """Tensor x in dtype, contiguous: x itself when it already is (`Tensor.to` and `.contiguous` still dispatch an op
    each, several µs of host time per call on a GPU host, and a short kernel call's time is its host work)."""
    return x if x.dtype == dtype and x.is_contiguous() else x.to(dtype).contiguous()
