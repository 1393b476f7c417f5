"""Recurrent inference: the per-layer cache, sampling, and the finiteness check of long generations.

    InferenceCache      per-layer recurrent states of a Mamba stack
    sampling_logits     the logits a token is drawn from: allowed tokens, repetition penalty, temperature, top-k,
                        top-p, min-p (no host sync)
    sample_next_token   one multinomial draw per row
    sample_with_noise   one Gumbel-max draw per row from noise given by the caller (a CUDA graph can hold it)
    generate            autoregressive sampling from a causal LM: a parallel prefill, then chunks of recurrent steps
                        (one CUDA graph per chunk on the GPU), the output written into one preallocated tensor
    FiniteWatch         stops a generation whose logits or recurrent state stop being finite, with GenerationDiverged
                        naming the position and the rows (used by `generate` and `audio.generate.sample_audio`)
    replay_graph        run a chunk of steps as a CUDA graph recorded on first use (both generators)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import GenerationDiverged


@dataclass
class InferenceCache:
    """Per-layer recurrent state. states[layer_idx] = (conv_state (b, E, W), ssm_state (b, E, N)).

    seqlen_offset counts the tokens already consumed. A forward of several tokens runs the parallel path from the
    cached states (a prefill at offset 0, or the next chunk of a long sequence); a single token goes through the
    recurrent step."""
    batch_size: int
    states: dict = field(default_factory=dict)
    seqlen_offset: int = 0

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor, batch first."""
        return [t for layer in self.states.values() for t in layer]


def is_greedy(temperature: float, top_k: int) -> bool:
    return temperature == 0 or top_k == 1


def allowed_mask(allowed_token_ids: list[int] | None, vocab: int, device) -> torch.Tensor | None:
    """(vocab,) bool, True at the allowed ids (None when all are allowed)."""
    if allowed_token_ids is None:
        return None
    keep = torch.zeros(vocab, dtype=torch.bool, device=device)
    keep[torch.as_tensor(allowed_token_ids, device=device)] = True
    return keep


def sampling_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    min_p: float = 0.0, repetition_penalty: float = 1.0, seen: torch.Tensor | None = None,
                    allowed: torch.Tensor | None = None) -> torch.Tensor:
    """logits (b, V) → float (b, V), the logits a token is drawn from: softmax of the result is the distribution,
    or, for greedy settings (temperature 0 or top_k 1), its argmax is the choice. No host sync (a CUDA graph can hold
    it).

    Order: tokens outside `allowed` ((V,) bool, if given) at −inf; the repetition penalty on the tokens marked in
    `seen` ((b, V) bool; CTRL: positive logits divided by the penalty, negative ones multiplied); then, unless greedy,
    the temperature and the top-k, top-p (smallest set with cumulative probability ≥ top_p) and min-p (drop tokens
    below min_p × the top probability) filters."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if is_greedy(temperature, top_k):
        return logits
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        logits = nucleus_filter(logits, top_p)
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def sample_next_token(logits: torch.Tensor, previous: torch.Tensor | None = None, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                      allowed_token_ids: list[int] | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row. logits: (b, V) float; previous: (b, T) ids already in the sequence (for the
    repetition penalty). temperature 0 (or top_k 1) is greedy. Returns (b,) int64. The filters are those of
    `sampling_logits`, in its order."""
    seen = None
    if repetition_penalty != 1.0 and previous is not None:
        seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(1, previous, True)
    logits = sampling_logits(logits, temperature, top_k, top_p, min_p, repetition_penalty, seen,
                             allowed_mask(allowed_token_ids, logits.shape[-1], logits.device))
    if is_greedy(temperature, top_k):
        return logits.argmax(-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits (b, V) float → the same with every token outside the smallest set of cumulative probability ≥ top_p
    (the most likely first) set to −inf."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    sorted_probs = sorted_logits.softmax(-1)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep up to and including the crossing token
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), float("-inf"))


def sample_with_noise(logits: torch.Tensor, uniform: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0
                      ) -> torch.Tensor:
    """One token per row drawn from softmax(logits / temperature) (after the top-p filter) by the Gumbel-max trick:
    argmax(logits / T − log(−log u)) with uniform (b, V) noise in [0, 1) given by the caller. No host sync and no
    random generator inside, so a CUDA graph can capture it and the draw is fixed by the noise. logits (b, V);
    temperature 0 is greedy. Returns (b,) int64."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        logits = nucleus_filter(logits, top_p)
    return (logits - torch.log(-torch.log(uniform))).argmax(-1)


# ------------------------------------------------------------------------------------------- the finiteness check
def state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a recurrent state, batch first: an InferenceCache or a U-Net step state (their `tensors()`),
    a tensor, or a list or tuple of those. A state of another kind (a Transformer's KV cache) gives none."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in state_tensors(item)]
    tensors = getattr(state, "tensors", None)
    return list(tensors()) if callable(tensors) else []


def state_max_abs(state, n: int) -> torch.Tensor | None:
    """(n,) fp32: the largest |entry| of each row's recurrent state (NaN or inf where an entry is), or None when the
    state has no batch-first tensors."""
    tensors = [t for t in state_tensors(state) if t.dim() and t.shape[0] == n and t.numel()]
    if not tensors:
        return None
    return torch.stack([t.detach().reshape(n, -1).abs().amax(1).float() for t in tensors]).amax(0)


def _row_list(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:8])
    return shown + (f" … ({len(rows)} in all)" if len(rows) > 8 else "")


class FiniteWatch:
    """Stops a generation whose logits or recurrent state stop being finite, naming the position and the rows.

    `mark(i, logits)` at step i of a chunk of steps notes the rows whose logits there are not all finite (no host
    sync: a CUDA graph can hold it); `end_chunk(position, steps)` (after the chunk, still no sync) keeps each row's
    first such position; `check(state, position)` (every few thousand positions: one host sync) raises
    GenerationDiverged if a row had non-finite logits or if any entry of the recurrent state is NaN or ±inf, and
    records the largest |entry| of the state in `max_abs` (None for a state without tensors: a KV cache). `row` and
    `unit` name the rows and positions in the message ("sequence"/"position", "clip"/"sample")."""

    def __init__(self, n: int, size: int, device, row: str = "sequence", unit: str = "position"):
        self.n, self.row, self.unit = n, row, unit
        self.flags = torch.zeros(n, size, dtype=torch.bool, device=device)
        self.first = torch.empty(n, dtype=torch.int64, device=device)               # set by reset
        self.reset()

    def reset(self) -> None:
        """For a new generation on the same buffers: no position marked, nothing checked."""
        self.first.fill_(-1)
        self.max_abs, self.checks, self.checked_to = 0.0, 0, None

    def mark(self, i: int, logits: torch.Tensor) -> None:
        self.flags[:, i] = ~torch.isfinite(logits).all(-1)

    def end_chunk(self, position: int, steps: int) -> None:
        """`position`: the position whose logits step 0 of the chunk marked."""
        flags = self.flags[:, :steps]
        step = torch.arange(steps, device=flags.device).expand_as(flags)
        at = position + torch.where(flags, step, steps).amin(1)              # the first marked step of each row
        self.first = torch.where((self.first < 0) & flags.any(1), at, self.first)

    def check(self, state, position: int) -> None:
        """`position`: how many positions the state has consumed."""
        per_row = state_max_abs(state, self.n)
        row_max = [0.0] * self.n if per_row is None else per_row.tolist()
        first = self.first.tolist()
        bad_logits = sorted((p, r) for r, p in enumerate(first) if p >= 0)
        bad_state = [r for r, value in enumerate(row_max) if not math.isfinite(value)]
        if bad_logits or bad_state:
            row, unit, parts = self.row, self.unit, []
            if bad_logits:
                p, r = bad_logits[0]
                others = sorted({r2 for _, r2 in bad_logits} - {r})
                also = f" (also in {row}{'s' if len(others) > 1 else ''} {_row_list(others)})" if others else ""
                parts.append(f"non-finite logits at {unit} {p:,} of {row} {r}{also}")
            if bad_state:
                parts.append(f"a non-finite recurrent state in {row}{'s' if len(bad_state) > 1 else ''} "
                             f"{_row_list(bad_state)} after {position:,} {unit}s")
            since = ("at the first check" if self.checked_to is None else
                     f"everything was finite at the check after {self.checked_to:,} {unit}s")
            raise GenerationDiverged(f"generation diverged: {'; '.join(parts)} ({since})",
                                     bad_logits[0][0] if bad_logits else position,
                                     sorted({r for _, r in bad_logits} | set(bad_state)))
        self.max_abs = None if per_row is None else max(row_max, default=0.0)  # None: no recurrent state
        self.checks += 1
        self.checked_to = position


def replay_graph(graphs: dict, key, record) -> None:
    """Replay the CUDA graph of `key` in `graphs`, recording `record()` into it on first use (recording runs none of
    its work: the steps' buffers and counters are as they were)."""
    if key not in graphs:
        graphs[key] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[key]):
            record()
    graphs[key].replay()


# ------------------------------------------------------------------------------------------------------ generate
class _StepChunk:
    """`size` recurrent steps of a causal LM on fixed buffers, so that a CUDA graph can hold them: at step i the
    logits of the current position (`logits`, left by the step before) are marked by the watch, a token is drawn
    from them with noise[i] (Gumbel-max; argmax if greedy), written to codes[:, i] and fed to the model, whose
    logits for the next position replace `logits`. `seen` (the repetition penalty's tokens) and `finished` (rows past
    their EOS) are updated in place."""

    def __init__(self, model, cache: InferenceCache, n: int, vocab: int, size: int, sampling: dict,
                 seen: torch.Tensor | None, allowed: torch.Tensor | None, eos_token_id: int | None, device):
        self.model, self.cache, self.size, self.sampling = model, cache, size, sampling
        self.seen, self.allowed, self.eos = seen, allowed, eos_token_id
        self.greedy = is_greedy(sampling["temperature"], sampling["top_k"])
        self.logits = torch.empty(n, vocab, dtype=torch.float32, device=device)
        self.noise = None if self.greedy else torch.empty(size, n, vocab, device=device)
        self.codes = torch.empty(n, size, dtype=torch.int64, device=device)
        self.finished = None if eos_token_id is None else torch.zeros(n, dtype=torch.bool, device=device)
        self.watch = FiniteWatch(n, size, device)
        self.graphs = {}

    def run(self, steps: int) -> None:
        for i in range(steps):
            self.watch.mark(i, self.logits)
            logits = sampling_logits(self.logits, **self.sampling, seen=self.seen, allowed=self.allowed)
            token = logits.argmax(-1) if self.greedy else sample_with_noise(logits, self.noise[i])
            if self.finished is not None:
                token = token.masked_fill(self.finished, self.eos)
                self.finished |= token == self.eos
            if self.seen is not None:
                self.seen.scatter_(1, token[:, None], True)
            self.codes[:, i] = token
            self.logits.copy_(self.model(token[:, None], cache=self.cache)[:, -1])

    def replay(self) -> None:
        """`run(size)` as a CUDA graph, recorded on first use."""
        replay_graph(self.graphs, None, lambda: self.run(self.size))


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
             eos_token_id: int | None = None, allowed_token_ids: list[int] | None = None, cuda_graphs: bool = True,
             progress: bool = False, check_every: int = 1024, chunk_size: int = 64,
             stats: dict | None = None) -> torch.Tensor:
    """Autoregressive sampling from a causal LM with a recurrent cache.

    input_ids: (b, T) int64 prompt (T ≥ 1). The prompt is consumed by one parallel forward (prefill); each new
    token then costs one recurrent step, O(1) in the sequence length, and memory stays that of the states plus the
    (b, T + max_new_tokens) output. Filters as in `sampling_logits`; `allowed_token_ids` restricts sampling (e.g. to
    the four bases). Draws are Gumbel-max with uniform noise drawn `chunk_size` positions at a time from a generator
    seeded with `seed`, so a seed gives the same sequence with and without CUDA graphs (`cuda_graphs`, on CUDA: the
    first chunk runs eagerly, the whole chunks after it replay one graph). Returns (b, T + max_new_tokens) ids (rows
    that produced `eos_token_id` are padded with it from there on).

    Every position's logits are checked for NaN/inf on the device, and every `check_every` positions (and at the
    end) the recurrent state too, with one host sync: a non-finite value raises GenerationDiverged naming the first
    such position and the rows. `progress` shows a progress bar; `stats`, if given, receives "state_max_abs" (the
    largest |state| entry at the last check) and "checks"."""
    from tqdm import tqdm

    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"generate: input_ids must be (batch, T) with T >= 1, got {tuple(input_ids.shape)}")
    if max_new_tokens < 0 or chunk_size < 1:
        raise ValueError(f"generate: max_new_tokens must be ≥ 0 and chunk_size ≥ 1, got {max_new_tokens}, "
                         f"{chunk_size}")
    n, prompt_len = input_ids.shape
    device = input_ids.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    out = torch.empty(n, prompt_len + max_new_tokens, dtype=torch.int64, device=device)
    out[:, :prompt_len] = input_ids
    cache = model.allocate_inference_cache(n)
    logits = model(input_ids, cache=cache)[:, -1]
    vocab = logits.shape[-1]
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(n, vocab, dtype=torch.bool, device=device).scatter_(1, input_ids, True)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty)
    size = min(chunk_size, max(max_new_tokens, 1))
    chunk = _StepChunk(model, cache, n, vocab, size, sampling, seen, allowed_mask(allowed_token_ids, vocab, device),
                       eos_token_id, device)
    chunk.logits.copy_(logits)
    watch = chunk.watch
    use_graphs = cuda_graphs and device.type == "cuda"
    check_chunks = max(1, math.ceil(check_every / size))
    position = prompt_len
    with tqdm(total=max_new_tokens, desc="generate", unit="token", disable=not progress, mininterval=1.0) as bar:
        for index, start in enumerate(range(0, max_new_tokens, size)):
            steps = min(size, max_new_tokens - start)
            if chunk.noise is not None:
                torch.rand(chunk.noise.shape, generator=generator, device=device, out=chunk.noise)
            if use_graphs and start > 0 and steps == size:
                chunk.replay()
            else:
                chunk.run(steps)
            watch.end_chunk(position, steps)
            out[:, position:position + steps] = chunk.codes[:, :steps]
            position += steps
            bar.update(steps)
            if (index + 1) % check_chunks == 0:
                watch.check(cache, position)
            if chunk.finished is not None and position < out.shape[1] and bool(chunk.finished.all()):
                out[:, position:] = eos_token_id
                break
    if watch.checked_to != position:
        watch.check(cache, position)
    if stats is not None:
        stats.update(state_max_abs=watch.max_abs, checks=watch.checks)
    return out
