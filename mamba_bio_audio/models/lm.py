"""Causal language model: Mamba backbone + LM head tied to the embedding."""
from __future__ import annotations

import torch
from torch import nn

from ..config import MambaConfig
from ..generation import InferenceCache, generate
from .backbone import MambaBackbone
from .pretrained import PretrainedMixin


class MambaLMHeadModel(nn.Module, PretrainedMixin):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """input_ids: (b, L) int64 -> logits (b, L, vocab_size) (the padding rows of the vocabulary are cut).

        With a cache, the call also advances it: a prefill at offset 0, recurrent steps after that."""
        hidden = self.backbone(input_ids, cache=cache)
        if self.config.rc_equivariant:
            return self._rc_equivariant_logits(hidden)
        logits = self.lm_head(hidden)[..., : self.config.vocab_size]
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return logits

    def _rc_equivariant_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (b, L, 2d) of an rc_equivariant backbone -> logits (b, L, vocab): the head on the forward half plus,
        complement-permuted, the head on the reverse half flipped back along channels (Caduceus's RC-equivariant
        head): logits(RC x) = complement(logits(x)) reversed along L. Each position sees both strands, so this head
        is for bidirectional objectives (masked-LM), not for next-base prediction."""
        from ..dna.tokenizer import DNATokenizer

        vocab = self.config.vocab_size
        complement = DNATokenizer.reverse_complement(torch.arange(vocab, device=hidden.device)[None]).flip(-1)[0]
        forward, reverse = hidden.chunk(2, dim=-1)
        return (self.lm_head(forward)[..., :vocab]
                + self.lm_head(reverse.flip(-1))[..., :vocab][..., complement])

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> InferenceCache:
        return self.backbone.allocate_inference_cache(batch_size, dtype)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """See `mamba_bio_audio.generation.generate` (temperature, top_k, top_p, min_p, repetition_penalty, seed,
        eos_token_id, allowed_token_ids, cuda_graphs, progress, check_every, stats)."""
        return generate(self, input_ids, max_new_tokens, **sampling)
