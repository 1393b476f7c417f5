"""Sample-by-sample generation from an autoregressive audio model, and its outputs (WAV files, spectrograms).

    Stepper         one-sample steps of a causal model (AudioUNet, a flat MambaLMHeadModel, or a TransformerLM with its
                    KV cache) over a batch; on CUDA
                    the AudioUNet step can be replayed from CUDA graphs, one per position in the pooling period.
    sample_audio    (n, length) codes and each row's log-likelihood: an optional prompt fed first, then sampling with
                    temperature and top-p.
    write_wavs      waveforms → 16 kHz 16-bit WAV files (written under temporary names, then renamed).
    spectrogram_grid  a PNG of log-mel spectrograms of up to 64 clips.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..generation import sample_next_token
from ..io import atomic_path
from . import SAMPLE_RATE
from .codec import START_TOKEN


class Stepper:
    """step(tokens (b,) int64) → logits (b, 256) (the model's dtype) of the next position, for a batch of
    `batch_size` sequences started from empty states. `cuda_graphs` (AudioUNet on CUDA only): after the first
    pooling period, which runs eagerly, each position's step is a replay of the CUDA graph captured for its phase in
    the period."""

    def __init__(self, model: torch.nn.Module, batch_size: int, max_len: int, cuda_graphs: bool = False):
        from ..models import MambaLMHeadModel, TransformerLM
        from ..models.audio_unet import AudioUNet

        self.model, self.position = model, 0
        self.unet = isinstance(model, AudioUNet)
        if self.unet:
            self.state = model.allocate_step_state(batch_size)
            self.period = model.config.total_pool
        elif isinstance(model, TransformerLM):
            self.state = model.allocate_inference_cache(batch_size, max_len)
        elif isinstance(model, MambaLMHeadModel):
            self.state = model.allocate_inference_cache(batch_size)
        else:
            raise ValueError(f"{type(model).__name__} has no recurrent state to generate with")
        device = next(model.parameters()).device
        self.use_graphs = cuda_graphs and self.unet and device.type == "cuda"
        self.graphs: list = []
        self.tokens = torch.zeros(batch_size, dtype=torch.int64, device=device)

    def _eager(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.unet:
            return self.model.step(tokens, self.state)
        return self.model(tokens[:, None], cache=self.state)[:, -1]

    def _capture(self) -> None:
        """One graph per phase of the pooling period; the caches' tensors are updated in place, so a replay advances
        the same state an eager step would. Capturing records kernels without running them."""
        phases = list(self.state.phase)
        for _ in range(self.period):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self._eager(self.tokens)
            self.graphs.append((graph, logits))
        self.state.phase[:] = phases

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.use_graphs or self.position < self.period:
            out = self._eager(tokens)
        else:
            if not self.graphs:
                self._capture()
            graph, logits = self.graphs[self.position % self.period]
            self.tokens.copy_(tokens)
            graph.replay()
            out = logits.clone()
        self.position += 1
        return out


@torch.inference_mode()
def sample_audio(model: torch.nn.Module, n: int, length: int, prompt: torch.Tensor | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None, cuda_graphs: bool = True,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate `n` clips of `length` codes. prompt: (n, T) or (T,) int64 codes (T < length) continued by every row.
    Returns codes (n, length) int64 (the prompt first) and the log-likelihood in nats (n,) float64 of the generated
    part under the model (temperature 1, no top-p)."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    prompt = torch.empty(n, 0, dtype=torch.int64) if prompt is None else prompt.expand(n, -1) if prompt.dim() == 1 \
        else prompt
    if prompt.shape[0] != n or prompt.shape[1] >= length:
        raise ValueError(f"prompt of shape {tuple(prompt.shape)} for {n} clips of {length} samples")
    prompt = prompt.to(device)
    stepper = Stepper(model, n, length, cuda_graphs)
    codes = torch.empty(n, length, dtype=torch.int64, device=device)
    loglik = torch.zeros(n, dtype=torch.float64, device=device)
    token = torch.full((n,), START_TOKEN, dtype=torch.int64, device=device)
    for t in tqdm(range(length), desc="samples", unit="sample", disable=not progress, mininterval=1.0):
        logits = stepper.step(token)                                           # (n, 256)
        if t < prompt.shape[1]:
            token = prompt[:, t]
        else:
            token = sample_next_token(logits, temperature=temperature, top_p=top_p, generator=generator)
            loglik += torch.log_softmax(logits.double(), -1).gather(1, token[:, None])[:, 0]
        codes[:, t] = token
    return codes, loglik


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
