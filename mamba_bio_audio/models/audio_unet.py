"""Mamba U-Net for raw audio: the SaShiMi multi-scale layout with every S4 + MLP pair replaced by one Mamba block
(Mamba paper §4.4, after Goel et al. 2022).

    tokens (b, L) ─ embed ─► down stage @ L, width D ──────────────────────────────┐ skip
                                 └ DownPool p₁ ─► down stage @ L/p₁, width 2D ──┐ skip │
                                                     └ DownPool p₂ ─► centre @ L/(p₁p₂), 4D
                                                     ┌ UpPool p₂ (shifted) ◄────┘     │
                                 up stage @ L/p₁ ◄── + ◄────────────────────────┘     │
                             ┌ UpPool p₁ (shifted) ◄┘                                 │
    logits (b, L, 256) ◄ head ◄ up stage @ L ◄── + ◄─────────────────────────────────┘

A stage is n_layers pre-norm residual Mamba blocks. DownPool folds p consecutive steps into one (reshape, then a
linear map to the next width); UpPool maps one step back to p (linear, then reshape). For an autoregressive model
the UpPool output is delayed by one coarse step (p samples): the outputs for samples [tp, (t+1)p) see only coarse
steps < t, which summarise samples < tp, so the whole network stays causal. `step` runs it recurrently, one sample at
a time: a stage at rate 1/p runs once every p samples on the buffered outputs of the stage above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from ..config import MambaConfig
from ..generation import InferenceCache
from ..modules import Block, RMSNorm
from .backbone import build_mixer, init_weights


@dataclass
class AudioUNetConfig:
    """d_model: width D of the full-rate stages; pools: pooling factor of each level (widths D, widen·D, widen²·D …);
    n_layers: Mamba blocks per stage (down, centre and up stages alike); n_classes: quantisation levels (inputs and
    outputs; 0: no head, `features` only); Mamba mixer options as in MambaConfig (d_state, d_conv, expand,
    complex_ssm); bidirectional: BiMamba blocks and no UpPool delay (a non-causal model, for classification or
    diffusion; no `step`); embed_tokens: False for a model that only reads `inputs_embeds` (no token embedding, so
    that no parameter goes unused, which DDP rejects)."""
    d_model: int = 64
    pools: tuple[int, ...] = (4, 4)
    widen: int = 2
    n_layers: int = 8
    n_classes: int = 256
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    complex_ssm: bool = False
    bidirectional: bool = False
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    embed_tokens: bool = True
    extra: dict = field(default_factory=dict)  # free-form metadata (quantisation, training recipe)

    def __post_init__(self):
        self.pools = tuple(int(p) for p in self.pools)
        if (any(p < 2 for p in self.pools) or self.widen < 1 or self.n_layers < 0 or self.d_model < 1
                or self.n_classes < 0):
            raise ValueError(f"AudioUNetConfig: pools must be ≥ 2, widen ≥ 1, n_layers ≥ 0, n_classes ≥ 0, got {self}")

    @property
    def widths(self) -> list[int]:
        return [self.d_model * self.widen ** level for level in range(len(self.pools) + 1)]

    @property
    def total_pool(self) -> int:
        """Input lengths must be multiples of this."""
        return math.prod(self.pools)

    def mixer_config(self, width: int) -> MambaConfig:
        return MambaConfig(d_model=width, n_layer=max(self.n_layers, 1), d_state=self.d_state, d_conv=self.d_conv,
                           expand=self.expand, complex_ssm=self.complex_ssm, bidirectional=self.bidirectional,
                           norm_eps=self.norm_eps, residual_in_fp32=self.residual_in_fp32)


AUDIO_PRESETS = {
    # the paper's SC09 model (≈ 6M parameters): 3 levels, pooling 4, D = 64, 8 blocks per stage
    "sc09": dict(d_model=64, pools=(4, 4), n_layers=8),
    # the paper's YouTubeMix model (≈ 3.5M parameters): pooling 16, D = 64, 3 blocks per stage, complex SSM
    "youtubemix": dict(d_model=64, pools=(16, 16), n_layers=3, complex_ssm=True),
}


def audio_unet_config(name: str, **overrides) -> AudioUNetConfig:
    if name not in AUDIO_PRESETS:
        raise ValueError(f"unknown audio preset {name!r}; choose from {', '.join(AUDIO_PRESETS)}")
    return AudioUNetConfig(**{**AUDIO_PRESETS[name], **overrides})


class MambaStage(nn.Module):
    """n_layers residual Mamba blocks at one width: (b, L, d) → (b, L, d), the residual stream after the last block
    (the identity when n_layers is 0)."""

    def __init__(self, config: AudioUNetConfig, width: int):
        super().__init__()
        mixer_config = config.mixer_config(width)
        self.blocks = nn.ModuleList(Block(width, build_mixer(mixer_config, i), config.norm_eps,
                                          config.residual_in_fp32) for i in range(config.n_layers))
        init_weights(self, max(config.n_layers, 1))

    def forward(self, x: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        hidden, residual = x, None
        for block in self.blocks:
            hidden, residual = block(hidden, residual, cache=cache)
        return x if residual is None else (hidden + residual).to(x.dtype)

    def allocate_inference_cache(self, batch_size: int) -> InferenceCache:
        return InferenceCache(batch_size, {i: block.mixer.allocate_inference_cache(batch_size)
                                           for i, block in enumerate(self.blocks)})

    def step(self, x: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One time step: x (b, d) → (b, d), the states in `cache` advanced."""
        out = self(x[:, None], cache=cache)[:, 0]
        cache.seqlen_offset += 1
        return out


class DownPool(nn.Module):
    """(b, L, d_in) → (b, L/p, d_out): each run of p steps, concatenated, through one linear map."""

    def __init__(self, d_in: int, pool: int, d_out: int):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(d_in * pool, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(rearrange(x, "b (l p) d -> b l (p d)", p=self.pool))


class UpPool(nn.Module):
    """(b, l, d_in) → (b, l·p, d_out): each step through one linear map to p steps. `causal` delays the result by one
    coarse step (zeros first), so that fine steps [tp, (t+1)p) see coarse steps < t only."""

    def __init__(self, d_in: int, pool: int, d_out: int, causal: bool = True):
        super().__init__()
        self.pool, self.causal = pool, causal
        self.linear = nn.Linear(d_in, d_out * pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)                                                   # (b, l, p·d_out)
        if self.causal:
            y = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)
        return rearrange(y, "b l (p d) -> b (l p) d", p=self.pool)


@dataclass
class UNetStepState:
    """Recurrent state of `AudioUNet.step`: per level, the caches of its down and up stages, the down-stage outputs
    of the current coarse step (b, p, d), the delayed UpPool outputs (b, p, d) and the position in the coarse step.
    On CUDA (`concurrent`), per level a side stream that runs the coarser levels' step while this level's up stage
    and the next sample's down stage run, the events that order the two, and whether such a step is in flight."""
    down: list[InferenceCache]
    up: list[InferenceCache]
    centre: InferenceCache
    down_buffer: list[torch.Tensor]
    up_buffer: list[torch.Tensor]
    phase: list[int]
    streams: list[torch.cuda.Stream] = field(default_factory=list)
    up_read: list[torch.cuda.Event] = field(default_factory=list)     # this level's up stage read its last slot
    coarse_done: list[torch.cuda.Event] = field(default_factory=list)  # the coarser step wrote up_buffer
    in_flight: list[bool] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor, batch first."""
        caches = [*self.down, *self.up, self.centre]
        return [t for cache in caches for t in cache.tensors()] + self.down_buffer + self.up_buffer


class AudioUNet(nn.Module):
    """Sample-level language model over quantised audio. forward: tokens (b, L) int64 (L a multiple of
    config.total_pool) → logits (b, L, n_classes) float; step: one token per row → the next logits."""

    def __init__(self, config: AudioUNetConfig):
        super().__init__()
        self.config = config
        widths, pools = config.widths, config.pools
        self.embedding = nn.Embedding(config.n_classes, config.d_model) if config.embed_tokens else None
        self.down = nn.ModuleList(MambaStage(config, widths[k]) for k in range(len(pools)))
        self.down_pool = nn.ModuleList(DownPool(widths[k], p, widths[k + 1]) for k, p in enumerate(pools))
        self.centre = MambaStage(config, widths[-1])
        self.up_pool = nn.ModuleList(UpPool(widths[k + 1], p, widths[k], causal=not config.bidirectional)
                                     for k, p in enumerate(pools))
        self.up = nn.ModuleList(MambaStage(config, widths[k]) for k in range(len(pools)))
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.n_classes) if config.n_classes else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=0.02)

    def features(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """input_ids (b, L) int64, or inputs_embeds (b, L, D) (e.g. projected spectrogram frames) → the normalised
        output of the last up stage (b, L, D), what the head reads. L must be a multiple of config.total_pool."""
        if inputs_embeds is None and self.embedding is None:
            raise ValueError("AudioUNet: this model has no token embedding (embed_tokens=False); pass inputs_embeds")
        x = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds     # (b, L, D)
        if x.shape[1] % self.config.total_pool:
            raise ValueError(f"AudioUNet: the length ({x.shape[1]}) must be a multiple of the total pooling "
                             f"{self.config.total_pool} (pools {self.config.pools})")
        skips = []
        for stage, pool in zip(self.down, self.down_pool):
            x = stage(x)
            skips.append(x)
            x = pool(x)                                                      # (b, L/p, widen·d)
        x = self.centre(x)
        for level in reversed(range(len(self.config.pools))):
            x = self.up[level](self.up_pool[level](x) + skips.pop())
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids))                           # (b, L, n_classes)

    def allocate_step_state(self, batch_size: int, concurrent: bool | None = None) -> UNetStepState:
        """The recurrent state for `step` at `batch_size` rows. `concurrent` runs each coarse step on a side stream,
        beside the finer levels' work that does not need it (see `step`); by default on CUDA, except for fp32 weights
        at more than 64 rows (SC09 U-Net on an H100, 32,000-sample clips: bf16 +16%, +20% and +5% samples/s at batch
        1, 64 and 256, fp32 +21% and +18% at 1 and 64, 2-3% slower at 256; BENCHMARKS.md)."""
        if self.config.bidirectional:
            raise ValueError("a bidirectional AudioUNet is not causal: it has no recurrent step")
        weight = self.norm.weight
        levels = len(self.config.pools)
        buffers = [torch.zeros(batch_size, p, w, device=weight.device, dtype=weight.dtype)
                   for p, w in zip(self.config.pools, self.config.widths)]
        state = UNetStepState([s.allocate_inference_cache(batch_size) for s in self.down],
                              [s.allocate_inference_cache(batch_size) for s in self.up],
                              self.centre.allocate_inference_cache(batch_size),
                              buffers, [b.clone() for b in buffers], [0] * levels)
        if concurrent is None:
            concurrent = weight.is_cuda and not (weight.dtype == torch.float32 and batch_size > 64)
        if concurrent:
            state.streams = [torch.cuda.Stream(weight.device) for _ in range(levels)]
            state.up_read = [torch.cuda.Event() for _ in range(levels)]
            state.coarse_done = [torch.cuda.Event() for _ in range(levels)]
            state.in_flight = [False] * levels
        return state

    def step(self, tokens: torch.Tensor, state: UNetStepState) -> torch.Tensor:
        """tokens (b,) int64, the input at the next position → logits (b, n_classes) for that position; `state` is
        advanced (its tensors in place, so that the step can be captured in a CUDA graph). Stepping through a
        sequence gives the same logits as `forward` on it.

        With a concurrent state the step of a coarser level is queued on a side stream as soon as the down stage
        has filled its buffer: it runs beside this level's up stage and the next sample's down stage, and the next
        sample's up stage waits for it. The logits are on the current stream as always; call `join_step` before
        reading the state, and at the end of a captured CUDA graph (whose side streams must rejoin it)."""
        return self.head(self.norm(self._step_level(0, self.embedding(tokens), state)))

    def join_step(self, state: UNetStepState) -> None:
        """Make the current stream wait for every coarse step still in flight on a side stream."""
        for level in range(len(state.in_flight)):
            self._wait_coarse(level, state)

    def _step_level(self, level: int, x: torch.Tensor, state: UNetStepState) -> torch.Tensor:
        """x (b, width of level) at this level's rate → (b, width), running the coarser levels when a coarse step
        completes."""
        if level == len(self.config.pools):
            return self.centre.step(x, state.centre)
        pool, phase = self.config.pools[level], state.phase[level]
        down = self.down[level].step(x, state.down[level])
        if phase == 0:  # the coarse step queued a coarse step ago: its reads of down_buffer, its write of up_buffer
            self._wait_coarse(level, state)
        state.down_buffer[level][:, phase] = down
        if phase == pool - 1:                                                # a coarse step is complete
            up_next = self._coarse_step(level, state)
        out = self.up[level].step(state.up_buffer[level][:, phase] + down, state.up[level])
        if phase == pool - 1:
            self._store_up(level, up_next, state)
        state.phase[level] = (phase + 1) % pool
        return out

    def _coarse_step(self, level: int, state: UNetStepState) -> torch.Tensor:
        """The coarser levels' step on the full down_buffer → the UpPool output (b, p·width) for the next coarse
        step; on the level's side stream if the state is concurrent."""
        stream = state.streams[level] if state.streams else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):                                      # a no-op for None
            coarse = self.down_pool[level].linear(state.down_buffer[level].flatten(1))
            return self.up_pool[level].linear(self._step_level(level + 1, coarse, state))

    def _store_up(self, level: int, up_next: torch.Tensor, state: UNetStepState) -> None:
        """up_buffer ← up_next, once this level's up stage has read the buffer's last slot."""
        if not state.streams:
            state.up_buffer[level].copy_(up_next.view_as(state.up_buffer[level]))
            return
        stream = state.streams[level]
        state.up_read[level].record(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            stream.wait_event(state.up_read[level])
            state.up_buffer[level].copy_(up_next.view_as(state.up_buffer[level]))
            state.coarse_done[level].record(stream)
        state.in_flight[level] = True

    def _wait_coarse(self, level: int, state: UNetStepState) -> None:
        """The current stream waits for the level's coarse step in flight, if any (it ends with its up_buffer write,
        after its reads of down_buffer)."""
        if state.streams and state.in_flight[level]:
            torch.cuda.current_stream().wait_event(state.coarse_done[level])
            state.in_flight[level] = False
