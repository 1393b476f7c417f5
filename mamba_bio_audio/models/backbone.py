"""Mamba backbone: embedding, n_layer residual blocks, final RMSNorm."""
from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import MambaConfig
from ..generation import InferenceCache
from ..kernels import add_rmsnorm
from ..modules import BiMamba, Block, Mamba, RMSNorm


def build_mixer(config: MambaConfig, layer_idx: int) -> nn.Module:
    kwargs = dict(d_state=config.d_state, d_conv=config.d_conv, expand=config.expand, dt_rank=config.dt_rank,
                  dt_min=config.dt_min, dt_max=config.dt_max, dt_init_floor=config.dt_init_floor,
                  conv_bias=config.conv_bias, bias=config.bias, complex_ssm=config.complex_ssm, layer_idx=layer_idx)
    if config.bidirectional:
        return BiMamba(config.d_model, strategy=config.bidirectional_strategy,
                       weight_tie=config.bidirectional_weight_tie, **kwargs)
    return Mamba(config.d_model, **kwargs)


def init_weights(module: nn.Module, n_layer: int) -> None:
    """The reference initialisation: zero linear biases (but dt_proj's), N(0, 0.02) embeddings, and every
    out_proj (the projection that writes into the residual stream) scaled by 1/sqrt(n_layer)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and sub.bias is not None and not getattr(sub.bias, "_no_reinit", False):
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=0.02)
    for name, p in module.named_parameters():
        if name.endswith("out_proj.weight"):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(n_layer)


class MambaBackbone(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(
            Block(config.d_model, build_mixer(config, i), config.norm_eps, config.residual_in_fp32)
            for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False  # training option: recompute each block in the backward
        init_weights(self, config.n_layer)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                cache: InferenceCache | None = None) -> torch.Tensor:
        """input_ids (b, L) int64, or inputs_embeds (b, L, d) -> hidden states (b, L, d) after the final norm
        ((b, L, 2d) for an rc_equivariant config: see `rc_equivariant_forward`).

        With `gradient_checkpointing` set (and grad enabled, no cache), each block keeps only its inputs and is run
        again in the backward: activation memory per block drops to its input, at about one more forward."""
        if self.config.rc_equivariant:
            if input_ids is None or cache is not None:
                raise ValueError("an rc_equivariant backbone takes input_ids and has no recurrent inference")
            return self.rc_equivariant_forward(input_ids)
        return self._forward(input_ids, inputs_embeds, cache)

    def rc_equivariant_forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (b, L) DNATokenizer ids -> (b, L, 2d): [h(x), h(RC x).flip(length, channels)].

        This is Caduceus-PS's reverse-complement parameter sharing: its RCPS embedding puts the embedding of the
        complement, channel-reversed, in the second half, and each RCPS block applies the same mixer to the first
        half and to the reverse complement of the second; with no mixing between halves before the head, that is the
        same network on both strands. So RC(x) gives exactly the output flipped along length and channels, and
        features h1 + h2.flip(length, channels) (or pooled h1 + pooled h2 channel-flipped) are RC-invariant."""
        from ..dna.tokenizer import DNATokenizer

        both = self._forward(torch.cat([input_ids, DNATokenizer.reverse_complement(input_ids)]), None, None)
        forward, reverse = both.chunk(2)
        return torch.cat([forward, reverse.flip(1, 2)], dim=-1)

    def _forward(self, input_ids, inputs_embeds, cache) -> torch.Tensor:
        hidden = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        recompute = self.gradient_checkpointing and torch.is_grad_enabled() and cache is None
        for layer in self.layers:
            if recompute:
                hidden, residual = torch.utils.checkpoint.checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, cache=cache)
        return add_rmsnorm(hidden, residual, self.norm_f.weight, self.norm_f.eps, self.config.residual_in_fp32)[0]

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> InferenceCache:
        if self.config.bidirectional:
            raise ValueError("a bidirectional backbone is not causal: it has no recurrent inference")
        return InferenceCache(batch_size, {i: layer.mixer.allocate_inference_cache(batch_size, dtype)
                                           for i, layer in enumerate(self.layers)})
