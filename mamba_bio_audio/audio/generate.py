"""Sample-by-sample generation from an autoregressive audio model, and its outputs (WAV files, spectrograms).

    Stepper         one-sample steps of a causal model (AudioUNet, a flat MambaLMHeadModel, or a TransformerLM with its
                    KV cache) over a batch.
    AudioSampler    (n, length) codes and each row's log-likelihood, as often as called: an optional prompt fed
                    first, then sampling with temperature and top-p. Positions go in chunks (a multiple of the
                    U-Net's pooling period); on CUDA each chunk is a replay of one CUDA graph: the steps, the draws
                    and the bookkeeping of a whole chunk, with no host work in between, recorded by the first call
                    and kept. Non-finite logits or states stop it with GenerationDiverged (naming the sample position
                    and the clip) instead of producing noise.
    sample_audio    one AudioSampler call; or, when asked (`takes_persistent`), a Mamba U-Net's generation in one
                    persistent kernel (`kernels/unet_generate`: every position of thousands in one launch).
    write_wavs      waveforms → 16 kHz 16-bit WAV files (written under temporary names, then renamed).
    spectrogram_grid  a PNG of log-mel spectrograms of up to 64 clips.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..generation import FiniteWatch, replay_graph
from ..io import atomic_path
from ..kernels import sample_step
from . import SAMPLE_RATE
from .codec import START_TOKEN

N_CODES = 256
# Positions per chunk (rounded up to whole pooling periods): one CUDA graph replay each, at whose end a U-Net's coarse
# steps in flight on side streams must finish before the next replay starts. 64 gave the same steady rate on an H100
# (SC09 U-Net) and was 5-12% slower on 0.5 s clips (a longer eager first chunk; BENCHMARKS.md).
CHUNK_POSITIONS = 16
# A Transformer's shortest attention span (cache slots; spans are powers of two from it, one CUDA graph each).
MIN_ATTEND = 1024


class Stepper:
    """step(tokens (b,) int64) → logits (b, 256) (the model's dtype) of the next position, for a batch of
    `batch_size` sequences started from empty states. `period`: the U-Net's total pooling (its step depends on the
    position modulo the period), else 1. Every state is updated in place on fixed buffers, so a CUDA graph of some
    steps can be replayed: the recurrent states of a U-Net or a flat Mamba, or a Transformer's KV cache in its static
    mode (the position on the device; `attend(start, steps)` sets how many cache slots the steps attend to, a power
    of two, so that a few graphs serve a whole clip). `concurrent`: passed to a U-Net's `allocate_step_state`."""

    def __init__(self, model: torch.nn.Module, batch_size: int, max_len: int, concurrent: bool | None = None):
        from ..models import MambaLMHeadModel, TransformerLM
        from ..models.audio_unet import AudioUNet

        self.model, self.arguments = model, (batch_size, max_len, concurrent)
        self.unet = isinstance(model, AudioUNet)
        self.transformer = isinstance(model, TransformerLM)
        self.period = 1
        if self.unet:
            self.state = model.allocate_step_state(batch_size, concurrent)
            self.period = model.config.total_pool
        elif self.transformer:
            self.state = model.allocate_inference_cache(batch_size, max_len, static=True)
        elif isinstance(model, MambaLMHeadModel):
            self.state = model.allocate_inference_cache(batch_size)
        else:
            raise ValueError(f"{type(model).__name__} has no recurrent state to generate with")
        self.capacity = max_len if self.transformer else math.inf                # positions the state can hold

    def reset(self) -> None:
        """Back to empty states, in place on the same buffers (CUDA graphs recorded on them stay valid)."""
        state = self.state
        if self.unet:
            tensors, caches = state.tensors(), [*state.down, *state.up, state.centre]
            state.phase = [0] * len(state.phase)
        elif self.transformer:
            tensors, caches = [*state.keys, *state.values, state.position], [state]
        else:
            tensors, caches = state.tensors(), [state]
        for tensor in tensors:
            tensor.zero_()
        for cache in caches:
            cache.seqlen_offset = 0

    def attend(self, start: int, steps: int) -> int | None:
        """Before the steps of positions [start, start + steps): a Transformer attends to the first
        min(max_len, next power of two ≥ start + steps, at least MIN_ATTEND) cache slots; returns that count (the key of
        the chunk's CUDA graph), or None for recurrent models (one graph for every chunk)."""
        if not self.transformer:
            return None
        self.state.attend_len = min(self.state.cos.shape[0], max(MIN_ATTEND, 1 << (start + steps - 1).bit_length()))
        return self.state.attend_len

    def scratch(self) -> Stepper:
        """A Stepper of the same model and batch on new, empty states; a U-Net's levels each at the last phase of
        their period, so that its next step runs every level's step; a Transformer's KV cache of at most the first
        attention span (MIN_ATTEND slots), not a second cache of the whole clip."""
        batch_size, max_len, concurrent = self.arguments
        scratch = Stepper(self.model, batch_size, min(max_len, MIN_ATTEND), concurrent)
        if self.unet:
            scratch.state.phase = [pool - 1 for pool in self.model.config.pools]
        return scratch

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.unet:
            return self.model.step(tokens, self.state)
        return self.model(tokens[:, None], cache=self.state)[:, -1]

    def finish(self) -> None:
        """After a run of steps: a U-Net's coarse steps still on side streams rejoin the current stream (a CUDA
        graph must end joined, and the state is read after it)."""
        if self.unet:
            self.model.join_step(self.state)


class _Chunk:
    """The work of `size` consecutive positions on fixed buffers, so that it can be captured in a CUDA graph: for
    each position i, logits = step(token); the next token is forced[i] ? forced_tokens[i] : a draw with noise[i];
    codes[:, i] = token; loglik += log p(token) where drawn; the rows whose logits are not all finite marked in
    `watch.flags` (by the draw, which reads the logits anyway). `token` carries over to the next chunk."""

    def __init__(self, stepper: Stepper, n: int, size: int, temperature: float, top_p: float, device,
                 watch: FiniteWatch):
        self.stepper, self.size, self.temperature, self.top_p = stepper, size, temperature, top_p
        self.token = torch.full((n,), START_TOKEN, dtype=torch.int64, device=device)
        self.noise = torch.empty(size, n, N_CODES, device=device)
        self.forced = torch.zeros(size, dtype=torch.bool, device=device)
        self.forced_tokens = torch.zeros(size, n, dtype=torch.int64, device=device)
        self.codes = torch.empty(n, size, dtype=torch.int64, device=device)
        self.positions = torch.arange(size, device=device)
        self.loglik = torch.zeros(n, dtype=torch.float64, device=device)
        self.watch = watch
        self.graphs = {}                                                         # Stepper.attend key → CUDA graph

    def run(self, steps: int) -> None:
        for i in range(steps):
            logits = self.stepper.step(self.token)                                 # (n, 256)
            sample_step(logits.contiguous(), self.noise[i], self.forced[i], self.forced_tokens[i], self.token,
                        self.codes[:, i], self.loglik, self.watch.flags[:, i], self.temperature, self.top_p)
        self.stepper.finish()

    def reset(self) -> None:
        """Empty states, the start token and no log-likelihood, for a new generation on the same buffers."""
        self.stepper.reset()
        self.watch.reset()
        self.token.fill_(START_TOKEN)
        self.loglik.zero_()

    def warm_up(self) -> None:
        """Before the first chunk's CUDA graph is recorded: one position on a scratch Stepper and copies of the
        buffers (same shapes and strides), so that every kernel a chunk launches is compiled, and every library
        initialised, outside the recording. The state and buffers of the generation are not touched."""
        scratch = self.stepper.scratch()
        scratch.attend(0, self.size)
        token = self.token.clone()
        logits = scratch.step(token)
        sample_step(logits.contiguous(), self.noise[0], self.forced[0], self.forced_tokens[0], token,
                    self.codes.clone()[:, 0], self.loglik.clone(), self.watch.flags.clone()[:, 0], self.temperature,
                    self.top_p)
        scratch.finish()

    def replay(self, key) -> None:
        """Run `run(size)` as a CUDA graph, recorded on first use of `key` (recording runs nothing; a U-Net's phase
        counters come back to where they were, the chunk being a whole number of pooling periods)."""
        replay_graph(self.graphs, key, lambda: self.run(self.size))


def sample_audio(model: torch.nn.Module, n: int, length: int, prompt: torch.Tensor | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None, cuda_graphs: bool = True,
                 progress: bool = False, check_every: int = 8192, stats: dict | None = None,
                 persistent: bool | None = None, concurrent: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate `n` clips of `length` codes: `AudioSampler(model, n, ...)(length, ...)` (see there), made for this one
    call. To generate again with the same model and batch, keep an AudioSampler: its CUDA graphs are recorded once.

    `persistent` (default: on CUDA with MBA_PERSISTENT_GENERATION=1, for the U-Nets `kernels.unet_generate` takes;
    opt-in: on an H100 level with the stepping path at batch 1, slower at 64 and 256): generate with the persistent
    kernel instead, every position of `check_every` samples in one launch (fp32 arithmetic; weight matrices read in
    the model's dtype). Its draws come from Triton's Philox stream seeded by `seed`: the same seed gives the same
    clips however the positions are split into launches, but not the clips of the stepping path."""
    device = next(model.parameters()).device
    if takes_persistent(model, persistent):
        with torch.inference_mode():
            return _sample_persistent(model, n, length, _prompt_rows(prompt, n, length, device), temperature, top_p,
                                      _generator(device, seed), progress, check_every, stats)
    sampler = AudioSampler(model, n, temperature, top_p, cuda_graphs, concurrent)
    return sampler(length, prompt, seed, progress, check_every, stats)


def takes_persistent(model: torch.nn.Module, persistent: bool | None) -> bool:
    """Whether `sample_audio(model, ..., persistent=persistent)` runs the persistent kernel: if asked, or by default
    on CUDA with MBA_PERSISTENT_GENERATION=1 for a model the kernel takes."""
    if persistent is not None:
        return persistent
    if next(model.parameters()).device.type != "cuda" or os.environ.get("MBA_PERSISTENT_GENERATION", "0") != "1":
        return False
    from ..kernels.unet_generate.fused import unsupported

    return unsupported(model) is None


class AudioSampler:
    """Generation of `n` clips at a time from a causal audio model (AudioUNet, flat Mamba LM or TransformerLM),
    called as often as wanted: sampler(length, prompt, seed) → codes (n, length) int64 (the prompt first) and the
    log-likelihood in nats (n,) float64 of the generated part under the model (temperature 1, no top-p).

    Positions go in chunks (a multiple of the U-Net's pooling period). With `cuda_graphs` on CUDA, every chunk is a
    replay of one CUDA graph (a Transformer: one per attention span, a power of two): the steps, the draws and the
    bookkeeping of a whole chunk, with no host work in between; a last partial chunk replays it too (the positions
    past the clip are run and dropped). The graphs are recorded by the first call, after one position on scratch
    states (`_Chunk.warm_up`, compiling the kernels), and kept with the states and buffers they use: a later call
    only empties the states and replays. They are recorded again when the model's weights are no longer the
    tensors they read (moved, cast or replaced; in-place updates are seen), or when a Transformer needs a longer KV
    cache. On an H100 (BENCHMARKS.md) a 1 s clip of the YouTubeMix U-Net at batch 1 took ~1.0 s of per-call work
    before: an eager first chunk of 256 samples (0.39 s of host work), the recording (0.37 s) and an eager tail.

    The draws come from uniform noise of a generator seeded with `seed`, one chunk at a time, so the same seed gives
    the same clips with and without CUDA graphs, in any call. Every position's logits are checked for NaN/inf on the
    device, and every `check_every` samples (and at the end) the recurrent state too, with one host sync: a
    non-finite value raises GenerationDiverged naming the first such sample position and the clips. `stats`, if
    given, receives "state_max_abs" (the largest |state| entry at the last check) and "checks". Memory is that of
    the states plus the (n, length) codes, whatever the length. `concurrent` (U-Nets): each coarse step on a side
    stream (`AudioUNet.allocate_step_state`; None: its default); the clips are the same either way."""

    def __init__(self, model: torch.nn.Module, n: int, temperature: float = 1.0, top_p: float = 1.0,
                 cuda_graphs: bool = True, concurrent: bool | None = None):
        self.model, self.n, self.temperature, self.top_p = model, n, temperature, top_p
        self.cuda_graphs, self.concurrent = cuda_graphs, concurrent
        self._chunk: _Chunk | None = None
        self._weights: list | None = None                                      # what the chunk's graphs read

    @torch.inference_mode()
    def __call__(self, length: int, prompt: torch.Tensor | None = None, seed: int | None = None,
                 progress: bool = False, check_every: int = 8192, stats: dict | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt: (n, T) or (T,) int64 codes (T < length), continued by every row."""
        from tqdm import tqdm

        device, n = next(self.model.parameters()).device, self.n                 # the model may have moved
        use_graphs = _replays_graphs(self.cuda_graphs, device)
        generator = _generator(device, seed)
        prompt = _prompt_rows(prompt, n, length, device)
        chunk = self._chunk_for(length, device, use_graphs)
        stepper, size, watch = chunk.stepper, chunk.size, chunk.watch
        check_chunks = max(1, math.ceil(check_every / size))
        codes = torch.empty(n, length, dtype=torch.int64, device=device)
        try:
            with tqdm(total=length, desc="samples", unit="sample", disable=not progress, mininterval=1.0) as bar:
                for index, start in enumerate(range(0, length, size)):
                    steps = min(size, length - start)
                    torch.rand(chunk.noise.shape, generator=generator, device=device, out=chunk.noise)
                    forced = min(max(prompt.shape[1] - start, 0), steps)          # prompt positions in this chunk
                    # a last, partial chunk replays the whole chunk's graph too: its positions past the clip are
                    # forced (no draw, no log-likelihood) and dropped
                    chunk.forced.copy_((chunk.positions < forced) | (chunk.positions >= steps))
                    chunk.forced_tokens[:forced] = prompt[:, start:start + forced].t()
                    key = stepper.attend(start, size)
                    if use_graphs:
                        chunk.replay(key)
                    else:
                        chunk.run(steps)
                    watch.end_chunk(start, steps)
                    codes[:, start:start + steps] = chunk.codes[:, :steps]
                    bar.update(steps)
                    if (index + 1) % check_chunks == 0:
                        watch.check(stepper.state, start + steps)
            if watch.checked_to != length:
                watch.check(stepper.state, length)
        except BaseException:  # states, buffers or a graph left mid-way: the next call starts afresh
            self._chunk = None
            raise
        if stats is not None:
            stats.update(state_max_abs=watch.max_abs, checks=watch.checks)
        return codes, chunk.loglik.clone()

    def _chunk_for(self, length: int, device: torch.device, use_graphs: bool) -> _Chunk:
        """The chunk (with its Stepper, watch and graphs) of the calls before, emptied; or a new one where there
        is none, where the weights are not the tensors its graphs read (moved, cast or replaced), or where a
        Transformer's KV cache is too short (it gets room for the clip and a last whole chunk)."""
        weights = [(t.device, t.data_ptr(), t.dtype) for t in (*self.model.parameters(), *self.model.buffers())]
        chunk = self._chunk
        if chunk is not None and weights == self._weights and chunk.stepper.capacity >= length + CHUNK_POSITIONS:
            chunk.reset()
            return chunk
        self._chunk = None  # the old chunk's states and graphs are freed before the new ones are allocated
        stepper = Stepper(self.model, self.n, length + CHUNK_POSITIONS, self.concurrent)
        size = stepper.period * math.ceil(CHUNK_POSITIONS / stepper.period)
        watch = FiniteWatch(self.n, size, device, row="clip", unit="sample")
        chunk = _Chunk(stepper, self.n, size, self.temperature, self.top_p, device, watch)
        if use_graphs:
            chunk.warm_up()
        self._chunk, self._weights = chunk, weights
        return chunk


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    return generator


def _prompt_rows(prompt: torch.Tensor | None, n: int, length: int, device: torch.device) -> torch.Tensor:
    """prompt None, (T,) or (n, T) int64 → (n, T) on `device` (T = 0 for None); T must be < length."""
    prompt = torch.empty(n, 0, dtype=torch.int64) if prompt is None else prompt.expand(n, -1) if prompt.dim() == 1 \
        else prompt
    if prompt.shape[0] != n or prompt.shape[1] >= length:
        raise ValueError(f"prompt of shape {tuple(prompt.shape)} for {n} clips of {length} samples")
    return prompt.to(device)


def _replays_graphs(cuda_graphs: bool, device: torch.device) -> bool:
    """Whether the chunks replay CUDA graphs: on CUDA, when asked (a test simulates them on the CPU)."""
    return cuda_graphs and device.type == "cuda"


def _sample_persistent(model, n: int, length: int, prompt: torch.Tensor, temperature: float, top_p: float,
                       generator: torch.Generator, progress: bool, check_every: int, stats: dict | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_audio` through `UNetGenerator`: one launch per `check_every` positions, then the finiteness check."""
    from tqdm import tqdm

    from ..kernels.unet_generate.fused import UNetGenerator

    device = next(model.parameters()).device
    generator_kernel = UNetGenerator(model, n, START_TOKEN)
    seed = int(torch.randint(0, 2**30, (), generator=generator, device=device))  # + positions stays in int32
    watch = FiniteWatch(n, 1, device, row="clip", unit="sample")
    codes = torch.empty(n, length, dtype=torch.int64, device=device)
    every = max(1, check_every)
    with tqdm(total=length, desc="samples", unit="sample", disable=not progress, mininterval=1.0) as bar:
        for start in range(0, length, every):
            steps = min(every, length - start)
            generator_kernel.run(steps, codes[:, start:], prompt if prompt.shape[1] else None, temperature, top_p,
                                 seed)
            watch.first = generator_kernel.first_bad
            watch.check(generator_kernel.state_tensors(), start + steps)
            bar.update(steps)
    if stats is not None:
        stats.update(state_max_abs=watch.max_abs, checks=watch.checks)
    return codes, generator_kernel.loglik.clone()


def write_wavs(waves: torch.Tensor, folder: str | Path, prefix: str = "sample") -> list[Path]:
    """waves (n, T) float in [−1, 1] → FOLDER/{prefix}_{i:03d}.wav, 16 kHz 16-bit PCM, each written atomically."""
    import soundfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, wave in enumerate(waves.float().cpu().numpy()):
        path = folder / f"{prefix}_{i:03d}.wav"
        with atomic_path(path) as tmp:
            soundfile.write(str(tmp), wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        paths.append(path)
    return paths


def spectrogram_grid(waves: torch.Tensor, path: str | Path, titles: list[str] | None = None) -> Path:
    """waves (n, T) float in [−1, 1] at 16 kHz → a PNG grid of log-mel spectrograms (80 mels, 25 ms windows) of the
    first 64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchaudio

    waves = waves[:64].float().cpu()
    if waves.shape[-1] <= 200:  # clips shorter than the centred window's half: zero-padded to one window
        waves = torch.nn.functional.pad(waves, (0, 401 - waves.shape[-1]))
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80)(waves)
    log_mel = torch.log10(mel + 1e-5)
    cols = min(8, len(waves))
    rows = math.ceil(len(waves) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(waves):
            ax.imshow(log_mel[i].numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_title(titles[i] if titles else f"{i}", fontsize=7)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path
