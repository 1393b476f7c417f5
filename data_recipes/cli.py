"""`mba data ...`: prepare data sets. Each recipe is a subcommand of this group.

    mba data index FILE    index a FASTA for random access (a gzip file is first recompressed with bgzip under the
                           same name; the sequence is unchanged)
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    recipes = parser.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    index = recipes.add_parser("index", help="index a FASTA (plain, bgzip, or gzip: recompressed with bgzip first)",
                               description=_index.__doc__)
    index.add_argument("fasta", help="FASTA file (.fa, .fa.gz)")
    index.add_argument("--check", action="store_true",
                       help="also check every line (headers, line lengths, characters) and list the records")
    index.set_defaults(_recipe=_index)


def run(args: argparse.Namespace) -> int:
    return args._recipe(args)


def _index(args: argparse.Namespace) -> int:
    """Make a FASTA readable at random positions: a gzip file is rewritten as bgzip (same name, same sequence), then
    the .fai (and, compressed, .gzi) index is built next to it. The files are written under temporary names and
    renamed, so an interrupted run leaves the original or the finished result."""
    from mamba_bio_audio.dna.fasta import recompress_and_index, validate_fasta

    for path in recompress_and_index(args.fasta):
        print(f"wrote {path}")
    if args.check:
        lengths = validate_fasta(args.fasta)
        print(f"{args.fasta}: {len(lengths)} record(s), {sum(lengths.values()):,} bases")
        for name, length in lengths.items():
            print(f"  {name}\t{length}")
    return 0
