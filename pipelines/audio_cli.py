"""`mba audio ...`: raw-audio pipelines on Lightning.

    mba audio train --sc09 DIR [--arch unet --preset sc09] --batch-size 16 --max-steps N
    mba audio train --audio-dir DIR --preset youtubemix --sample-len 65536 --tokens-per-batch 524288 --max-steps N
    mba audio generate --ckpt CKPT --n 64 --seconds 1 --out DIR [--prompt WAV --prompt-seconds 0.25]
    mba audio context-sweep --audio-dir DIR --lengths 8192,32768,131072 --seeds 0 --max-steps N   (+ plot)
    mba audio train-classifier --sc09 DIR --max-steps N        the digit classifier that scores generated clips
    mba audio train-diffusion --sc09 DIR --max-steps N         DiffWave-style diffusion, bidirectional U-Net
    mba audio evaluate --classifier CKPT --sc09 DIR [--generated DIR ...] [--ckpt LM_CKPT]

Configuration goes through LightningCLI: a YAML file (--config) and/or --data.*, --model.*, --trainer.* options
after the direct ones; `--print-config` shows the resolved configuration.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .cli import _fit_then_test, _int_list, _lightning_args, run_sweep, training_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    train = tasks.add_parser("train", help="train an autoregressive waveform model (bits per sample)",
                             description=_train.__doc__)
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--sc09", help="SC09 folder: ten digit folders, validation_list.txt, testing_list.txt")
    source.add_argument("--audio-dir", help="folder of long recordings (YouTubeMix layout), split 88/6/6%% by name")
    train.add_argument("--config", help="YAML file (LightningCLI format) or the name of a shipped one "
                                        "(pipelines/configs/audio/: sc09_mamba_unet, youtubemix_mamba_unet_L65536)")
    train.add_argument("--arch", choices=["unet", "mamba", "transformer"])
    train.add_argument("--preset", choices=["sc09", "youtubemix"], help="Mamba U-Net preset (default sc09)")
    train.add_argument("--batch-size", type=int, help="clips per step (--sc09)")
    train.add_argument("--sample-len", type=int, help="training window in samples (--audio-dir)")
    train.add_argument("--tokens-per-batch", type=int, help="samples per step (--audio-dir)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--out", help="run folder: checkpoints, CSV and TensorBoard logs (default runs/audio)")
    train.add_argument("--resume", help="checkpoint to resume from (step, learning rate and data position)")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    training_command(train, _train)

    generate = tasks.add_parser("generate", help="sample clips from a checkpoint to WAV files",
                                description=_generate.__doc__)
    generate.add_argument("--ckpt", required=True, help="a checkpoint of `mba audio train`")
    generate.add_argument("--n", type=int, default=16, help="clips to generate (default 16)")
    generate.add_argument("--seconds", type=float, default=1.0, help="length of each clip (default 1)")
    generate.add_argument("--out", required=True, help="output folder")
    generate.add_argument("--batch-size", type=int, help="clips generated together (default: all of them)")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the smallest set of "
                                                                   "codes with this much probability")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--prompt", help="an audio file whose beginning every clip continues")
    generate.add_argument("--prompt-seconds", type=float, default=0.25, help="how much of --prompt (default 0.25)")
    generate.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if there is one)")
    generate.add_argument("--persistent", action="store_true",
                          help="a Mamba U-Net on the GPU: generate in one persistent kernel instead of stepping the "
                               "model (CUDA graphs of its kernels); also MBA_PERSISTENT_GENERATION=1")
    generate.add_argument("--no-cuda-graphs", action="store_true", help="step eagerly on the GPU too")
    generate.add_argument("--bf16", action="store_true", help="autoregressive models: generate with the weights in "
                                                            "bfloat16 (the recurrent states and sums stay fp32)")
    generate.set_defaults(_task=_generate)

    sweep = tasks.add_parser("context-sweep", help="test bits per sample against training window length, with a plot",
                             description=_context_sweep.__doc__)
    sweep.add_argument("--audio-dir", required=True, help="folder of long recordings (YouTubeMix layout)")
    sweep.add_argument("--lengths", type=_int_list, default=[8192, 32768, 131072],
                       help="comma-separated window lengths in samples, multiples of 256 (default 8192,32768,131072)")
    sweep.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated seeds (default 0)")
    sweep.add_argument("--tokens-per-step", type=int, default=2 ** 19,
                       help="samples per step at every length (a multiple of every length; default 524288)")
    sweep.add_argument("--max-steps", type=int, default=1000, help="optimizer steps of every run (default 1000)")
    sweep.add_argument("--d-model", type=int, default=64, help="U-Net width D (default 64, the YouTubeMix model)")
    sweep.add_argument("--n-layer", type=int, default=3, help="Mamba blocks per stage (default 3)")
    sweep.add_argument("--parallel", type=int, default=1, help="runs at a time (small models can share a GPU)")
    sweep.add_argument("--out", default="runs/audio-sweep", help="folder of the runs, results.csv and the plot")
    training_command(sweep, _context_sweep, batch_size=None, scored_len=0)

    _sc09_training_parser(tasks, "train-classifier", "train the SC09 digit classifier (bidirectional U-Net)",
                          _train_classifier, "runs/digits")
    _sc09_training_parser(tasks, "train-diffusion", "train a DiffWave-style SC09 diffusion model (Mamba U-Net)",
                          _train_diffusion, "runs/diffusion")

    evaluate = tasks.add_parser("evaluate", help="FID, IS, mIS and AM of generated clips; NLL of an LM checkpoint",
                                description=_evaluate.__doc__)
    evaluate.add_argument("--classifier", help="a checkpoint of `mba audio train-classifier`")
    evaluate.add_argument("--sc09", required=True, help="SC09 folder: the training clips are the reference")
    evaluate.add_argument("--generated", nargs="*", default=[], help="folders of generated clips (*.wav) to score")
    evaluate.add_argument("--ckpt", help="also: test bits per sample of this `mba audio train` checkpoint")
    evaluate.add_argument("--out", help="write the score table here as TSV")
    evaluate.add_argument("--device", help="cpu, cuda, ... (default: cuda if there is one)")
    evaluate.set_defaults(_task=_evaluate)


def _sc09_training_parser(tasks, name: str, help: str, task, default_out: str) -> None:
    """A LightningCLI training subcommand on SC09 clips: --sc09, --batch-size, --max-steps, --out, --resume, --config,
    --print-config, other options passed through."""
    parser = tasks.add_parser(name, help=help, description=task.__doc__)
    parser.add_argument("--sc09", required=True, help="SC09 folder (digit folders and the two lists)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--out", help=f"run folder (default {default_out})")
    parser.add_argument("--resume", help="checkpoint to resume from")
    parser.add_argument("--config", help="YAML file of data, model and trainer settings")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    training_command(parser, task)


def run(args: argparse.Namespace) -> int:
    return args._task(args)


def _train(args: argparse.Namespace) -> int:
    """Train a sample-level model on 8-bit audio (mu-law by default: --data.scheme linear for linear codes), keeping
    the last and the best checkpoint (by validation bits per sample, written atomically) and CSV + TensorBoard logs in
    the run folder, then report test bits per sample with the best checkpoint. Interrupted runs continue with
    --resume RUN/checkpoints/last.ckpt. Defaults follow the paper: AdamW (0.9, 0.95), weight decay 0.1, lr 2e-3,
    10% warm-up and cosine decay, gradient clipping 0.1, bf16 on the GPU."""
    from .audio_lm import LongAudioData, SC09Data, build_cli

    direct = {"model.arch": args.arch, "model.preset": args.preset, "trainer.max_steps": args.max_steps}
    if args.sc09:
        data_class = SC09Data
        direct |= {"data.root": args.sc09, "data.batch_size": args.batch_size}
    else:
        data_class = LongAudioData
        direct |= {"data.root": args.audio_dir, "data.sample_len": args.sample_len,
                   "data.tokens_per_batch": args.tokens_per_batch}
    cli = build_cli(data_class, _lightning_args("audio", args, direct), run_dir=args.out or "runs/audio")
    metrics = _fit_then_test(cli, args.resume)
    print(f"test bits per sample {metrics['test/bits_per_sample']:.4f}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Generate clips from a `mba audio train` checkpoint sample by sample with the model's recurrent step (pooled
    stages of a U-Net step once every p samples; CUDA graphs on the GPU, or with --persistent one persistent kernel
    for a Mamba U-Net), with temperature and top-p, optionally
    continuing a prompt; or from a `mba audio train-diffusion` checkpoint by its reverse diffusion steps. Writes
    OUT/sample_NNN.wav (16 kHz, 16-bit), OUT/spectrograms.png and OUT/samples.tsv (for autoregressive models each
    clip's log-likelihood under the model, in nats and in bits per generated sample). Memory does not grow with
    --seconds beyond the clips themselves; a model whose logits or recurrent state turn NaN or infinite stops with an
    error naming the sample position and the clip. The last line reports samples/s and, for autoregressive models, the
    largest |state| entry at the end."""
    import time

    import torch

    from mamba_bio_audio.audio import SAMPLE_RATE
    from mamba_bio_audio.audio.codec import dequantize, load_audio, quantize
    from mamba_bio_audio.audio.generate import (AudioSampler, sample_audio, spectrogram_grid, takes_persistent,
                                                write_wavs)
    from mamba_bio_audio.io import atomic_path

    from .audio_lm import AudioLM

    if args.n < 1 or args.seconds <= 0:
        raise ValueError("--n must be ≥ 1 and --seconds > 0")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    length = round(args.seconds * SAMPLE_RATE)
    batch = args.batch_size or args.n
    start = time.perf_counter()
    if "diffusion_steps" in checkpoint.get("hyper_parameters", {}):  # a `mba audio train-diffusion` checkpoint
        from .audio_diffusion import AudioDiffusion

        if args.prompt:
            raise ValueError("--prompt continues autoregressive models only; this is a diffusion checkpoint")
        model = AudioDiffusion.load_from_checkpoint(args.ckpt, map_location="cpu").model.to(device).eval()
        pool = model.unet.config.total_pool
        generator = torch.Generator(device=device).manual_seed(args.seed)
        waves = torch.cat([model.sample(min(batch, args.n - first), -(-length // pool) * pool, generator,
                                        progress=True)[:, :length].cpu() for first in range(0, args.n, batch)])
        bits = None
    else:
        scheme = checkpoint.get("datamodule_hyper_parameters", {}).get("scheme", "mu-law")
        model = AudioLM.load_from_checkpoint(args.ckpt, map_location="cpu").model.to(device).eval()
        if args.bf16:
            model = model.bfloat16()
        prompt = None
        if args.prompt:
            prompt = quantize(load_audio(args.prompt), scheme)[:round(args.prompt_seconds * SAMPLE_RATE)]
        codes, loglik, state_max = [], [], None
        # --persistent asks for the persistent kernel, --no-cuda-graphs for eager steps; else takes_persistent's default
        persistent = takes_persistent(model, True if args.persistent else False if args.no_cuda_graphs else None)
        samplers = {}  # rows → AudioSampler: its CUDA graphs are recorded once for the batches of that size
        for first in range(0, args.n, batch):
            stats, rows, seed = {}, min(batch, args.n - first), args.seed + first
            if persistent:
                c, ll = sample_audio(model, rows, length, prompt, args.temperature, args.top_p, seed=seed,
                                     progress=True, stats=stats, persistent=True)
            else:
                if rows not in samplers:
                    samplers[rows] = AudioSampler(model, rows, args.temperature, args.top_p,
                                                  cuda_graphs=not args.no_cuda_graphs)
                c, ll = samplers[rows](length, prompt, seed, progress=True, stats=stats)
            codes.append(c.cpu())
            loglik.append(ll.cpu())
            if stats["state_max_abs"] is not None:  # None: a Transformer's KV cache, no recurrent state
                state_max = max(state_max or 0.0, stats["state_max_abs"])
        codes, loglik = torch.cat(codes), torch.cat(loglik)
        waves = dequantize(codes, scheme)
        generated = length - (len(prompt) if prompt is not None else 0)
        bits = (-loglik / generated / math.log(2)).tolist()
    seconds = time.perf_counter() - start
    paths = write_wavs(waves, args.out)
    with atomic_path(Path(args.out) / "samples.tsv") as tmp:
        if bits is None:
            tmp.write_text("file\n" + "".join(f"{p.name}\n" for p in paths))
        else:
            tmp.write_text("file\tloglik_nats\tbits_per_sample\n" + "".join(
                f"{p.name}\t{ll:.3f}\t{b:.4f}\n" for p, ll, b in zip(paths, loglik.tolist(), bits)))
    titles = [p.stem if bits is None else f"{p.stem} {b:.2f} b/s" for p, b in zip(paths, bits or [None] * len(paths))]
    spectrogram_grid(waves, Path(args.out) / "spectrograms.png", titles)
    summary = ""
    if bits is not None:  # autoregressive models
        state = ("logits finite throughout (no recurrent state)" if state_max is None else
                 f"logits and states finite throughout, largest |state| at the end {state_max:.4g}")
        summary = f"; mean {sum(bits) / len(bits):.4f} bits per generated sample; {state}"
    print(f"wrote {len(paths)} clips of {args.seconds:g} s to {args.out} ({waves.numel() / seconds:,.0f} samples/s "
          f"on {device}{summary})")
    return 0


def _context_sweep(args: argparse.Namespace) -> int:
    """Train the same Mamba U-Net (YouTubeMix layout: pools 16 × 16, complex SSM) on windows of several lengths and
    seeds, with the same samples per step and steps, and write results.csv and context_scaling.png (test bits per
    sample against length; the held-out files tiled at each length) in --out. Finished runs are reused. Options this
    command does not know (--data.*, --model.*, --trainer.*) go to every run."""
    return run_sweep(args, args.audio_dir, "audio", "mba audio context-sweep")


def _fit_sc09(build_cli, pipeline: str, args: argparse.Namespace, default_out: str) -> dict:
    direct = {"data.root": args.sc09, "data.batch_size": args.batch_size, "trainer.max_steps": args.max_steps}
    cli = build_cli(_lightning_args(pipeline, args, direct), run_dir=args.out or default_out)
    return _fit_then_test(cli, args.resume)


def _train_classifier(args: argparse.Namespace) -> int:
    """Train the digit classifier used to score generated SC09 clips (log-mel frames into a bidirectional Mamba
    U-Net, mean-pooled features, 10 classes), keeping the best checkpoint by validation accuracy; reports test
    accuracy, MCC and the per-digit accuracies."""
    from .audio_classifier import build_cli

    metrics = _fit_sc09(build_cli, "audio_classifier", args, "runs/digits")
    print(f"test accuracy {metrics['test/accuracy']:.4f} mcc {metrics['test/mcc']:.4f}")
    return 0


def _train_diffusion(args: argparse.Namespace) -> int:
    """Train an unconditional DiffWave-style diffusion model on SC09 clips (200 steps, β linear up to 0.02; the
    denoiser a bidirectional Mamba U-Net), keeping the best checkpoint by validation denoising loss. Sample from it
    with `mba audio generate --ckpt RUN/checkpoints/last.ckpt`."""
    from .audio_diffusion import build_cli

    metrics = _fit_sc09(build_cli, "audio_diffusion", args, "runs/diffusion")
    print(f"test denoising loss {metrics['test/loss']:.4f}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Score sets of clips with the digit classifier, as in the SaShiMi evaluation: FID (classifier features, against
    the SC09 training clips), IS, mIS and AM, with the real training and test clips as the reference rows; and, with
    --ckpt, the test NLL in bits per sample of an autoregressive checkpoint on the same SC09 folder."""
    import torch

    from mamba_bio_audio.io import atomic_path

    from .audio_classifier import DigitClassifier, score_folders
    from mamba_bio_audio.audio import audio_files

    from .audio_lm import sc09_split

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clips = sc09_split(args.sc09)
    lines = []
    if args.classifier:
        net = DigitClassifier.load_from_checkpoint(args.classifier, map_location="cpu").model.to(device).eval()
        sets = {"test": clips["test"]}
        for folder in args.generated:
            sets[folder] = audio_files(folder)
        scores = score_folders(net, clips["train"], sets)
        lines.append("set\tclips\tFID\tIS\tmIS\tAM")
        counts = {"train": len(clips["train"]), **{k: len(v) for k, v in sets.items()}}
        lines += [f"{name}\t{counts[name]}\t{s['fid']:.4f}\t{s['is']:.4f}\t{s['mis']:.4f}\t{s['am']:.4f}"
                  for name, s in scores.items()]
    if args.ckpt:
        import lightning as L

        from .audio_lm import AudioLM, SC09Data

        model = AudioLM.load_from_checkpoint(args.ckpt, map_location="cpu")
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                            precision="bf16-mixed" if device.type == "cuda" else "32-true")
        result = trainer.test(model, datamodule=SC09Data(args.sc09), verbose=False)[0]
        lines.append(f"# {args.ckpt}: test NLL {result['test/bits_per_sample']:.4f} bits per sample")
    if not lines:
        raise ValueError("give --classifier (sample-quality scores) and/or --ckpt (test NLL)")
    print("\n".join(lines))
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    return 0
