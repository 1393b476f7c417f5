"""Transformer++ language model: the baseline of the Mamba paper's DNA and audio comparisons.

Pre-norm decoder blocks (RMSNorm → causal self-attention with rotary position embeddings through
`scaled_dot_product_attention` → residual; RMSNorm → SwiGLU MLP → residual), a final RMSNorm and an LM head tied to
the embedding. A Transformer++ block has about twice the parameters of a Mamba block, so a size-matched baseline
has half as many blocks as the Mamba model (`TransformerConfig.matching`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import nn

from ..modules.norm import RMSNorm


@dataclass
class TransformerConfig:
    """d_model: width; n_layer: blocks; n_head: attention heads (head size d_model / n_head, even for RoPE);
    mlp_hidden: SwiGLU hidden width (default 8/3·d_model rounded up to a multiple of 8); vocab padded to a multiple
    of `pad_vocab_size_multiple` for the weights, logits returned for `vocab_size`."""
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 2
    vocab_size: int = 12
    mlp_hidden: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    pad_vocab_size_multiple: int = 8

    def __post_init__(self):
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_head} heads of even size")
        if self.mlp_hidden is None:
            self.mlp_hidden = (8 * self.d_model // 3 + 7) // 8 * 8

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def matching(cls, d_model: int, n_mamba_layers: int, vocab_size: int = 12) -> "TransformerConfig":
        """The size-matched baseline of a Mamba model: same width, half the blocks, heads of 64 (fewer, wider heads
        below width 128)."""
        return cls(d_model=d_model, n_layer=max(1, n_mamba_layers // 2), n_head=max(1, d_model // 64),
                   vocab_size=vocab_size)


def rotary_tables(length: int, head_dim: int, base: float, device, dtype=torch.float32):
    """cos, sin of the rotary angles, each (length, head_dim / 2): angle[t, i] = t · base^(−2i / head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., :h/2], x[..., h/2:]) of x (batch, heads, L, h) by the angles of cos, sin (L, h/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass
class KVCache:
    """Keys and values of the tokens consumed so far, per layer: keys[i], values[i] (b, heads, max_len, head), and
    the rotary tables for max_len positions. seqlen_offset counts the consumed tokens.

    Static mode (`position` set, for CUDA graphs): one token per call, written at the device-side `position` ((1,)
    int64, advanced in place by the model), attending to the first `attend_len` slots with those after `position`
    masked out; no host value changes from call to call, so a graph of several steps can be replayed. `attend_len`
    (a Python int the caller sets, ≥ position + 1 for every step of a graph) bounds the attention's work."""
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    cos: torch.Tensor
    sin: torch.Tensor
    seqlen_offset: int = 0
    layer_of: dict = field(default_factory=dict)  # id(Attention module) → its index
    position: torch.Tensor | None = None
    attend_len: int = 0


def one_query_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor
                        ) -> torch.Tensor:
    """Attention of one query per row over S cache slots: q (b, heads, 1, h), keys and values (b, heads, S, h),
    visible (1, S) bool → (b, heads, 1, h) in q's dtype: two batched products around a softmax in fp32 (fp64 for fp64
    inputs). The static cache's step takes it for fp32 and fp64, `scaled_dot_product_attention` for 16-bit inputs. On
    an H100 (BENCHMARKS.md, 2026-11-25; 8 × 256 Transformer++, 2,000-sample clips) it generated 3.0× faster than SDPA
    in fp32 at batch 1 and 1.5–1.6× at 64 and 256, but 0.8× in bf16."""
    scores = torch.matmul(q, keys.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32))
    scores = scores * q.shape[-1] ** -0.5                                                    # (b, heads, 1, S)
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.matmul(weights.to(values.dtype), values)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head = config.n_head
        self.rope_base = config.rope_base
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x: (batch, L, d_model) → (batch, L, d_model), causal. With a KV cache: the L new tokens (a prompt at offset
        0, or one token) attend to the cached ones and to themselves, and their keys and values are cached."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is None:
            cos, sin = rotary_tables(length, width // self.n_head, self.rope_base, x.device, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)               # (batch, heads, L, head)
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif cache.position is not None:  # static mode: one token at the device-side position
            pos, span = cache.position, cache.attend_len
            if length != 1 or not 0 < span <= cache.cos.shape[0]:
                raise ValueError(f"static KV cache: one token at a time over 1…{cache.cos.shape[0]} slots, got "
                                 f"{length} token(s) over {span}")
            cos, sin = cache.cos.index_select(0, pos).to(q.dtype), cache.sin.index_select(0, pos).to(q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            layer = cache.layer_of[id(self)]
            cache.keys[layer].index_copy_(2, pos, k)
            cache.values[layer].index_copy_(2, pos, v)
            visible = (torch.arange(span, device=x.device) <= pos)[None]              # (1, span): slots ≤ position
            keys, values = cache.keys[layer][:, :, :span], cache.values[layer][:, :, :span]
            if q.dtype in (torch.float16, torch.bfloat16):
                y = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
            else:  # fp32/fp64: see one_query_attention
                y = one_query_attention(q, keys, values, visible)
        else:
            start, end = cache.seqlen_offset, cache.seqlen_offset + length
            if start and length != 1 or end > cache.cos.shape[0]:
                raise ValueError(f"KV cache: {length} token(s) at offset {start} (max {cache.cos.shape[0]}; after the "
                                 "prompt, one token at a time)")
            cos, sin = cache.cos[start:end].to(q.dtype), cache.sin[start:end].to(q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            layer = cache.layer_of[id(self)]
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            y = nn.functional.scaled_dot_product_attention(q, cache.keys[layer][:, :, :end],
                                                           cache.values[layer][:, :, :end], is_causal=start == 0)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class SwiGLU(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


class TransformerLM(nn.Module):
    """Transformer++ LM: forward(input_ids (batch, L) int64) → logits (batch, L, vocab_size); with a KV cache
    (`allocate_inference_cache`) it continues from the cached tokens (a prompt, then one token at a time)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight
        self.gradient_checkpointing = False  # training option: recompute each block in the backward
        self.apply(self._init_weights)
        for layer in self.layers:  # GPT-2 style: residual projections scaled by 1/sqrt(2·n_layer)
            for weight in (layer.attn.out.weight, layer.mlp.down.weight):
                nn.init.normal_(weight, std=0.02 / (2 * config.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = self.embedding(input_ids)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled() and cache is None
        for layer in self.layers:
            x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False) if recompute else layer(x, cache)
        if cache is not None and cache.position is not None:
            cache.position += input_ids.shape[1]
        elif cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self.lm_head(self.norm_f(x))[..., : self.config.vocab_size]

    def allocate_inference_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None,
                                 static: bool = False) -> KVCache:
        """A KV cache for `max_len` tokens: (b, heads, max_len, head) keys and values per layer, zeroed. `static`:
        the CUDA-graph mode of KVCache (position on the device, one token per call)."""
        config, weight = self.config, self.embedding.weight
        shape = (batch_size, config.n_head, max_len, config.d_model // config.n_head)
        keys = [torch.zeros(shape, device=weight.device, dtype=dtype or weight.dtype) for _ in self.layers]
        cos, sin = rotary_tables(max_len, shape[-1], config.rope_base, weight.device)
        return KVCache(keys, [torch.zeros_like(k) for k in keys], cos, sin,
                       layer_of={id(layer.attn): i for i, layer in enumerate(self.layers)},
                       position=torch.zeros(1, dtype=torch.int64, device=weight.device) if static else None,
                       attend_len=max_len if static else 0)
