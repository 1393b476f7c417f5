"""`mba dna ...`: DNA pipelines on Lightning.

    mba dna pretrain --config FILE [--trainer.max_steps 100 ...]
    mba dna pretrain --fasta GENOME [--bed INTERVALS] --seq-len 1024 --model-size 1.4M --max-steps N
    mba dna evaluate --ckpt CKPT --fasta GENOME [--bed INTERVALS] [--split test | --region CHR:START-END]
    mba dna generate --ckpt CKPT --prompt ACGT... --length N [--out FILE.fa] [--device cuda]
    mba dna context-sweep --fasta GENOME --lengths 1024,4096,16384,65536 --seeds 0,1,2 [--parallel 3]
    mba dna species --data-dir GENOMES --seq-len 16384 --model-size 1.4M [--bidirectional] [--rc-equivariant]
                    [--pooling last|mean|max] --max-steps N
    mba dna finetune --ckpt PRETRAINED --train T --valid V [--test X] [--resume RUN/checkpoints/last.ckpt]
    mba dna classify --ckpt CKPT --fasta IN [--out OUT.tsv]
    mba dna embed --ckpt CKPT --fasta IN --out OUT.npy|OUT.npz|OUT.h5 [--per-base] [--batch-size 16]

Configuration goes through LightningCLI: a YAML file (see pipelines/configs/) and/or --data.*, --model.*,
--trainer.* options after the direct ones; `--print-config` shows the resolved configuration.
"""
from __future__ import annotations

import argparse
import sys
import warnings


PASS_THROUGH_HELP = ("Options not listed above go to LightningCLI: --data.*, --model.*, --trainer.* (e.g.\n"
                     "--trainer.max_time 00:01:00:00). On several devices or machines: --devices N, --num-nodes N and\n"
                     "--strategy ddp|fsdp, short for --trainer.devices, --trainer.num_nodes and --trainer.strategy.")


def training_command(parser: argparse.ArgumentParser, task, **defaults) -> None:
    """Make `parser` a training command: it runs `task`, the options it does not know go to LightningCLI, and its
    help says so."""
    parser.epilog = PASS_THROUGH_HELP
    parser.set_defaults(_task=task, _pass_through=True, **defaults)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    pretrain = tasks.add_parser("pretrain", help="next-base pretraining on an indexed FASTA",
                                description=_pretrain.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_argument("--config", help="YAML file of data, model and trainer settings (LightningCLI format), or "
                                           "the name of a shipped one (pipelines/configs/dna_pretrain/NAME.yaml)")
    pretrain.add_argument("--fasta", help="genome FASTA (plain or bgzip; indexed when needed)")
    pretrain.add_argument("--bed", help="intervals with a train/valid/test column (else chromosomes are cut 90/5/5)")
    pretrain.add_argument("--seq-len", type=int, help="training length in bases")
    pretrain.add_argument("--batch-size", type=int)
    pretrain.add_argument("--model-size", help="a paper size: 0.26M 0.68M 1.4M 3.5M 7M 19M 40M")
    pretrain.add_argument("--arch", choices=["mamba", "transformer"])
    pretrain.add_argument("--max-steps", type=int)
    pretrain.add_argument("--out", help="run folder: checkpoints, CSV and TensorBoard logs (default runs/dna)")
    pretrain.add_argument("--resume", help="checkpoint to resume from (step, learning rate and data position)")
    pretrain.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    training_command(pretrain, _pretrain)

    evaluate = tasks.add_parser("evaluate", help="bits per base of a checkpoint on a split or a region",
                                description=_evaluate.__doc__)
    evaluate.add_argument("--ckpt", required=True, help="a checkpoint of `mba dna pretrain`")
    evaluate.add_argument("--fasta", required=True)
    evaluate.add_argument("--bed", help="intervals with a split column (else chromosomes are cut 90/5/5)")
    place = evaluate.add_mutually_exclusive_group()
    place.add_argument("--split", choices=["train", "valid", "test"], default="test")
    place.add_argument("--region", help="CHR:START-END (0-based, end exclusive) instead of a split")
    evaluate.add_argument("--seq-len", type=int, help="window length (default: the checkpoint's)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--scored-len", type=int,
                          help="score only the last N targets of each window, the windows ending every N bases, the "
                               "rest of each window being context (compares lengths on the same bases)")
    evaluate.set_defaults(_task=_evaluate)

    generate = tasks.add_parser("generate", help="sample DNA from a checkpoint, written as FASTA",
                                description=_generate.__doc__)
    generate.add_argument("--ckpt", required=True)
    generate.add_argument("--prompt", required=True, help="DNA to continue (A/C/G/T/N, any case)")
    generate.add_argument("--length", type=int, required=True, help="bases to add")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", help="FASTA file to write (default: standard output)")
    generate.add_argument("--name", default="generated", help="FASTA record name")
    generate.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if there is one)")
    generate.add_argument("--no-cuda-graphs", action="store_true", help="step eagerly on the GPU too")
    generate.set_defaults(_task=_generate)

    export = tasks.add_parser("export", help="write a pretraining checkpoint's model as a saved model directory",
                              description=_export.__doc__)
    export.add_argument("--ckpt", required=True)
    export.add_argument("--out", required=True, help="directory to write (created if missing)")
    export.add_argument("--layout", choices=["ours", "reference"], default="ours",
                        help="ours: config.json + model.safetensors (MambaLMHeadModel.from_pretrained); reference: "
                             "config.json + pytorch_model.bin as the paper's reference implementation reads them")
    export.set_defaults(_task=_export)

    species = tasks.add_parser("species", help="classify DNA windows by species (the great-ape task)",
                               description=_species.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    species.add_argument("--config", help="YAML file (LightningCLI format) or the name of a shipped one "
                                          "(pipelines/configs/dna_species/NAME.yaml)")
    species.add_argument("--data-dir", help="genomes: DIR/<species>.fa[.gz] or DIR/<species>/<chrom>.fa[.gz]")
    species.add_argument("--seq-len", type=int, help="window length in bases")
    species.add_argument("--batch-size", type=int)
    species.add_argument("--model-size", help="a paper size: 0.26M 0.68M 1.4M 3.5M 7M 19M 40M")
    species.add_argument("--bidirectional", action="store_true", help="BiMamba blocks, mean pooling")
    species.add_argument("--rc-equivariant", action="store_true",
                         help="the same weights on both strands (Caduceus-PS parameter sharing; each strand read "
                              "causally, or by BiMamba with --bidirectional as in Caduceus), mean pooling")
    species.add_argument("--pooling", choices=("last", "mean", "max"),
                         help="how windows are read out (default: last position if causal, else mean; max learns "
                              "best at small budgets, BENCHMARKS.md)")
    species.add_argument("--max-steps", type=int)
    species.add_argument("--out", help="run folder (default runs/species)")
    species.add_argument("--resume", help="checkpoint to resume from")
    species.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    training_command(species, _species)

    finetune = tasks.add_parser("finetune", help="fine-tune a pretrained Mamba on labelled sequences",
                                description=_finetune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_argument("--ckpt", help="pretrained model: a `mba dna pretrain` checkpoint or a save_pretrained "
                                         "folder (else --model.model_size / --model.config from scratch)")
    finetune.add_argument("--train", help="CSV/TSV (sequence,label), FASTA (label= in headers) or Genomic "
                                          "Benchmarks split folder (class/*.txt)")
    finetune.add_argument("--valid", help="same formats; early stopping and the best checkpoint use its MCC")
    finetune.add_argument("--test", help="same formats; scored with the best checkpoint")
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--max-epochs", type=int)
    finetune.add_argument("--lr", type=float)
    finetune.add_argument("--out", help="run folder (default runs/finetune)")
    finetune.add_argument("--resume", help="checkpoint to resume from (epoch, step, learning rate and data position)")
    finetune.add_argument("--config", help="YAML file (LightningCLI format)")
    finetune.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    training_command(finetune, _finetune)

    kmer = tasks.add_parser("kmer-baseline", help="k-mer logistic regression on labelled sequences (a baseline)",
                            description=_kmer_baseline.__doc__)
    kmer.add_argument("--train", required=True)
    kmer.add_argument("--valid", required=True)
    kmer.add_argument("--test", required=True)
    kmer.add_argument("--k", type=int, default=6, help="largest k (all k-mers from 1 to k; default 6)")
    kmer.add_argument("--both-strands", action="store_true",
                      help="count k-mers on each sequence and on its reverse complement (strand-symmetric features)")
    kmer.set_defaults(_task=_kmer_baseline)

    classify = tasks.add_parser("classify", help="class probabilities of every record of a FASTA (TSV)",
                                description=_classify.__doc__)
    classify.add_argument("--ckpt", required=True, help="a checkpoint of `mba dna species` (a DNAClassifier)")
    classify.add_argument("--fasta", required=True, help="records to classify (plain or bgzip; indexed when needed)")
    classify.add_argument("--out", help="TSV file to write (default: standard output)")
    classify.add_argument("--chunk-len", type=int, default=1 << 16,
                          help="bases per streamed chunk of a causal model (memory bound; default 65536)")
    classify.add_argument("--window", type=int, help="window of a bidirectional model (default: its training length)")
    classify.set_defaults(_task=_classify)

    embed = tasks.add_parser("embed", help="pooled (or per-base) embeddings of every record of a FASTA "
                                           "(.npy, .npz or .h5)", description=_embed.__doc__)
    embed.add_argument("--ckpt", required=True,
                       help="a checkpoint of `mba dna species` or `finetune` (a DNAClassifier)")
    embed.add_argument("--fasta", required=True)
    embed.add_argument("--out", required=True,
                       help="FILE.npy (float32, records × width; FILE.tsv names the rows), or FILE.npz / FILE.h5 "
                            "(embeddings, ids, lengths, and per_base/<record> with --per-base); the suffix decides")
    embed.add_argument("--per-base", action="store_true",
                       help="also the per-base hidden states, one (length × width) array per record (.npz or .h5)")
    embed.add_argument("--batch-size", type=int, default=16,
                       help="records no longer than --chunk-len (--window) embedded at a time (default 16)")
    embed.add_argument("--chunk-len", type=int, default=1 << 16,
                       help="bases per streamed chunk of a causal model (memory bound; default 65536)")
    embed.add_argument("--window", type=int, help="window of a bidirectional model (default: its training length)")
    embed.set_defaults(_task=_embed)

    sweep = tasks.add_parser("context-sweep", help="held-out bits per base against training length, with a plot",
                             description=_context_sweep.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--task", choices=["pretrain", "species"], default="pretrain",
                       help="pretrain: held-out bits per base on --fasta; species: test accuracy on --data-dir")
    source = sweep.add_mutually_exclusive_group(required=True)
    source.add_argument("--fasta", help="genome FASTA (plain or bgzip; indexed when needed), for --task pretrain")
    source.add_argument("--data-dir", help="folder of genomes, one per species, for --task species")
    sweep.add_argument("--lengths", type=_int_list, default=[1024, 4096, 16384, 65536],
                       help="comma-separated training lengths (default 1024,4096,16384,65536)")
    sweep.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    sweep.add_argument("--tokens-per-step", type=int, default=65536,
                       help="batch × length of every run (a multiple of every length; default 65536)")
    sweep.add_argument("--batch-size", type=int, help="instead: the same batch at every length")
    sweep.add_argument("--max-steps", type=int, default=400, help="optimizer steps of every run (default 400)")
    sweep.add_argument("--scored-len", type=int, default=1024,
                       help="targets scored at the end of each valid/test window (default 1024)")
    sweep.add_argument("--d-model", type=int, default=128)
    sweep.add_argument("--n-layer", type=int, default=6)
    sweep.add_argument("--parallel", type=int, default=1, help="runs at a time (small models can share a GPU)")
    sweep.add_argument("--out", default="runs/context-sweep", help="folder of the runs, results.csv and the plot")
    training_command(sweep, _context_sweep)  # the passed-through options go to every run


def run(args: argparse.Namespace) -> int:
    return args._task(args)


def _lightning_args(pipeline: str, args: argparse.Namespace, direct: dict) -> list[str]:
    """LightningCLI arguments: the config file (a path or a shipped name), the direct options that were given, the
    passed-through ones, and --print_config."""
    cli_args = ["--config", str(shipped_config(pipeline, args.config))] if args.config else []
    for key, value in direct.items():
        if value is not None:
            cli_args += [f"--{key}", str(value)]
    cli_args += args.extra
    if args.print_config:
        cli_args.append("--print_config")
    return cli_args


def _fit(cli, resume: str | None) -> None:
    """cli.trainer.fit, resuming from `resume`. A SIGTERM or Ctrl+C (after LastCheckpoint saved the state; also a
    DataLoader worker that SIGTERM killed) becomes a TrainingInterrupted that names the checkpoint to resume from.
    Running out of accelerator memory (a length warm-up's longer stage, a larger batch) becomes a TrainingOutOfMemory
    that names the step, the batch's shape, the last checkpoint and the ways on: recomputing each block in the
    backward (--model.gradient_checkpointing true, which a resume may add) or a smaller batch accumulated to the same
    size (a new run: a resume keeps its batch)."""
    import torch

    from .common import LastCheckpoint

    def interrupted(err: BaseException) -> None:
        """Raise TrainingInterrupted from `err` if LastCheckpoint saved the state on an interruption."""
        from mamba_bio_audio.errors import TrainingInterrupted

        saved = [c.saved_on_interrupt for c in cli.trainer.callbacks
                 if isinstance(c, LastCheckpoint) and c.saved_on_interrupt]
        if saved:
            step, path = saved[0]
            raise TrainingInterrupted(f"interrupted after step {step}; its state is saved in {path}: continue "
                                      f"exactly there with the same command and --resume {path}") from err

    try:
        with warnings.catch_warnings():
            # Lightning warns that a resume from mid-epoch "can cause unreliable results" unless the DataLoader keeps
            # a state of its own. Every pipeline's training loader resumes exactly through EpochSampler's skip, taken
            # from the trainer's progress (`common.resume_point`; the resume tests check the same parameters as an
            # uninterrupted run), so the warning would only mislead.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    except SystemExit as err:  # SIGTERM (Lightning's SIGTERMException) or Ctrl+C (Lightning exits with 1)
        interrupted(err)
        raise
    except torch.OutOfMemoryError as err:
        from mamba_bio_audio.cli import _one_line
        from mamba_bio_audio.errors import TrainingOutOfMemory

        trainer, data = cli.trainer, cli.datamodule
        shape_of = getattr(data, "current_shape", None)
        if shape_of is not None:
            length, batch = shape_of()
            shape = f"batches of {batch} × {length:,} tokens"
        else:
            shape = f"batches of {getattr(data, 'batch_size', '?')}"
        checkpoint = trainer.checkpoint_callback
        last = checkpoint.last_model_path if checkpoint is not None else ""
        kept = (f"the last checkpoint, {last}, is kept: resume from it with --resume {last}" if last else
                "no checkpoint was saved yet")
        checkpointing = "" if getattr(cli.model.hparams, "gradient_checkpointing", True) else \
            " add --model.gradient_checkpointing true (each block keeps only its input and is recomputed in the " \
            "backward), or"
        cause = ". ".join(_one_line(err).split(". ")[:2])  # "CUDA out of memory. Tried to allocate 2.00 GiB"
        raise TrainingOutOfMemory(
            f"out of accelerator memory at step {trainer.global_step} (epoch {trainer.current_epoch}), training on "
            f"{shape}; {kept}. To go on:{checkpointing} start again with a smaller --batch-size and "
            f"--trainer.accumulate_grad_batches to keep the batch size ({cause})") from err
    except RuntimeError as err:  # a DataLoader worker lost to that SIGTERM (LastCheckpoint saved then too)
        interrupted(err)
        raise


def _fit_then_test(cli, resume: str | None) -> dict:
    """Fit (resuming from `resume`; `_fit`), then test the best checkpoint (the last weights if there is none).
    Under FSDP the test runs on a fresh copy of the module: fit leaves the trained one's parameters as this rank's
    flattened shards, which the test stage cannot wrap again nor load a checkpoint into."""
    from lightning.pytorch.strategies import FSDPStrategy

    _fit(cli, resume)
    checkpoint = cli.trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    model = cli.model
    if isinstance(cli.trainer.strategy, FSDPStrategy):
        # a fresh module from the init arguments (not LightningCLI's _instantiator entry)
        model = type(model)(**{k: v for k, v in model.hparams.items() if not k.startswith("_")})
        best = best or (checkpoint.last_model_path if checkpoint is not None else None)
        if not best:
            raise RuntimeError("testing after an FSDP fit needs a checkpoint of the trained weights; none was saved")
    try:
        return cli.trainer.test(model, datamodule=cli.datamodule, ckpt_path=best)[0]
    except SystemExit as err:  # SIGTERM or Ctrl+C while testing: training is done, its last checkpoint kept
        from mamba_bio_audio.errors import TrainingInterrupted

        last = checkpoint.last_model_path if checkpoint is not None else ""
        raise TrainingInterrupted("interrupted while testing, after training finished; the same command with "
                                  f"--resume {last or 'RUN/checkpoints/last.ckpt'} tests it") from err


def _species(args: argparse.Namespace) -> int:
    """Train a species classifier on windows of several genomes (default split: HyenaDNA's chromosomes; length
    warm-up from 2^14, one epoch per doubling), keeping the last and the best (validation accuracy) checkpoints and
    CSV + TensorBoard logs in the run folder, then report test accuracy per species with the best checkpoint and
    write RUN/confusion_test.csv and .png (RUN/confusion_valid.* is the last validation epoch's). Other options go to
    LightningCLI (--data.*, --model.*, --trainer.*)."""
    from .dna_species import accuracy_table, build_cli

    direct = {"data.data_dir": args.data_dir, "data.seq_len": args.seq_len, "data.batch_size": args.batch_size,
              "model.model_size": args.model_size, "model.bidirectional": "true" if args.bidirectional else None,
              "model.rc_equivariant": "true" if args.rc_equivariant else None, "model.pooling": args.pooling,
              "trainer.max_steps": args.max_steps}
    cli = build_cli(_lightning_args("dna_species", args, direct), run_dir=args.out or "runs/species")
    metrics = _fit_then_test(cli, args.resume)
    print(accuracy_table(metrics, cli.datamodule.class_names))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    """Train a Mamba (or Transformer++) LM by next-base prediction, keeping the last and the best checkpoint (by
    validation bits per base, written atomically) and CSV + TensorBoard logs in the run folder, then report test
    bits per base with the best checkpoint. Interrupted runs continue with --resume RUN/checkpoints/last.ckpt."""
    from .dna_pretrain import build_cli

    direct = {"data.fasta": args.fasta, "data.bed": args.bed, "data.seq_len": args.seq_len,
              "data.batch_size": args.batch_size, "model.model_size": args.model_size, "model.arch": args.arch,
              "trainer.max_steps": args.max_steps}
    cli = build_cli(_lightning_args("dna_pretrain", args, direct), run_dir=args.out or "runs/dna")
    _fit_then_test(cli, args.resume)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Bits per base (and perplexity) of a checkpoint on a split of a genome, or on one region, in windows of the
    checkpoint's training length (N and off-chromosome targets ignored)."""
    import lightning as L

    from mamba_bio_audio.dna.windows import Interval

    from .dna_pretrain import DNALanguageModel, DNAPretrainData

    model = DNALanguageModel.load_from_checkpoint(args.ckpt, map_location="cpu")
    seq_len = args.seq_len or _checkpoint_seq_len(args.ckpt)
    data = DNAPretrainData(args.fasta, seq_len=seq_len, batch_size=args.batch_size, bed=args.bed,
                           eval_scored_len=args.scored_len)
    data.setup()
    split = args.split
    if args.region:
        chrom, start, end = _region(args.region)
        if chrom not in data.chrom_lengths or end > data.chrom_lengths[chrom]:
            raise ValueError(f"--region {args.region}: not within {args.fasta} "
                             f"({chrom} is {data.chrom_lengths.get(chrom, 'not a record')})")
        data.select({"test": [Interval(chrom, start, end)]})
        split = "test"
    elif split != "test":
        data.select({"test": data.intervals(split)})
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                        precision="bf16-mixed" if _cuda() else "32-true")
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    where = args.region or f"the {split} split"
    scored = f", last {args.scored_len} scored" if args.scored_len else ""
    print(f"{args.fasta}, {where}, windows of {seq_len}{scored}: {result['test/bits_per_base']:.4f} bits/base "
          f"(perplexity {result['test/perplexity']:.4f})")
    return 0


def _export(args: argparse.Namespace) -> int:
    """Write the language model of a `mba dna pretrain` checkpoint as a saved model directory, each file atomically:
    `--layout ours` for `MambaLMHeadModel.from_pretrained`, `--layout reference` for the paper's reference
    implementation (`mamba_ssm`'s MambaLMHeadModel.from_pretrained reads it; Mamba language models only)."""
    from .dna_pretrain import DNALanguageModel

    model = DNALanguageModel.load_from_checkpoint(args.ckpt, map_location="cpu").model
    if not hasattr(model, "save_pretrained"):
        raise ValueError(f"{args.ckpt}: a {type(model).__name__} checkpoint; export writes Mamba language models")
    print(f"wrote {model.save_pretrained(args.out, layout=args.layout)} ({args.layout} layout)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Continue a DNA prompt with a Mamba checkpoint (recurrent decoding, one step per base, in CUDA graphs of 64
    steps on the GPU; only A/C/G/T are sampled) and write prompt + continuation as one FASTA record (atomically when
    --out is given). Memory does not grow with --length beyond the output itself (a megabase is fine); a model whose
    logits or recurrent state turn NaN or infinite stops with an error naming the position. The last line (on
    standard error when the FASTA goes to standard output) reports bases/s and the largest |state| entry at the end."""
    import time

    import torch

    from mamba_bio_audio.dna import DNATokenizer
    from mamba_bio_audio.io import atomic_path

    from .dna_pretrain import DNALanguageModel

    if args.length < 1:
        raise ValueError(f"--length must be positive, got {args.length}")
    model = DNALanguageModel.load_from_checkpoint(args.ckpt, map_location="cpu").model.eval()
    if not hasattr(model, "allocate_inference_cache"):
        raise ValueError(f"{args.ckpt}: generation needs a Mamba checkpoint (this one is a Transformer++)")
    tokenizer = DNATokenizer()
    prompt = tokenizer.encode(args.prompt.strip(), name="--prompt")[None]
    device = torch.device(args.device or ("cuda" if _cuda() else "cpu"))
    stats = {}
    start = time.perf_counter()
    ids = model.to(device).generate(prompt.to(device), args.length, temperature=args.temperature, top_k=args.top_k,
                                    seed=args.seed, allowed_token_ids=[DNATokenizer.A_ID + i for i in range(4)],
                                    cuda_graphs=not args.no_cuda_graphs, progress=True, stats=stats)
    seconds = time.perf_counter() - start
    sequence = tokenizer.decode(ids[0].cpu())
    record = f">{args.name} prompt={len(args.prompt.strip())} generated={args.length}\n" + "".join(
        sequence[i:i + 60] + "\n" for i in range(0, len(sequence), 60))
    summary = (f"{args.length:,} bases in {seconds:.1f} s ({args.length / seconds:,.0f} bases/s on {device}); logits "
               f"and states finite throughout, largest |state| at the end {stats['state_max_abs']:.4g}")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(record)
        print(f"wrote {args.out}: {summary}")
    else:
        sys.stdout.write(record)
        print(summary, file=sys.stderr)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    """Fine-tune a classifier (a pretrained backbone + a new linear head) on labelled sequences: early stopping and
    the best checkpoint by validation MCC, then accuracy, MCC, macro F1, AUROC and the confusion matrix on --test
    with the best checkpoint. Causal backbones read out the last real position, bidirectional ones pool by mean
    (--model.pooling overrides). Interrupted runs continue with --resume RUN/checkpoints/last.ckpt. Other options go
    to LightningCLI (--data.*, --model.*, --trainer.*)."""
    from .dna_finetune import build_cli

    if args.test is None and not args.config:
        print("mba dna finetune: no --test: only validation metrics are reported")
    direct = {"data.train": args.train, "data.valid": args.valid, "data.test": args.test,
              "data.batch_size": args.batch_size, "model.pretrained": args.ckpt, "model.lr": args.lr,
              "trainer.max_epochs": args.max_epochs}
    cli_args = _lightning_args("dna_finetune", args, direct)
    cli = build_cli(cli_args, run_dir=args.out or "runs/finetune")
    if cli.datamodule.hparams.test is None:
        _fit(cli, args.resume)
        return 0
    metrics = _fit_then_test(cli, args.resume)
    print(" ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in metrics.items()
                   if k in ("test/accuracy", "test/mcc", "test/f1", "test/auroc")))
    return 0


def _kmer_baseline(args: argparse.Namespace) -> int:
    """A baseline for `mba dna finetune`: the frequencies of all k-mers (k = 1 … --k) of each sequence and a
    logistic regression, its C chosen by validation MCC; prints test accuracy, MCC, macro F1 and AUROC."""
    from .kmer_baseline import kmer_baseline

    metrics = kmer_baseline(args.train, args.valid, args.test, args.k, args.both_strands)
    print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) and k != "C" else f"{k} {v:g}" for k, v in metrics.items()))
    return 0


def _classify(args: argparse.Namespace) -> int:
    """Class probabilities of each record of --fasta with a classifier checkpoint, one TSV row per record (record,
    length, p_CLASS..., predicted). A causal model streams every record in --chunk-len pieces carrying its state
    (any length, bounded memory, the same result as one pass); a bidirectional one averages windows."""

    from .dna_infer import classify_fasta

    text = classify_fasta(args.ckpt, args.fasta, args.out, args.chunk_len, args.window)
    if args.out:
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Pooled embeddings (the classifier's pooling of its backbone's last hidden states) of each record of --fasta,
    written atomically in the format of --out's suffix: OUT.npy (float32, records × width) with OUT.tsv (row,
    record, length); or OUT.npz / OUT.h5 (h5py) holding `embeddings` (records × width), `ids` and `lengths`, and
    with --per-base one float32 array `per_base/<record>` (length × width) per record (a .npy cannot hold ragged
    arrays). Records no longer than --chunk-len are embedded --batch-size at a time (a bidirectional model's only
    with records of the same length, so that no padding reaches them); longer ones are streamed (causal) or
    windowed (bidirectional) as by `mba dna classify`."""
    from .dna_infer import embed_fasta

    for path in embed_fasta(args.ckpt, args.fasta, args.out, args.chunk_len, args.window, args.per_base,
                            args.batch_size):
        print(f"wrote {path}")
    return 0


def _context_sweep(args: argparse.Namespace) -> int:
    """Train the same Mamba at several context lengths and seeds for the same number of steps and write
    results.csv and context_scaling.png in --out. --task pretrain (--fasta): the same tokens per step at every
    length, every run scored on the same held-out bases (the last --scored-len targets of windows ending at the same
    places). --task species (--data-dir): test accuracy of `mba dna species` runs, --batch-size windows per step.
    Runs already finished there are reused, and unfinished ones (killed, stopped by SIGTERM, a machine gone) go on
    from their last checkpoint when the same command is run again. Options this command does not know (--data.*,
    --model.*, --trainer.*) are passed to every run."""
    if (args.task == "pretrain") != bool(args.fasta):
        raise ValueError("--task pretrain takes --fasta, --task species takes --data-dir")
    return run_sweep(args, args.fasta or args.data_dir, args.task, "mba dna context-sweep")


def run_sweep(args: argparse.Namespace, source: str, task: str, command: str) -> int:
    """Run a context sweep from parsed options (lengths, seeds, max_steps, d_model, n_layer, out, tokens_per_step,
    batch_size, scored_len, parallel, extra) and print its summary table."""
    from pathlib import Path

    from mamba_bio_audio.errors import MbaError

    from .dna_context_sweep import TASKS, summarise, sweep

    try:
        rows = sweep(source, args.lengths, args.seeds, args.max_steps, args.d_model, args.n_layer, Path(args.out),
                     task, args.tokens_per_step, args.batch_size, args.scored_len, args.parallel, args.extra)
    except RuntimeError as err:
        if isinstance(err, MbaError):  # interrupted: `mba` says so on stderr
            raise
        print(f"{command}: {err}", file=sys.stderr)
        return 1
    metric = TASKS[task].metric
    print(f"{'length':>9} {'seeds':>5} {'test ' + metric:>20} {'s.e.':>7}")
    for row in summarise(rows, TASKS[task]):
        print(f"{row['seq_len']:>9} {row['seeds']:>5} {row['mean']:>20.4f} {row['sem']:>7.4f}")
    print(f"wrote {Path(args.out) / 'results.csv'} and {Path(args.out) / 'context_scaling.png'}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _region(text: str) -> tuple[str, int, int]:
    try:
        chrom, span = text.rsplit(":", 1)
        start, end = (int(x.replace(",", "")) for x in span.split("-"))
    except ValueError:
        raise ValueError(f"--region must look like CHR:START-END, got {text!r}") from None
    if not 0 <= start < end:
        raise ValueError(f"--region {text}: empty or negative interval")
    return chrom, start, end


def _checkpoint_seq_len(path: str) -> int:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    seq_len = state.get("datamodule_hyper_parameters", {}).get("seq_len")
    if seq_len is None:
        raise ValueError(f"{path}: no training length stored; give --seq-len")
    return int(seq_len)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def shipped_config(pipeline: str, name: str):
    """`name` if it is a file, else the shipped configs/PIPELINE/NAME[.yaml]; ValueError listing the shipped ones."""
    from pathlib import Path

    if Path(name).is_file():
        return Path(name)
    folder = Path(__file__).resolve().parent / "configs" / pipeline
    for candidate in (folder / name, folder / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ValueError(f"--config {name}: no such file and no shipped config of that name (shipped: {shipped})")

