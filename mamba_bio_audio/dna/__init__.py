"""DNA utilities: the fixed-id character tokenizer, genome windows and the next-base dataset, indexed FASTA access
(`mamba_bio_audio.dna.fasta`) and an order-k Markov bits/base baseline.

Imports only numpy and torch; pysam is imported inside the functions that read FASTA files."""
from .markov import MarkovModel, markov_baseline
from .tokenizer import DNATokenizer
from .windows import GenomeWindows, Interval, Window, read_bed, split_chromosomes, tile

__all__ = ["DNATokenizer", "GenomeWindows", "Interval", "MarkovModel", "Window", "markov_baseline", "read_bed",
           "split_chromosomes", "tile"]
