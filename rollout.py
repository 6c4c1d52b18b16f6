"""Rollouts: sample M rationales per question with Hugging Face's `generate`, thinking budget forced.

One sample is the token sequence   prompt | z | forced | y   (a `Sample`):
    z       the rationale: tokens the model sampled inside the thinking block, a naturally
            sampled "</think>" included
    forced  the "</think>" tokens forced when the thinking budget ran out (else empty)
    y       the answer after "</think>": the gold answer teacher-forced (GARL, PAFT), or the
            model's own answer (GRPO, evaluation); EOS included

    tok = models.build_tiny_tokenizer(); model = models.build_tiny_model(tok); torch.manual_seed(0)
    samples = generate(model, [prompt], M=4, special=SpecialTokens.of(tok), think_budget=6)   # prompt: token ids
    samples[0][2].z_ids       # [177, 35, 170, 49, 95, 88]: six sampled tokens, the budget, then
    samples[0][2].forced_ids  # [260]: "</think>" forced (one token here and in Qwen3's tokenizer)
(prompt = prompts.prompt_ids(tok, {"question": "Who?", "context": "Rush is a band.", ...}, "hotpotqa", "warm").)

logprobs.py then scores them (logp_z = sum of log p over z's tokens, logp_y = sum over y's tokens).

How to read this file: the data (Sample, SpecialTokens), then the two rules a thinking block adds to
sampling, written as `generate`'s own tools: `ThinkingBlockRules` (a LogitsProcessor: no EOS inside the
block, "</think>" forced once the budget is spent) and `RolloutDone` (a StoppingCriteria: a row stops when
its rationale closes, or after its answer); then `sampling_warpers` (temperature, top-k, top-p: Hugging
Face's own warpers) and `generate`, which hands all of it to `model.generate`. fast/decode.py's `generate`
takes the same arguments and draws the same tokens, faster (tests/test_fast_decode.py): train.py and eval.py
choose between the two (--decode generate|fast); nothing here imports it.

Project choices (the paper does not say):
- Budget forcing happens inside the sampling loop, so one `generate` call serves both modes. A forced token
  has probability 1 under the sampler: it counts in neither logp_z nor logp_y.
- End-of-sequence tokens are banned inside the thinking block (a thinking block must close before
  the answer), and logp_z is the log-probability under that sampler: the softmax over the vocabulary
  without those tokens. Then logp_z is exactly the log-probability of how z was drawn, which the
  score-function term needs. Qwen3 in thinking mode almost never ends inside a thinking block, so
  for the paper's model this is the paper's p(z|x) to within rounding. The ban and the forcing act on
  the logits BEFORE temperature, top-k and top-p, so top-p is computed on the distribution without EOS.
- "</think>" closes the rationale when the sampled tokens end with its tokenization (one token in
  Qwen3, three in SmolLM2, eight bytes in the tiny model); other spellings of it do not count.
- Nothing is read from the model's `generation_config`. transformers fills every option the caller leaves
  unset from it (GenerationMixin._prepare_generation_config: model.generation_config first, then global
  defaults such as top_k=50); Qwen3's sets top_k=20 and T=0.6, others set repetition_penalty or min_p,
  which would make training rollouts off-policy without a word. So `generate` passes a complete
  GenerationConfig AND runs with a blank one on the model (`blank_generation_config`): there is nothing
  left to fill from. The sampling is then exactly: EOS ban and forcing, temperature, top-k, top-p,
  softmax, torch.multinomial. Training rollouts use T=1 and no truncation (on-policy); evaluation uses
  Qwen3's thinking-mode settings (T=0.6, top-p 0.95, top-k 20), passed explicitly by eval.py.
"""
import contextlib
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, \
    StoppingCriteriaList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from prompts import THINK_CLOSE


# ------------------------------------------------------------------------------------------------ data
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
class SpecialTokens:
    """The token ids rollouts need from a tokenizer, worked out once (passed around as `special`)."""
    close_ids: list[int]  # the tokenization of "</think>"
    eos_ids: list[int]  # every token that ends a completion (banned while thinking)
    pad_id: int

    @classmethod
    def of(cls, tokenizer, generation_config=None) -> "SpecialTokens":
        eos = {tokenizer.eos_token_id}
        if generation_config is not None and generation_config.eos_token_id is not None:
            gen_eos = generation_config.eos_token_id
            eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        eos.discard(None)
        close_ids = tokenizer(THINK_CLOSE, add_special_tokens=False).input_ids
        return cls(close_ids=close_ids, eos_ids=sorted(eos), pad_id=tokenizer.pad_token_id)


def check_sampling_options(think_budget, answer_budget, temperature, top_p, top_k):
    """Refuse options that would silently sample something else (the flags are train.py's and eval.py's)."""
    if think_budget < 1:
        raise ValueError(f"--think-budget must be >= 1, got {think_budget}")
    if answer_budget is not None and answer_budget < 1:
        raise ValueError(f"--answer-budget must be >= 1 (or unset), got {answer_budget}")
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: no top-k), got {top_k}")


# ------------------------------------------------------------------------------------------------ the thinking block
def rationale_closed_at(generated: torch.Tensor, close: torch.Tensor) -> torch.Tensor:
    """For each row, how many tokens it had generated when its rationale closed, or -1 while it is open.

    generated [R, n] the tokens after the prompt; close [C] the tokenization of "</think>". The rationale
    closes at the first point where the generated tokens end with `close`:
        rationale_closed_at(tensor([[4, 5, 6, 7, 9], [4, 4, 4, 4, 4]]), tensor([6, 7]))  ->  tensor([4, -1])
    """
    R, n = generated.shape
    C = close.numel()
    if n < C:
        return torch.full((R,), -1, dtype=torch.long, device=generated.device)
    windows = generated.unfold(1, C, 1)  # [R, n - C + 1, C] every run of C consecutive tokens
    spells_close = (windows == close).all(-1)  # [R, n - C + 1]
    first = spells_close.int().argmax(-1)  # [R] the first run that spells "</think>" (argmax: the first maximum)
    return torch.where(spells_close.any(-1), first + C, -1)  # [R]


def thinking_block_rule(scores: torch.Tensor, thinking: torch.Tensor, n: int, close: list[int], eos: list[int],
                        think_budget: int) -> torch.Tensor:
    """The two rules of a thinking block on next-token scores [R, V] (fp32), before any warper.

    thinking [R] True for rows whose rationale is still open; n: tokens generated so far. Rows still
    thinking get EOS banned (-inf); once n >= think_budget they get the next token of "</think>" forced
    (every other score -inf, so the sampler draws it with probability 1), token by token. Example,
    think_budget 2, close [7], eos [9]: at n = 1 a thinking row's scores[9] = -inf; at n = 2 all its
    scores are -inf but scores[7]. (fast/decode.py has a branch-free twin for its compiled step.)
    """
    scores = scores.clone()  # [R, V]
    scores[thinking[:, None] & _one_hot(eos, scores)] = float("-inf")  # no EOS inside the block
    if n >= think_budget:  # the budget is spent: "</think>" token by token (at most len(close) steps)
        forced = close[min(n - think_budget, len(close) - 1)]
        scores[thinking[:, None] & ~_one_hot([forced], scores)] = float("-inf")
    return scores


def _one_hot(ids: list[int], scores: torch.Tensor) -> torch.Tensor:
    """[V] True at the given token ids."""
    mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    mask[ids] = True
    return mask


class ThinkingBlockRules(LogitsProcessor):
    """generate's logits processor for the thinking block: EOS banned, "</think>" forced at the budget.

    It reads each row's state from the tokens generated so far (input_ids after the padded prompt), so
    it keeps nothing between steps. Placed first in the processor list: the warpers come after it.
    """

    def __init__(self, prompt_len: int, special: SpecialTokens, think_budget: int):
        self.prompt_len, self.special, self.think_budget = prompt_len, special, think_budget

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len:]  # [R, n]
        close = torch.tensor(self.special.close_ids, device=generated.device)  # [C]
        thinking = rationale_closed_at(generated, close) < 0  # [R]
        return thinking_block_rule(scores, thinking, generated.shape[1], self.special.close_ids,
                                   self.special.eos_ids, self.think_budget)


class RolloutDone(StoppingCriteria):
    """generate's stopping criteria for a rollout row: done when its rationale has closed and its answer
    is over, i.e. answer_budget tokens after "</think>" (answer_budget 0: at once, GARL and PAFT). An answer
    that reaches EOS earlier is stopped by generate itself (eos_token_id in the GenerationConfig)."""

    def __init__(self, prompt_len: int, close_ids: list[int], answer_budget: int, device):
        self.prompt_len, self.answer_budget = prompt_len, answer_budget
        self.close = torch.tensor(close_ids, device=device)  # [C]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_len:]  # [R, n]
        closed_at = rationale_closed_at(generated, self.close)  # [R]
        return (closed_at >= 0) & (generated.shape[1] - closed_at >= self.answer_budget)  # [R]


def sampling_warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """Temperature, then top-k, then top-p: Hugging Face's own warpers, in the order generate applies them.
    A neutral setting (T = 1, top_k = 0, top_p = 1) adds no warper. The fast path uses them too."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


@contextlib.contextmanager
def blank_generation_config(model):
    """Run generate with a blank GenerationConfig on the model: what generate fills from is then empty."""
    kept = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = kept


# ------------------------------------------------------------------------------------------------ entry point
def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, padded on the left (generation appends on the right)."""
    L = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (L - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


@torch.no_grad()
def generate(model, prompt_ids: list[list[int]], M: int, special: SpecialTokens, think_budget: int,
             answer_budget: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0) -> list[list[Sample]]:
    """Sample M rationales (and answers, if answer_budget is set) for each prompt. Returns samples[b][m].

    Without answer_budget (GARL, PAFT) a row stops when its rationale closes and y is left empty, for the
    caller to fill with the gold answer. With it (GRPO, evaluation) a row goes on to write its answer: up
    to answer_budget tokens, ending at the first EOS (kept in y, also when the pad token is the EOS token).
    special: the tokenizer's SpecialTokens. The defaults sample from the model itself (T 1, no top-k, no top-p).
    """
    check_sampling_options(think_budget, answer_budget, temperature, top_p, top_k)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, special.pad_id, device)  # [B, L]
    L, C = ids.shape[1], len(special.close_ids)
    config = GenerationConfig(  # every option that changes what is drawn, set; the warpers come below
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_beams=1, num_return_sequences=M,
        max_new_tokens=think_budget + C + (answer_budget or 0), min_length=0,
        eos_token_id=special.eos_ids, pad_token_id=special.pad_id, use_cache=True)
    processors = LogitsProcessorList([ThinkingBlockRules(L, special, think_budget),
                                      *sampling_warpers(temperature, top_k, top_p)])
    stop = StoppingCriteriaList([RolloutDone(L, special.close_ids, answer_budget or 0, device)])
    with blank_generation_config(model):
        sequences = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                   logits_processor=processors, stopping_criteria=stop)  # [B * M, L + n]
    generated = sequences[:, L:]  # [R, n], rows b * M + m
    return to_samples(prompt_ids, M, generated, special, think_budget, answer_budget)


def to_samples(prompt_ids: list[list[int]], M: int, generated: torch.Tensor, special: SpecialTokens,
               think_budget: int, answer_budget: int | None) -> list[list[Sample]]:
    """Cut each row's generated tokens [R, n] (padding after a row is done) into z | forced | y."""
    closed_at = rationale_closed_at(generated, torch.tensor(special.close_ids, device=generated.device)).tolist()
    eos = set(special.eos_ids)
    samples = [[] for _ in prompt_ids]
    for r, gen in enumerate(generated.tolist()):
        c = closed_at[r]
        if c < 0:
            raise RuntimeError(f"row {r}: the rationale never closed; budget forcing failed")
        z_end = min(c, think_budget)  # natural close: c <= budget; forced: c = budget + len(close)
        sample = Sample(prompt_ids[r // M], gen[:z_end], gen[z_end:c])
        if answer_budget:
            answer = gen[c:c + answer_budget]
            ends = [i for i, t in enumerate(answer) if t in eos]
            sample.y_ids = answer[:ends[0] + 1] if ends else answer  # the genuine EOS stays, padding goes
        samples[r // M].append(sample)
    return samples
