"""Rollouts: sample M rationales per question with thinking-budget forcing (Hugging Face `generate`).

One sample is the token sequence   prompt | z | forced | y   (a `Sample`):
    z       the rationale: tokens the model sampled inside the thinking block, a naturally
            sampled "</think>" included
    forced  the "</think>" tokens forced when the thinking budget ran out (else empty)
    y       the answer after "</think>": the gold answer teacher-forced (GARL, PAFT), or the
            model's own answer (GRPO, evaluation); EOS included

generate(...) samples them, M per prompt and several prompts per call; logprobs.py then scores them
(logp_z = sum of log p over z's tokens, logp_y = sum over y's tokens).

Project choices (the paper does not say):
- Budget forcing happens inside `generate` (a logits processor), so one call serves both modes. A
  forced token has probability 1 under the sampler: it counts in neither logp_z nor logp_y.
- End-of-sequence tokens are banned inside the thinking block (a thinking block must close before
  the answer), and logp_z is the log-probability under that sampler: the softmax over the vocabulary
  without those tokens. Then logp_z is exactly the log-probability of how z was drawn, which the
  score-function term needs. Qwen3 in thinking mode almost never ends inside a thinking block, so
  for the paper's model this is the paper's p(z|x) to within rounding.
- "</think>" closes the rationale when the sampled tokens end with its tokenization (one token in
  Qwen3, three in SmolLM2, eight bytes in the tiny model); other spellings of it do not count.

Performance (bench.py measures it; test_perf.py checks it against the plain path): the M samples of
a prompt share one prefill (its key/value cache is copied M times, not recomputed), and each step's
keys and values go into a cache allocated once for the whole rollout instead of being concatenated
(a copy of the whole cache per layer per step).
"""
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer

from prompts import THINK_CLOSE

# The paper's thinking budgets (Sec. 7): 4096 / 3072 / 2048 tokens in all, of which 128 are kept for the answer.
PAPER_THINK_BUDGETS = {"finqa": 4096 - 128, "hotpotqa": 3072 - 128, "musique": 2048 - 128}

# Prompt tokens run through the model so far, by generate, sequence_logprobs and log_weights alike.
# bench.py reads it to report how much prompt computation sharing saves (it never affects results).
COUNTS = {"prompt_tokens": 0}


@dataclass
class Sample:
    prompt_ids: list[int]
    z_ids: list[int]
    forced_ids: list[int]
    y_ids: list[int] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.z_ids + self.forced_ids + self.y_ids

    @property
    def forced(self) -> bool:
        return bool(self.forced_ids)


@dataclass
class Tokens:
    """The token ids rollouts need from a tokenizer, worked out once."""
    close_ids: list[int]  # the tokenization of "</think>"
    eos_ids: list[int]  # every token that ends a completion (banned while thinking)
    pad_id: int

    @classmethod
    def of(cls, tokenizer, generation_config=None) -> "Tokens":
        eos = {tokenizer.eos_token_id}
        if generation_config is not None and generation_config.eos_token_id is not None:
            gen_eos = generation_config.eos_token_id
            eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        eos.discard(None)
        close_ids = tokenizer(THINK_CLOSE, add_special_tokens=False).input_ids
        return cls(close_ids=close_ids, eos_ids=sorted(eos), pad_id=tokenizer.pad_token_id)


class BudgetState:
    """Per-row thinking state during one `generate` call: where each row's rationale closed.

    closed_at[r] = number of generated tokens when row r's rationale closed (-1: still thinking).
    Shared by the logits processor (bans EOS, forces "</think>") and the stopping criterion.
    """

    def __init__(self, rows: int, prompt_len: int, budget: int, tokens: Tokens, answer_budget: int | None, device):
        self.prompt_len, self.budget, self.tokens, self.answer_budget = prompt_len, budget, tokens, answer_budget
        self.close = torch.tensor(tokens.close_ids, device=device)  # [C]
        self.closed_at = torch.full((rows,), -1, dtype=torch.long, device=device)  # [R]
        self.seen_len = -1

    def update(self, input_ids: torch.Tensor) -> int:
        """Record rationales that just closed; returns n, the number of generated tokens so far."""
        n = input_ids.shape[1] - self.prompt_len
        if input_ids.shape[1] != self.seen_len and n >= len(self.close):
            self.seen_len = input_ids.shape[1]
            just_closed = (input_ids[:, -len(self.close):] == self.close).all(-1) & (self.closed_at < 0)  # [R]
            self.closed_at[just_closed] = n
        return n


class ForceThinkingBudget(LogitsProcessor):
    """Ban EOS while thinking; once `budget` tokens are sampled, force the "</think>" tokens one by one."""

    def __init__(self, state: BudgetState):
        self.state = state

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        s = self.state
        n = s.update(input_ids)
        thinking = s.closed_at < 0  # [R]
        scores[thinking.nonzero()[:, :1], torch.tensor(s.tokens.eos_ids, device=scores.device)] = float("-inf")
        if n >= s.budget:  # every row still thinking is being forced now
            forced_token = s.close[min(n - s.budget, len(s.close) - 1)]
            rows = thinking.nonzero()[:, 0]
            scores[rows] = float("-inf")
            scores[rows, forced_token] = 0.0
        return scores


class StopAfterThinking(StoppingCriteria):
    """A row is done once its rationale closed (rationale mode) or its answer budget is spent."""

    def __init__(self, state: BudgetState):
        self.state = state

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        s = self.state
        n = s.update(input_ids)
        closed = s.closed_at >= 0
        if s.answer_budget is None:
            return closed
        return closed & (n - s.closed_at >= s.answer_budget)


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, padded on the left (generation appends on the right)."""
    L = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (L - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


def full_attention_only(model) -> bool:
    """Our cache layers (below) are full-attention layers; a model with sliding-window layers (not
    Qwen3-0.6B, not SmolLM2) keeps transformers' own caches and the plain paths."""
    layer_types = getattr(model.config.get_text_config(), "layer_types", None)
    return layer_types is None or all(t == "full_attention" for t in layer_types)


class _GrowingLayer(DynamicLayer):
    """One layer's key/value cache, in a buffer allocated once for the whole rollout.

    transformers' DynamicLayer appends with torch.cat, which copies the layer's whole cache at every
    decoding step: O(T^2) bytes over a T-token rollout, and two copies alive at once. Here each step
    writes its keys and values in place; `keys` and `values` are views of the filled part, so the
    attention sees exactly the tensors a DynamicLayer would hold. Only `generate`'s sampling uses it.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int, capacity: int):
        super().__init__()
        B, H, L, D = keys.shape  # the prefilled prompts' cache, one row per prompt
        self._keys = keys.new_empty(B * repeats, H, capacity, D)  # [B*M, H, capacity, D]
        self._values = values.new_empty(B * repeats, H, capacity, values.shape[-1])
        # Copy the prompt's cache into each of its M rows, without materializing the repeated tensor.
        self._keys.view(B, repeats, H, capacity, D)[..., :L, :] = keys[:, None]
        self._values.view(B, repeats, H, capacity, -1)[..., :L, :] = values[:, None]
        self.keys, self.values = self._keys[..., :L, :], self._values[..., :L, :]
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        n, L = key_states.shape[-2], self.keys.shape[-2]
        if L + n > self._keys.shape[-2]:  # never with generate's max_new_tokens; grow like a DynamicLayer would
            self._keys = torch.cat([self.keys, key_states], -2)
            self._values = torch.cat([self.values, value_states], -2)
        else:
            self._keys[..., L:L + n, :] = key_states
            self._values[..., L:L + n, :] = value_states
        self.keys, self.values = self._keys[..., :L + n, :], self._values[..., :L + n, :]
        return self.keys, self.values


@torch.no_grad()
def generate(model, prompt_ids: list[list[int]], M: int, tokens: Tokens, think_budget: int,
             answer_budget: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
             shared_prefill: bool = True) -> list[list[Sample]]:
    """Sample M rationales (and answers, if answer_budget is set) for each prompt, in one `generate` call.

    Returns samples[b][m]. Without answer_budget (GARL, PAFT) a row stops when its rationale closes
    and y is left empty, for the caller to fill with the gold answer. With it (GRPO, evaluation) a
    row goes on to write its answer: up to answer_budget tokens, ending at the first EOS (kept in y,
    also when the pad token is the EOS token).

    shared_prefill: run the prompts through the model once and copy their key/value cache M times
    (into a cache sized for the whole rollout), instead of letting generate recompute each prompt M
    times. Same tokens, M times less prefill. False is the plain path, kept as the reference.
    """
    if think_budget < 1:
        raise ValueError(f"--think-budget must be >= 1, got {think_budget}")
    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, tokens.pad_id, device)  # [B, L]
    B, L = ids.shape
    ids, mask = ids.repeat_interleave(M, 0), mask.repeat_interleave(M, 0)  # [B*M, L]
    max_new = think_budget + len(tokens.close_ids) + (answer_budget or 0)
    extra = {}
    if shared_prefill:
        one_ids, one_mask = ids[::M, :-1], mask[::M, :-1]  # [B, L-1]: generate computes the last prompt token
        position_ids = (one_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        cache = model(input_ids=one_ids, attention_mask=one_mask, position_ids=position_ids, use_cache=True).cache
        # The M samples of a prompt share its prefill: each layer's cache is copied into M rows of a
        # buffer with room for every token this call can add (the last prompt token + max_new).
        if full_attention_only(model):
            cache.layers = [_GrowingLayer(layer.keys, layer.values, M, L + max_new) for layer in cache.layers]
        else:  # sliding-window layers keep transformers' own cache classes
            cache.batch_repeat_interleave(M)
        extra["cache"] = cache
        COUNTS["prompt_tokens"] += B * (L - 1) + B * M  # the last prompt token runs once per row
    else:
        COUNTS["prompt_tokens"] += B * M * L

    state = BudgetState(B * M, L, think_budget, tokens, answer_budget, device)
    config = GenerationConfig(  # explicit: a model's own generation_config (Qwen3: top_k=20, T=0.6) must not leak in
        do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new,
        eos_token_id=tokens.eos_ids if answer_budget else None, pad_token_id=tokens.pad_id)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                         logits_processor=LogitsProcessorList([ForceThinkingBudget(state)]),
                         stopping_criteria=StoppingCriteriaList([StopAfterThinking(state)]), **extra)
    state.update(out)
    new = out[:, L:].tolist()  # [B*M, <= max_new]
    closed_at = state.closed_at.tolist()

    samples = [[] for _ in range(B)]
    for r, gen in enumerate(new):
        c = closed_at[r]
        if c < 0:
            raise RuntimeError(f"row {r}: the rationale never closed; the budget processor failed")
        z_end = min(c, think_budget)  # natural close: c <= budget; forced: c = budget + len(close)
        sample = Sample(prompt_ids[r // M], gen[:z_end], gen[z_end:c])
        if answer_budget:
            answer = gen[c:c + answer_budget]
            ends = [i for i, t in enumerate(answer) if t in tokens.eos_ids]
            sample.y_ids = answer[:ends[0] + 1] if ends else answer  # the genuine EOS stays, padding goes
        samples[r // M].append(sample)
    return samples
