"""Raw audio for sample-level autoregressive models (the Mamba paper's SC09 / YouTubeMix setup, after SaShiMi).

    load_audio      a WAV/FLAC/OGG file (soundfile) → mono float32 at 16 kHz (channels averaged, torchaudio
                    resampling); errors name the file.
    quantize        waveform → 8-bit codes: mu-law (μ = 255) or linear, after min-max scaling of the clip to [−1, 1].
    dequantize      codes → waveform in [−1, 1].
    shift_right     targets → model inputs: the code sequence moved one step right, START_TOKEN first.

Codes are int64 in [0, 256); 128 is the code of silence in both schemes and the start token.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import SAMPLE_RATE

from ..errors import InputError

BITS = 8
N_CLASSES = 2 ** BITS
START_TOKEN = N_CLASSES // 2
SCHEMES = ("mu-law", "linear")


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(samples,) float32 in the file's scale (soundfile reads PCM as [−1, 1)): channels averaged, resampled to
    `sample_rate` with torchaudio's band-limited sinc interpolation when the file's rate differs."""
    import soundfile

    path = Path(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise InputError(f"{path}: not a readable audio file ({error})") from None
    if data.shape[0] == 0:
        raise InputError(f"{path}: no audio samples")
    wave = torch.from_numpy(data).mean(dim=1)
    if not torch.isfinite(wave).all():
        raise InputError(f"{path}: the audio holds NaN or infinite samples")
    if rate != sample_rate:
        import torchaudio.functional

        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


def minmax_scale(wave: torch.Tensor) -> torch.Tensor:
    """(..., T) → (..., T) scaled per clip (last axis) to [−1, 1]; a constant clip becomes zeros."""
    low, high = wave.amin(-1, keepdim=True), wave.amax(-1, keepdim=True)
    span = (high - low).clamp_min(torch.finfo(wave.dtype).tiny)
    return torch.where(high > low, 2 * (wave - low) / span - 1, torch.zeros_like(wave))


def quantize(wave: torch.Tensor, scheme: str = "mu-law") -> torch.Tensor:
    """(..., T) float waveform → (..., T) int64 codes in [0, 256): the clip is min-max scaled to [−1, 1] first, then
    mu-law companded (torchaudio, μ = 255) or cut into 256 equal bins."""
    scaled = minmax_scale(wave.float())
    if scheme == "mu-law":
        import torchaudio.functional

        return torchaudio.functional.mu_law_encoding(scaled, N_CLASSES).long()
    if scheme == "linear":
        return ((scaled + 1) / 2 * N_CLASSES).long().clamp(0, N_CLASSES - 1)
    raise ValueError(f"unknown quantization {scheme!r}; choose from {', '.join(SCHEMES)}")


def dequantize(codes: torch.Tensor, scheme: str = "mu-law") -> torch.Tensor:
    """(..., T) int codes → (..., T) float32 waveform in [−1, 1] (bin centres for linear codes)."""
    if scheme == "mu-law":
        import torchaudio.functional

        return torchaudio.functional.mu_law_decoding(codes.long(), N_CLASSES).float()
    if scheme == "linear":
        return (codes.float() + 0.5) / N_CLASSES * 2 - 1
    raise ValueError(f"unknown quantization {scheme!r}; choose from {', '.join(SCHEMES)}")


def shift_right(codes: torch.Tensor) -> torch.Tensor:
    """(..., T) targets → (..., T) inputs: input[t] = target[t − 1], input[0] = START_TOKEN."""
    return torch.cat([torch.full_like(codes[..., :1], START_TOKEN), codes[..., :-1]], dim=-1)
