"""DNA utilities: the fixed-id character tokenizer and an order-k Markov bits/base baseline.

Imports only numpy and torch; pysam (for FASTA/BAM access) must be imported inside the functions that use it."""
from .markov import MarkovModel, markov_baseline
from .tokenizer import DNATokenizer

__all__ = ["DNATokenizer", "MarkovModel", "markov_baseline"]
