"""Rollouts: sample M rationales per question, with thinking-budget forcing, in our own decoding loop.

One sample is the token sequence   prompt | z | forced | y   (a `Sample`):
    z       the rationale: tokens the model sampled inside the thinking block, a naturally
            sampled "</think>" included
    forced  the "</think>" tokens forced when the thinking budget ran out (else empty)
    y       the answer after "</think>": the gold answer teacher-forced (GARL, PAFT), or the
            model's own answer (GRPO, evaluation); EOS included

    tok = models.build_tiny_tokenizer(); model = models.build_tiny_model(tok); torch.manual_seed(0)
    samples = generate(model, [prompt], M=4, tokens=SpecialTokens.of(tok), think_budget=6)   # prompt: token ids
    samples[0][2].z_ids       # [177, 35, 170, 49, 95, 88]: six sampled tokens, the budget, then
    samples[0][2].forced_ids  # [260]: "</think>" forced (one token here and in Qwen3's tokenizer)
(prompt = prompts.prompt_ids(tok, {"question": "Who?", "context": "Rush is a band.", ...}, "hotpotqa", "warm").)

logprobs.py then scores them (logp_z = sum of log p over z's tokens, logp_y = sum over y's tokens).

How to read this file: the data (Sample, SpecialTokens, and the decoding state Rules, Rows), then the plain
decoding loop `decode` (the reference) and the rule it applies at each step (`pick`), then `generate`;
set apart at the end, the fast path `decode_fast`, which gives the same tokens (tests/test_perf.py
checks it) and is what `generate` runs by default.

Project choices (the paper does not say):
- Budget forcing happens inside the decoding loop, so one loop serves both modes. A forced token has
  probability 1 under the sampler: it counts in neither logp_z nor logp_y.
- End-of-sequence tokens are banned inside the thinking block (a thinking block must close before
  the answer), and logp_z is the log-probability under that sampler: the softmax over the vocabulary
  without those tokens. Then logp_z is exactly the log-probability of how z was drawn, which the
  score-function term needs. Qwen3 in thinking mode almost never ends inside a thinking block, so
  for the paper's model this is the paper's p(z|x) to within rounding.
- "</think>" closes the rationale when the sampled tokens end with its tokenization (one token in
  Qwen3, three in SmolLM2, eight bytes in the tiny model); other spellings of it do not count.
- Our own loop, not Hugging Face's `generate`. (1) Nothing leaks in: `generate` fills every sampling
  option the caller leaves unset from the model's `generation_config` (Qwen3's sets top_k=20, T=0.6;
  others set repetition_penalty or min_p), which would make training rollouts off-policy without a
  word. Our loop applies exactly EOS-ban, forcing, temperature and top-p, and reads nothing else.
  (2) The fast path needs what `generate` does not give: a KV cache kept in the compute dtype,
  attention over only the filled part of a static cache, weights cast once per call rather than per
  step, and one compiled step. The sampling itself is `generate`'s: temperature, then Hugging Face's
  top-p rule, then torch.multinomial (written out, see `sample`), so seeded runs draw what they did.
"""
import copy
import itertools
import weakref
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin

from prompts import THINK_CLOSE

# The paper's thinking budgets (Sec. 7): 4096 / 3072 / 2048 tokens in all, of which 128 are kept for the answer.
PAPER_THINK_BUDGETS = {"finqa": 4096 - 128, "hotpotqa": 3072 - 128, "musique": 2048 - 128}


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
    """The token ids rollouts need from a tokenizer, worked out once."""
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


@dataclass
class Rules:
    """What one generate call enforces at every step (tensors on the model's device)."""
    close: torch.Tensor  # [C] the tokenization of "</think>"
    eos: torch.Tensor  # [V] True for the tokens that end a completion
    pad: int
    think_budget: int  # sampled thinking tokens before "</think>" is forced
    answer_budget: int  # answer tokens after "</think>"; 0: a row stops when its rationale closes
    temperature: float
    top_p: float

    @classmethod
    def of(cls, model, tokens: SpecialTokens, think_budget, answer_budget, temperature, top_p) -> "Rules":
        if think_budget < 1:
            raise ValueError(f"--think-budget must be >= 1, got {think_budget}")
        if answer_budget is not None and answer_budget < 1:
            raise ValueError(f"--answer-budget must be >= 1 (or unset), got {answer_budget}")
        if not temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
        device = next(model.parameters()).device
        eos = torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.bool, device=device)
        eos[tokens.eos_ids] = True
        return cls(torch.tensor(tokens.close_ids, device=device), eos, tokens.pad_id, think_budget,
                   answer_budget or 0, float(temperature), float(top_p))

    @property
    def max_new(self) -> int:
        """Most tokens a row can generate: the budget, "</think>", the answer."""
        return self.think_budget + len(self.close) + self.answer_budget


class Rows:
    """Per-row decoding state: the tokens drawn so far and where each rationale closed.

    tokens[r, n]   the n-th generated token of row r (padding once the row is done)
    logp[r, n]     its log-probability under the model (EOS left out of the softmax while thinking,
                   temperature 1, no top-p): what logprobs.py computes for z and y tokens
    closed_at[r]   the number of generated tokens when row r's rationale closed; -1 while thinking
    done[r]        row r has finished (its rationale closed; in answer mode, its answer ended too)
    n              tokens generated so far, a 0-dim tensor (so that a compiled step reads it on the GPU)
    """

    def __init__(self, R: int, width: int, device):
        self.tokens = torch.zeros(R, width, dtype=torch.long, device=device)  # [R, T]
        self.logp = torch.zeros(R, width, device=device)  # [R, T]
        self.closed_at = torch.zeros(R, dtype=torch.long, device=device)  # [R]
        self.done = torch.zeros(R, dtype=torch.bool, device=device)  # [R]
        self.n = torch.zeros((), dtype=torch.long, device=device)  # []

    def reset(self, pad: int) -> "Rows":
        self.tokens.fill_(pad), self.logp.zero_(), self.closed_at.fill_(-1), self.done.zero_(), self.n.zero_()
        return self


# ------------------------------------------------------------------------------------------------ the plain loop
def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, padded on the left (generation appends on the right)."""
    L = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (L - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


@torch.no_grad()
def decode(model, prompt_ids: list[list[int]], M: int, rules: Rules) -> Rows:
    """The reference decoding loop: M rows per prompt, one token per step for every row, until all are done.

    Each row runs its own copy of the prompt, and the key/value cache grows by concatenation
    (transformers' DynamicCache). Only the last position's logits are computed.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad([p for p in prompt_ids for _ in range(M)], rules.pad, device)  # [R, L], M rows per prompt
    R = ids.shape[0]
    position = (mask.cumsum(-1) - 1).clamp(min=0)  # [R, L] left padding: a row's real tokens start at position 0
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]  # [R, V] the prompt's last position
    position = position[:, -1]  # [R]
    rows = Rows(R, rules.max_new, device).reset(rules.pad)
    for _ in range(rules.max_new):
        noise = torch.empty(logits.shape, device=device).exponential_()  # [R, V] what torch.multinomial draws
        token = pick(rows, logits, noise, rules)  # [R]
        if rows.done.all():
            break
        mask = torch.cat([mask, mask.new_ones(R, 1)], dim=1)  # [R, L + n + 1]
        position = position + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None], cache=cache,
                       use_cache=True).logits[:, -1]  # [R, V]
    return rows


# ------------------------------------------------------------------------------------------------ the rule of one step
def warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature, then the top-p nucleus: Hugging Face's TemperatureLogitsWarper and TopPLogitsWarper."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1)  # [R, V] ascending
        tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p  # [R, V] the least likely 1 - top_p of the mass
        tail[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(tail.scatter(1, order, tail), float("-inf"))
    return logits


def sample(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One token per row, token i with probability probs[r, i]: argmax_i probs[r, i] / noise[r, i], noise ~ Exp(1).

    This is how torch.multinomial(probs, 1) draws a single sample (the "exponential race": the
    smallest of independent Exp(1) / p_i is at i with probability p_i), so with noise drawn as
    torch.empty_like(probs).exponential_() it returns what torch.multinomial would. Drawing the noise
    outside lets the fast path's compiled step contain no random-number generator.
    """
    return probs.div(noise).argmax(-1)  # [R]


def pick(rows: Rows, logits: torch.Tensor, noise: torch.Tensor, rules: Rules) -> torch.Tensor:
    """Choose each row's next token from the logits of its last position, and record it in `rows`.

    logits [R, V] (any dtype), noise [R, V] fp32 ~ Exp(1). Returns the tokens [R]. The rule:
    EOS is banned on rows still thinking; rows sample with temperature and top-p; once think_budget
    tokens are drawn, rows still thinking get "</think>" forced, token by token; finished rows get
    padding. A rationale closes when a row's last tokens spell "</think>"; a row is done when its
    rationale closed (answer_budget 0) or, after that, when its answer reached EOS or answer_budget.
    """
    n, C = rows.n, len(rules.close)  # n: tokens generated so far (0-dim tensor); C: tokens in "</think>"
    thinking = rows.closed_at < 0  # [R]
    # Choose: no EOS while thinking; sample; once the budget is spent, "</think>" token by token; padding when done.
    logits = logits.float().masked_fill(thinking[:, None] & rules.eos, float("-inf"))  # [R, V]
    token = sample(warp(logits, rules.temperature, rules.top_p).softmax(-1), noise)  # [R]
    forced = rules.close[(n - rules.think_budget).clamp(0, C - 1).view(1)]  # [1] the next token of "</think>"
    token = torch.where(thinking & (n >= rules.think_budget), forced, token)
    token = torch.where(rows.done, rules.pad, token)
    logp = logits.gather(1, token[:, None])[:, 0] - logits.logsumexp(-1)  # [R] log p of the token, temperature 1

    # Record token n (index_copy_: a compiled step cannot index with a 0-dim tensor's value).
    rows.tokens.index_copy_(1, n.view(1), token[:, None])
    rows.logp.index_copy_(1, n.view(1), torch.where(rows.done, 0.0, logp)[:, None])
    # A rationale closes when the row's last C tokens spell "</think>"; closed_at counts the tokens so far.
    last = rows.tokens[:, (n + 1 - C + torch.arange(C, device=n.device)).clamp(min=0)]  # [R, C]
    closes = thinking & (n + 1 >= C) & (last == rules.close).all(-1)  # [R]
    rows.closed_at.copy_(torch.where(closes, n + 1, rows.closed_at))
    # A row is done once its rationale closed and its answer is over: EOS, or answer_budget tokens (0: at once).
    answer_over = (n + 1 - rows.closed_at >= rules.answer_budget) | (~thinking & rules.eos[token])  # [R]
    rows.done |= (rows.closed_at >= 0) & answer_over
    rows.n += 1
    return token


# ------------------------------------------------------------------------------------------------ entry point
@torch.no_grad()
def generate(model, prompt_ids: list[list[int]], M: int, tokens: SpecialTokens, think_budget: int,
             answer_budget: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
             fast: bool | None = None, compile: bool | None = None) -> list[list[Sample]]:
    """Sample M rationales (and answers, if answer_budget is set) for each prompt, in one decoding loop.

    Returns samples[b][m]. Without answer_budget (GARL, PAFT) a row stops when its rationale closes
    and y is left empty, for the caller to fill with the gold answer. With it (GRPO, evaluation) a
    row goes on to write its answer: up to answer_budget tokens, ending at the first EOS (kept in y,
    also when the pad token is the EOS token).

    fast: `decode_fast` (None: wherever the model has only full-attention layers, as Qwen3 and
    SmolLM2 do) or False: the plain loop `decode`. Both give the same tokens. compile: compile the
    fast path's step (None: on CUDA, where it turns each step into one CUDA graph).
    """
    rules = Rules.of(model, tokens, think_budget, answer_budget, temperature, top_p)
    if fast is None:
        fast = full_attention_only(model)
    rows = decode_fast(model, prompt_ids, M, rules, compile=compile) if fast else decode(model, prompt_ids, M, rules)
    return to_samples(prompt_ids, M, rows, rules)


def to_samples(prompt_ids: list[list[int]], M: int, rows: Rows, rules: Rules) -> list[list[Sample]]:
    """Cut each row's generated tokens into z | forced | y."""
    generated = rows.tokens[:, :rules.max_new].tolist()  # [R, max_new]
    closed_at = rows.closed_at.tolist()
    eos = set(rules.eos.nonzero()[:, 0].tolist())
    samples = [[] for _ in prompt_ids]
    for r, gen in enumerate(generated):
        c = closed_at[r]
        if c < 0:
            raise RuntimeError(f"row {r}: the rationale never closed; budget forcing failed")
        z_end = min(c, rules.think_budget)  # natural close: c <= budget; forced: c = budget + len(close)
        sample = Sample(prompt_ids[r // M], gen[:z_end], gen[z_end:c])
        if rules.answer_budget:
            answer = gen[c:c + rules.answer_budget]
            ends = [i for i, t in enumerate(answer) if t in eos]
            sample.y_ids = answer[:ends[0] + 1] if ends else answer  # the genuine EOS stays, padding goes
        samples[r // M].append(sample)
    return samples


def full_attention_only(model) -> bool:
    """The fast path's cache (and logprobs.py's shared prompt) handle full-attention layers; a model with
    sliding-window layers (not Qwen3-0.6B, not SmolLM2) keeps the plain paths."""
    layer_types = getattr(model.config.get_text_config(), "layer_types", None)
    return layer_types is None or all(t == "full_attention" for t in layer_types)


# ================================================================================================ the fast path
# decode_fast gives decode's tokens (tests/test_perf.py: the same tokens under a fixed seed, log-probs to
# 1e-5), doing less work per step. What a decoding step must cost at the paper's scale (Qwen3-0.6B, 32
# rows, a ~1k-token prompt + 4096 thinking tokens, bf16 autocast over fp32 master weights, one H100/H200)
# is the bytes it reads: 1.2 GB of bf16 weights, plus the keys and values of every filled position,
# 112 KB per token (28 layers x 2 x 8 heads x 128 x 2 bytes), ~11 GB on average over a rollout for 32
# rows: ~2.5 ms at the H200's 4.8 TB/s (bench.py computes this bound). Eager transformers launches hundreds
# of small kernels per step from Python instead. Each point below is exact:
#  1. The M rows of a prompt share its prefill: the prompt runs once, its keys and values are copied to
#     the M rows (decode runs it M times).
#  2. A static cache, allocated once and written in place: no concatenation (decode's DynamicCache
#     copies every layer's whole cache at every step). It holds keys and values in the compute dtype:
#     under bf16 autocast Qwen3's k_norm (an fp32 weight) promotes keys to fp32, so transformers' cache
#     holds fp32 keys (172 KB per token instead of 112 KB) and attention casts all of them back to bf16
#     at every step. Attention casts them to bf16 anyway, so storing bf16 changes no number.
#  3. Attention reads the filled part of the cache only, rounded up to `bucket` positions (a static cache
#     read in full would double the bytes per step on average), and the query heads that share a
#     key/value head are packed as the query rows of that head: no [rows, 16 heads, T, 128] copy of the
#     cache (transformers' repeat_kv) per layer per step.
#  4. A twin of the model whose linear layers hold their weights in the compute dtype, refreshed from the
#     fp32 master weights once per call: under autocast a compiled step would otherwise re-cast every
#     weight at every step (reading 2.4 GB and writing 1.2 GB more than the 1.2 GB it needs). Everything
#     else (embedding, norms) is the master's own tensor. Under autocast this is what autocast computes.
#  5. The whole step (pick + forward) compiled with torch.compile(mode="reduce-overhead"): on CUDA one
#     CUDA graph per step instead of hundreds of kernel launches. Its state lives in buffers it updates in place,
#     and the random noise is drawn outside it, so the sampled tokens are the plain loop's.
# Project choice: the buffers and the compiled graphs are kept between calls (CUDA graphs are recorded
# against the buffers' addresses), so a call's KV cache stays allocated until `release(model)`.

def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class _StaticLayer(CacheLayerMixin):
    """One layer's keys and values, [R, H, capacity, D] in the compute dtype, written in place at `slot`.

    update returns the whole buffer; `_attention` reads only the positions its mask covers.
    """
    is_compileable = True

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.slot = keys, values, slot
        self.device, self.is_initialized = keys.device, True

    def lazy_initialization(self, key_states, value_states):  # allocated up front
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        # key_states [R, H, 1, D]: fp32 under autocast for Qwen3 (k_norm); stored in the cache's dtype.
        self.keys.index_copy_(2, self.slot.view(1), key_states.to(self.keys.dtype))
        self.values.index_copy_(2, self.slot.view(1), value_states.to(self.values.dtype))
        return self.keys, self.values

    def get_mask_sizes(self, query_length):
        return self.keys.shape[-2], 0

    def get_seq_length(self):
        return self.slot

    def get_max_length(self):
        return self.keys.shape[-2]


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of one new token over the static cache, as transformers' sdpa would compute it.

    query [R, Hq, 1, D]; key, value [R, Hkv, capacity, D]; attention_mask [R, 1, 1, W] (bool).
    Only the first W cache positions are read. The Hq / Hkv query heads that share a key/value head
    become that head's query rows, [R, Hkv, Hq / Hkv, D], so the cache is never expanded to Hq heads.
    """
    R, Hq, T, D = query.shape
    Hkv, W = key.shape[1], attention_mask.shape[-1]
    if T != 1:
        raise ValueError("rollout's decode attention takes one token at a time (the prefill runs the model itself)")
    q = query.reshape(R, Hkv, Hq // Hkv, D)  # query head h uses key/value head h // (Hq / Hkv), as repeat_kv does
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key[:, :, :W], value[:, :, :W], attn_mask=attention_mask, scale=scaling)  # [R, Hkv, Hq / Hkv, D]
    return out.reshape(R, Hq, 1, D).transpose(1, 2), None  # [R, 1, Hq, D], as transformers' attention returns


AttentionInterface.register("rollout_decode", _attention)


def _twin(model, dtype: torch.dtype):
    """A copy of the model's modules sharing its tensors, except that each linear layer holds its weight
    (and bias) in `dtype`; returns (twin, [(cast copy, master tensor)]) for refreshing the copies."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, memo=shared)  # new modules, the same parameter and buffer tensors
    pairs = []
    for module in twin.modules():
        if isinstance(module, torch.nn.Linear):
            for name in ("weight", "bias"):
                master = getattr(module, name)
                if master is not None and master.dtype != dtype:
                    cast = torch.nn.Parameter(master.detach().to(dtype), requires_grad=False)
                    setattr(module, name, cast)  # the twin's module only: the master keeps its parameter
                    pairs.append((cast, master))
    # A forward patched on the instance (TRL's fused output layer, trl_garl.add_garl_scoring) would call the
    # ORIGINAL model from inside the twin: the twin decodes with its class's own forward.
    twin.__dict__.pop("forward", None)
    twin.set_attn_implementation("rollout_decode")
    return twin.eval(), pairs


class _Decoder:
    """The fast path's state for one model: the twin, the static buffers, the compiled step."""

    def __init__(self, model, dtype: torch.dtype, device: torch.device):
        self.key = _decoder_key(model, dtype, device)
        self.dtype, self.device = dtype, device
        self.twin, self.pairs = _twin(model, dtype)
        self.R = self.capacity = 0
        self.compiled = {}  # torch.compile backend -> compiled _fast_step

    def refresh(self):
        """The master weights may have changed since the last call (an optimizer step): copy them in."""
        for cast, master in self.pairs:
            cast.copy_(master)

    def allocate(self, R: int, capacity: int, vocab: int):
        """Buffers for R rows of `capacity` positions (kept if they are big enough already)."""
        if R == self.R and capacity <= self.capacity:
            return
        self.release()
        config = self.twin.config.get_text_config()
        H = config.num_key_value_heads
        D = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.R, self.capacity = R, capacity
        self.slot = torch.zeros((), dtype=torch.long, device=self.device)  # where this step's keys go
        # One spare position: attention never reads the whole buffer, a case a compiled step would specialize.
        layers = [_StaticLayer(torch.zeros(R, H, capacity + 1, D, dtype=self.dtype, device=self.device),
                               torch.zeros(R, H, capacity + 1, D, dtype=self.dtype, device=self.device), self.slot)
                  for _ in range(config.num_hidden_layers)]  # [R, H, capacity + 1, D] each
        self.cache = Cache(layers=layers)
        self.logits = torch.zeros(R, vocab, device=self.device)  # [R, V] the last position's, fp32
        self.noise = torch.zeros(R, vocab, device=self.device)  # [R, V] ~ Exp(1), drawn before each step
        self.rows = Rows(R, capacity, self.device)
        self.position = torch.zeros(R, dtype=torch.long, device=self.device)  # [R] the new token's position id
        self.first = torch.zeros(R, dtype=torch.long, device=self.device)  # [R] first real slot (after padding)
        self.slots = torch.arange(capacity, device=self.device)  # [capacity]
        # Buffers updated in place at fixed addresses: CUDA graphs may read and write them. Their sizes (rows,
        # positions) are symbolic in the compiled step, so that new buffers need no new compilation.
        for t in [self.slot, self.logits, self.noise, self.position, self.first, self.slots, *vars(self.rows).values(),
                  *(t for layer in layers for t in (layer.keys, layer.values))]:
            torch._dynamo.mark_static_address(t)
            for dim in range(t.dim()):
                if t.shape[dim] in (R, capacity, capacity + 1):
                    torch._dynamo.maybe_mark_dynamic(t, dim)

    def release(self):
        for name in ["cache", "logits", "noise", "rows", "position", "first", "slots", "slot"]:
            self.__dict__.pop(name, None)
        self.R = self.capacity = 0


def _fast_step(dec: _Decoder, rules: Rules, slots: torch.Tensor):
    """One decoding step, in place: pick token n from the kept logits, run it through the twin, keep its logits.

    slots [W]: the cache positions attention reads (0..W-1, W = the filled length rounded up).
    """
    token = pick(dec.rows, dec.logits, dec.noise, rules)  # [R]
    mask = (slots >= dec.first[:, None]) & (slots <= dec.slot)  # [R, W] the row's real tokens up to this one
    out = dec.twin(input_ids=token[:, None], position_ids=dec.position[:, None], attention_mask=mask[:, None, None, :],
                   cache=dec.cache, use_cache=True)
    dec.logits.copy_(out.logits[:, -1])  # [R, V]
    dec.slot += 1
    dec.position += 1


_DECODERS = weakref.WeakKeyDictionary()  # model -> _Decoder


def _decoder_key(model, dtype, device) -> tuple:
    """What a twin is valid for: the compute dtype, the device, and the model's parameter tensors (the twin
    shares them; a module replaced since, or a model moved, needs a new twin)."""
    return dtype, device, tuple(id(p) for p in model.parameters())


def release(model):
    """Free the fast path's buffers, twin and compiled step for this model (they are rebuilt on the next call)."""
    _DECODERS.pop(model, None)


def release_buffers(model):
    """Free the fast path's per-call buffers (the KV cache, the logits), keep its twin and compiled step.

    train.py calls it after each rollout phase: at the paper's scale the cache is ~20 GB, which would
    otherwise stay allocated through the weight and gradient passes (memory.py plans it that way). The
    next call allocates new buffers; the compiled step takes them without recompiling (sizes are symbolic).
    """
    decoder = _DECODERS.get(model)
    if decoder is not None:
        decoder.release()


@torch.no_grad()
def decode_fast(model, prompt_ids: list[list[int]], M: int, rules: Rules, compile: bool | str | None = None,
                bucket: int = 256, check_every: int | None = None) -> Rows:
    """`decode`, faster (see above): shared prefill, static cache in the compute dtype, compiled step.

    compile: torch.compile the step (None: on CUDA, with mode "reduce-overhead", i.e. CUDA graphs; a
        string names the torch.compile backend, e.g. "aot_eager", which the tests use for speed).
    bucket: attention reads the filled cache rounded up to a multiple of this (each width is one
        compiled graph on CUDA). check_every: steps between checks that every row is done (each check
        waits for the device; None: 16 on CUDA, 1 elsewhere). Steps run after the last row finished
        change nothing but the random-number generator's state.
    Returns the decoder's own Rows, which the next call overwrites (to_samples copies them out).
    """
    device = next(model.parameters()).device
    if not full_attention_only(model):
        raise ValueError("the fast decoding path handles full-attention layers only: pass fast=False")
    cuda = device.type == "cuda"
    compile = cuda if compile is None else compile
    check_every = check_every or (16 if cuda else 1)
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else next(model.parameters()).dtype
    dec = _DECODERS.get(model)
    if dec is None or dec.key != _decoder_key(model, dtype, device):
        dec = _DECODERS[model] = _Decoder(model, dtype, device)
    dec.refresh()

    # The prefill: each prompt once (B rows), by the model itself; only the last position's logits.
    ids, mask = left_pad(prompt_ids, rules.pad, device)  # [B, L]
    B, L = ids.shape
    R = B * M
    position = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    capacity = _round_up(L + rules.max_new, bucket)
    dec.allocate(R, capacity, out.logits.shape[-1])
    for layer, prefilled in zip(dec.cache.layers, out.cache.layers):
        for buffer, prompt in [(layer.keys, prefilled.keys), (layer.values, prefilled.values)]:
            buffer.zero_()
            # Each prompt's keys and values go to its M rows (cast to the compute dtype), without a repeated copy.
            buffer.view(B, M, *buffer.shape[1:])[:, :, :, :L] = prompt[:, None]
    dec.logits.copy_(out.logits[:, -1].repeat_interleave(M, 0))  # [R, V]
    dec.rows.reset(rules.pad)
    dec.slot.fill_(L)
    dec.first.copy_((L - mask.sum(-1)).repeat_interleave(M))  # [R] left padding before the row's prompt
    dec.position.copy_(position[:, -1].repeat_interleave(M) + 1)  # [R]

    step = _fast_step
    if compile:
        backend = compile if isinstance(compile, str) else "inductor"
        if backend not in dec.compiled:  # fullgraph: a graph break would split the step (and its CUDA graph)
            mode = "reduce-overhead" if cuda and backend == "inductor" else None
            dec.compiled[backend] = torch.compile(_fast_step, backend=backend, mode=mode, fullgraph=True)
        step = dec.compiled[backend]
        # One CUDA graph per attention width is the design: raise inductor's "too many graphs" warning threshold.
        config, widths = torch._inductor.config.triton, capacity // bucket
        if cuda and config.cudagraph_dynamic_shape_warn_limit is not None:
            config.cudagraph_dynamic_shape_warn_limit = max(config.cudagraph_dynamic_shape_warn_limit, widths)
    for n in range(rules.max_new):
        dec.noise.exponential_()  # what torch.multinomial would draw, outside the compiled step
        slots = dec.slots[:min(_round_up(L + n + 1, bucket), capacity)]  # [W]
        if compile:
            torch._dynamo.maybe_mark_dynamic(slots, 0)  # one compiled graph for all widths (one CUDA graph each)
            torch.compiler.cudagraph_mark_step_begin()
        step(dec, rules, slots)
        if (n + 1) % check_every == 0 and dec.rows.done.all():
            break
    return dec.rows
