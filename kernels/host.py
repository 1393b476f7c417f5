"""Integer helpers for the host side of kernel launches (grids, tile counts, block sizes).

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
