"""The fast decoding path: fast.decode.generate draws rollout.generate's tokens (Hugging Face generate's), faster.

    torch.manual_seed(0); slow = rollout.generate(model, prompts, 4, special, think_budget=6)
    torch.manual_seed(0); fast = fast.decode.generate(model, prompts, 4, special, think_budget=6)
    [[s.ids for s in g] for g in slow] == [[s.ids for s in g] for g in fast]   # True (fp32, CPU)

The caller chooses (train.py and eval.py: --decode generate|fast): this file takes rollout.generate's
arguments (plus `buffer_shape`) and returns its Samples; the reference imports nothing from here.

How to read this file: why it is faster (below), the per-row state (`DecodingState`) and the sampling rule
of one step (`choose_next_token`: the thinking-block rule written branch-free for a compiled step, then
Hugging Face's warpers, then torch.multinomial written out as `sample`), then the pieces that make a step
cheap (`StaticCacheLayer`, `decode_attention`, `make_twin`), the kept state (`FastDecoder`), one step
(`decoding_step`), and the entry points `decode_fast` (the tokens) and `generate` (Samples, as
rollout.generate). `release(model)` frees everything.

What a decoding step must cost at the paper's scale (Qwen3-0.6B, 32 rows, a ~1k-token prompt + 4096
thinking tokens, bf16 autocast over fp32 master weights, one H100/H200) is the bytes it reads: 1.2 GB of
bf16 weights, plus the keys and values of every filled position, 112 KB per token (28 layers x 2 x 8
heads x 128 x 2 bytes), ~11 GB on average over a rollout for 32 rows: ~2.5 ms at the H200's 4.8 TB/s
(bench.py computes this bound). Eager transformers launches hundreds of small kernels per step from
Python instead. Each point below is exact:
 1. The M rows of a prompt share its prefill: the prompt runs once, its keys and values are copied to
    the M rows (generate runs it M times).
 2. A static cache, written in place: no concatenation (generate's DynamicCache copies every layer's
    whole cache at every step). It holds keys and values in the compute dtype: under bf16 autocast
    Qwen3's k_norm (an fp32 weight) promotes keys to fp32, so transformers' cache holds fp32 keys (172 KB
    per token instead of 112 KB) and attention casts all of them back to bf16 at every step. Attention
    casts them to bf16 anyway, so storing bf16 changes no number.
 3. Attention reads the filled part of the cache only, rounded up to `bucket` positions (a static cache
    read in full would double the bytes per step on average), and the query heads that share a
    key/value head are packed as the query rows of that head: no [rows, 16 heads, T, 128] copy of the
    cache (transformers' repeat_kv) per layer per step.
 4. A twin of the model whose linear layers hold their weights in the compute dtype, refreshed from the
    fp32 master weights once per call: under autocast a compiled step would otherwise re-cast every
    weight at every step (reading 2.4 GB and writing 1.2 GB more than the 1.2 GB it needs). Everything
    else (embedding, norms) is the master's own tensor. Under autocast this is what autocast computes.
 5. The whole step (choose the token + forward) compiled with torch.compile(mode="reduce-overhead"): on
    CUDA one CUDA graph per step instead of hundreds of kernel launches. Its state lives in buffers it
    updates in place, and the random noise is drawn outside it, so the sampled tokens are generate's.
 6. Buffers that stay (issue 17): CUDA graphs are recorded against the addresses of the tensors they read,
    so a new buffer means new graphs, and under cudagraph trees old graphs are not freed. The buffers are
    therefore allocated ONCE, for `buffer_shape=(rows, positions)` (the largest call planned: training's
    (gen_batch or B) x M rows and validation's eval_batch x eval_n rows share one set), and every call
    decodes in views of them (the first R rows: contiguous, the same addresses). A call that needs more
    grows them, once, with a warning. They stay allocated until `release(model)`, or until the model is freed.
"""
import copy
import itertools
import weakref
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from rollout import Sample, SpecialTokens, check_sampling_options, left_pad, sampling_warpers, to_samples


def full_attention_only(model) -> bool:
    """The fast paths' caches (here and fast/logprobs.py's shared prompt) handle full-attention layers; a model
    with sliding-window layers (not Qwen3-0.6B, not SmolLM2) keeps the reference paths."""
    layer_types = getattr(model.config.get_text_config(), "layer_types", None)
    return layer_types is None or all(t == "full_attention" for t in layer_types)


def thinking_block_rule(scores: torch.Tensor, thinking: torch.Tensor, n: torch.Tensor, close: torch.Tensor,
                        eos: torch.Tensor, think_budget: int) -> torch.Tensor:
    """rollout.thinking_block_rule written for a compiled step: no branch on n, a 0-dim tensor on the device
    (a branch on its value would be a graph break), close [C] and eos [V] (a mask) as tensors. The same
    scores (tests/test_fast_decode.py checks it against the reference on scripted cases)."""
    scores = scores.masked_fill(thinking[:, None] & eos, float("-inf"))  # [R, V] no EOS inside the block
    C = close.numel()
    forced = close[(n - think_budget).clamp(0, C - 1).view(1)]  # [1] the close token due if the budget is spent
    one_hot = torch.arange(scores.shape[-1], device=scores.device) == forced  # [V]
    force = thinking & (n >= think_budget)  # [R]
    return torch.where(force[:, None] & ~one_hot, float("-inf"), scores)  # [R, V]


# ------------------------------------------------------------------------------------------------ the sampling rule
@dataclass
class SamplingRule:
    """What one decoding call enforces at every step (tensors on the model's device)."""
    close: torch.Tensor  # [C] the tokenization of "</think>"
    eos: torch.Tensor  # [V] True for the tokens that end a completion
    pad: int
    think_budget: int  # sampled thinking tokens before "</think>" is forced
    answer_budget: int  # answer tokens after "</think>"; 0: a row stops when its rationale closes
    warpers: list  # Hugging Face's temperature, top-k, top-p warpers (rollout.sampling_warpers), in that order

    @classmethod
    def of(cls, special: SpecialTokens, vocab: int, device, think_budget, answer_budget=None, temperature=1.0,
           top_p=1.0, top_k=0) -> "SamplingRule":
        eos = torch.zeros(vocab, dtype=torch.bool, device=device)
        eos[special.eos_ids] = True
        return cls(torch.tensor(special.close_ids, device=device), eos, special.pad_id, think_budget,
                   answer_budget or 0, list(sampling_warpers(temperature, top_k, top_p)))

    @property
    def max_new(self) -> int:
        """Most tokens a row can generate: the budget, "</think>", the answer."""
        return self.think_budget + len(self.close) + self.answer_budget


class DecodingState:
    """Per-row decoding state: the tokens drawn so far and where each rationale closed (views of kept buffers).

    tokens[r, n]   the n-th generated token of row r (padding once the row is done)
    logp[r, n]     its log-probability under the model (EOS left out of the softmax while thinking,
                   temperature 1, no top-k or top-p): what logprobs.py computes for z and y tokens
    closed_at[r]   the number of generated tokens when row r's rationale closed; -1 while thinking
    done[r]        row r has finished (its rationale closed; in answer mode, its answer ended too)
    n              tokens generated so far, a 0-dim tensor (so that a compiled step reads it on the GPU)
    """

    def __init__(self, tokens, logp, closed_at, done, n):
        self.tokens, self.logp, self.closed_at, self.done, self.n = tokens, logp, closed_at, done, n

    def reset(self, pad: int) -> "DecodingState":
        self.tokens.fill_(pad), self.logp.zero_(), self.closed_at.fill_(-1), self.done.zero_(), self.n.zero_()
        return self


def sample(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One token per row, token i with probability probs[r, i]: argmax_i probs[r, i] / noise[r, i], noise ~ Exp(1).

    This is how torch.multinomial(probs, 1) draws a single sample (the "exponential race": the
    smallest of independent Exp(1) / p_i is at i with probability p_i), so with noise drawn as
    torch.empty_like(probs).exponential_() it returns what torch.multinomial would, and what generate
    draws. Drawing the noise outside lets the compiled step contain no random-number generator.
    """
    return probs.div(noise).argmax(-1)  # [R]


def choose_next_token(state: DecodingState, logits: torch.Tensor, noise: torch.Tensor,
                      rule: SamplingRule) -> torch.Tensor:
    """Choose each row's next token from the logits of its last position, as generate does, and record it.

    logits [R, V] fp32, noise [R, V] fp32 ~ Exp(1). Returns the tokens [R]. generate's order: the thinking
    block's rule (EOS banned on rows still thinking; "</think>" forced token by token once think_budget
    tokens are drawn), then temperature, top-k, top-p, softmax, the multinomial draw; finished rows get
    padding. A rationale closes when a row's last tokens spell "</think>"; a row is done when its
    rationale closed (answer_budget 0) or, after that, when its answer reached EOS or answer_budget.
    """
    n, C = state.n, len(rule.close)  # n: tokens generated so far (0-dim tensor); C: tokens in "</think>"
    thinking = state.closed_at < 0  # [R]
    scores = thinking_block_rule(logits, thinking, n, rule.close, rule.eos, rule.think_budget)  # [R, V]
    for warper in rule.warpers:  # TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (input_ids unused)
        scores = warper(None, scores)
    token = sample(scores.softmax(-1), noise)  # [R]
    token = torch.where(state.done, rule.pad, token)
    banned = logits.masked_fill(thinking[:, None] & rule.eos, float("-inf"))  # [R, V] the sampler, at temperature 1
    logp = banned.gather(1, token[:, None])[:, 0] - banned.logsumexp(-1)  # [R] log p of the token

    # Record token n (index_copy_: a compiled step cannot index with a 0-dim tensor's value).
    state.tokens.index_copy_(1, n.view(1), token[:, None])
    state.logp.index_copy_(1, n.view(1), torch.where(state.done, 0.0, logp)[:, None])
    # A rationale closes when the row's last C tokens spell "</think>"; closed_at counts the tokens so far.
    last = state.tokens[:, (n + 1 - C + torch.arange(C, device=n.device)).clamp(min=0)]  # [R, C]
    closes = thinking & (n + 1 >= C) & (last == rule.close).all(-1)  # [R]
    state.closed_at.copy_(torch.where(closes, n + 1, state.closed_at))
    # A row is done once its rationale closed and its answer is over: EOS, or answer_budget tokens (0: at once).
    answer_over = (n + 1 - state.closed_at >= rule.answer_budget) | (~thinking & rule.eos[token])  # [R]
    state.done |= (state.closed_at >= 0) & answer_over
    state.n += 1
    return token


# ------------------------------------------------------------------------------------------------ a cheap step
def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class StaticCacheLayer(CacheLayerMixin):
    """One layer's keys and values, [R, H, positions + 1, D] in the compute dtype, written in place at `slot`.

    update returns the whole buffer; `decode_attention` reads only the positions its mask covers.
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


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of one new token over the static cache, as transformers' sdpa would compute it.

    query [R, Hq, 1, D]; key, value [R, Hkv, positions + 1, D]; attention_mask [R, 1, 1, W] (bool).
    Only the first W cache positions are read. The Hq / Hkv query heads that share a key/value head
    become that head's query rows, [R, Hkv, Hq / Hkv, D], so the cache is never expanded to Hq heads.
    """
    R, Hq, T, D = query.shape
    Hkv, W = key.shape[1], attention_mask.shape[-1]
    if T != 1:
        raise ValueError("the fast path's attention takes one token at a time (the prefill runs the model itself)")
    q = query.reshape(R, Hkv, Hq // Hkv, D)  # query head h uses key/value head h // (Hq / Hkv), as repeat_kv does
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key[:, :, :W], value[:, :, :W], attn_mask=attention_mask, scale=scaling)  # [R, Hkv, Hq / Hkv, D]
    return out.reshape(R, Hq, 1, D).transpose(1, 2), None  # [R, 1, Hq, D], as transformers' attention returns


AttentionInterface.register("fast_decode", decode_attention)


def make_twin(model, dtype: torch.dtype):
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
    twin.set_attn_implementation("fast_decode")
    return twin.eval(), pairs


# ------------------------------------------------------------------------------------------------ the kept state
class FastDecoder:
    """The fast path's state for one model: the twin, the kept buffers, the compiled step.

    kept: the buffers, [rows, ...] each, allocated by `reserve` and kept; a call with R rows decodes in
    `views(R)`, their first R rows (made once per row count, so a compiled step sees the same tensors).
    """

    def __init__(self, model, dtype: torch.dtype, device: torch.device):
        self.key = _decoder_key(model, dtype, device)
        self.dtype, self.device = dtype, device
        self.twin, self.pairs = make_twin(model, dtype)
        self.rows = self.positions = 0  # what `kept` holds
        self.kept, self.views_by_rows = {}, {}
        self.compiled = {}  # torch.compile backend -> compiled decoding_step

    def refresh(self):
        """The master weights may have changed since the last call (an optimizer step): copy them in."""
        for cast, master in self.pairs:
            cast.copy_(master)

    def reserve(self, rows: int, positions: int, vocab: int):
        """Buffers for `rows` rows of `positions` cache positions, replacing smaller ones."""
        self.kept, self.views_by_rows = {}, {}  # the old buffers are freed before the new ones are allocated
        config = self.twin.config.get_text_config()
        H = config.num_key_value_heads
        D = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        zeros = lambda *shape, dtype=None: torch.zeros(*shape, dtype=dtype, device=self.device)
        # One spare position: attention never reads the whole buffer, a case a compiled step would specialize.
        self.kept = {
            "keys": [zeros(rows, H, positions + 1, D, dtype=self.dtype) for _ in range(config.num_hidden_layers)],
            "values": [zeros(rows, H, positions + 1, D, dtype=self.dtype) for _ in range(config.num_hidden_layers)],
            "logits": zeros(rows, vocab),  # [rows, V] the last position's, fp32 (what generate's processors get)
            "noise": zeros(rows, vocab),  # [rows, V] ~ Exp(1), drawn before each step
            "tokens": zeros(rows, positions, dtype=torch.long),  # [rows, positions] DecodingState.tokens
            "logp": zeros(rows, positions),  # [rows, positions]
            "closed_at": zeros(rows, dtype=torch.long),  # [rows]
            "done": zeros(rows, dtype=torch.bool),  # [rows]
            "position": zeros(rows, dtype=torch.long),  # [rows] the new token's position id
            "first": zeros(rows, dtype=torch.long),  # [rows] first real cache slot (after the left padding)
            "n": zeros((), dtype=torch.long),  # [] tokens generated so far
            "slot": zeros((), dtype=torch.long),  # [] where this step's keys go
            "slots": torch.arange(positions, device=self.device),  # [positions]
        }
        self.rows, self.positions = rows, positions

    def views(self, R: int) -> dict:
        """The first R rows of every kept buffer (contiguous: the same addresses as the buffers)."""
        if R not in self.views_by_rows:
            k = self.kept
            v = {name: k[name][:R] for name in ["logits", "noise", "position", "first"]}
            v["slot"], v["slots"] = k["slot"], k["slots"]
            v["cache"] = Cache(layers=[StaticCacheLayer(keys[:R], values[:R], k["slot"])
                                       for keys, values in zip(k["keys"], k["values"])])
            v["state"] = DecodingState(k["tokens"][:R], k["logp"][:R], k["closed_at"][:R], k["done"][:R], k["n"])
            # Tensors updated in place at fixed addresses: CUDA graphs may read and write them. Their sizes (rows,
            # positions) are symbolic in the compiled step, so that a new row count needs no new compilation.
            tensors = [v["logits"], v["noise"], v["position"], v["first"], v["slot"], v["slots"],
                       *vars(v["state"]).values(), *(t for l in v["cache"].layers for t in (l.keys, l.values))]
            for t in tensors:
                torch._dynamo.mark_static_address(t)
                for dim in range(t.dim()):
                    if t.shape[dim] in (R, self.positions, self.positions + 1):
                        torch._dynamo.maybe_mark_dynamic(t, dim)
            self.views_by_rows[R] = v
        return self.views_by_rows[R]


def decoding_step(twin, buf: dict, rule: SamplingRule, slots: torch.Tensor):
    """One decoding step, in place: choose token n from the kept logits, run it through the twin, keep its logits.

    buf: FastDecoder.views(R). slots [W]: the cache positions attention reads (0..W-1, W = the filled
    length rounded up to the bucket).
    """
    token = choose_next_token(buf["state"], buf["logits"], buf["noise"], rule)  # [R]
    mask = (slots >= buf["first"][:, None]) & (slots <= buf["slot"])  # [R, W] the row's real tokens up to this one
    out = twin(input_ids=token[:, None], position_ids=buf["position"][:, None], attention_mask=mask[:, None, None, :],
               cache=buf["cache"], use_cache=True)
    buf["logits"].copy_(out.logits[:, -1])  # [R, V]
    buf["slot"] += 1
    buf["position"] += 1


_DECODERS = weakref.WeakKeyDictionary()  # model -> FastDecoder


def _decoder_key(model, dtype, device) -> tuple:
    """What a twin is valid for: the compute dtype, the device, and the model's parameter tensors (the twin
    shares them; a module replaced since, or a model moved, needs a new twin)."""
    return dtype, device, tuple(id(p) for p in model.parameters())


def decoder_of(model) -> FastDecoder | None:
    """The model's fast-path state, if a call made one (tests and gpu_check read its buffers)."""
    return _DECODERS.get(model)


def kv_cache_dtypes(model) -> dict | None:
    """The dtypes of the fast path's kept KV cache, {"keys": "torch.bfloat16", "values": ...}, or None."""
    dec = _DECODERS.get(model)
    if dec is None or not dec.kept:
        return None
    return {"keys": str(dec.kept["keys"][0].dtype), "values": str(dec.kept["values"][0].dtype)}


def release(model):
    """Free the fast path's buffers, twin and compiled step for this model (rebuilt on the next call)."""
    _DECODERS.pop(model, None)


# ------------------------------------------------------------------------------------------------ entry point
@dataclass
class Decoded:
    """What decode_fast drew: views of the kept buffers, overwritten by the next call (copy them out)."""
    tokens: torch.Tensor  # [R, max_new] generated tokens, padding after a row is done
    logp: torch.Tensor  # [R, max_new] each token's log-probability (DecodingState.logp)
    closed_at: torch.Tensor  # [R]


@torch.no_grad()
def decode_fast(model, prompt_ids: list[list[int]], M: int, special: SpecialTokens, think_budget: int,
                answer_budget: int | None = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                buffer_shape: tuple[int, int] | None = None, compile: bool | str | None = None, bucket: int = 256,
                check_every: int | None = None) -> Decoded:
    """rollout.generate's tokens, faster (see the top of this file): shared prefill, static cache in the
    compute dtype, compiled step, buffers kept between calls.

    buffer_shape=(rows, positions): reserve the kept buffers for that many rows and cache positions (prompt +
        new tokens, rounded up to the bucket) at the first call; None: sized by the call, grown when a
        later call needs more. A call that needs more than reserved grows them with a warning.
    compile: torch.compile the step (None: on CUDA, with mode "reduce-overhead", i.e. CUDA graphs; a
        string or callable names the torch.compile backend, e.g. "aot_eager", which the tests use).
    bucket: attention reads the filled cache rounded up to a multiple of this (each width is one
        CUDA graph). check_every: steps between checks that every row is done (each check waits for the
        device; None: 16 on CUDA, 1 elsewhere, where the draws then match generate's one for one). Steps
        run after the last row finished change nothing but the random-number generator's state.
    """
    device = next(model.parameters()).device
    if not full_attention_only(model):
        raise ValueError("the fast decoding path handles full-attention layers only: use --decode generate")
    cuda = device.type == "cuda"
    compile = cuda if compile is None else compile
    check_every = check_every or (16 if cuda else 1)
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else next(model.parameters()).dtype
    dec = _DECODERS.get(model)
    if dec is None or dec.key != _decoder_key(model, dtype, device):
        dec = _DECODERS[model] = FastDecoder(model, dtype, device)
    dec.refresh()
    vocab = model.get_output_embeddings().weight.shape[0]
    rule = SamplingRule.of(special, vocab, device, think_budget, answer_budget, temperature, top_p, top_k)

    # The kept buffers: reserved once (for `buffer_shape`, or this call), grown only when a call needs more.
    ids, mask = left_pad(prompt_ids, rule.pad, device)  # [B, L]
    B, L = ids.shape
    R, positions = B * M, _round_up(L + rule.max_new, bucket)
    planned_rows, planned_positions = (buffer_shape[0], _round_up(buffer_shape[1], bucket)) if buffer_shape else (0, 0)
    if dec.rows < R or dec.positions < positions:
        if buffer_shape and (R > planned_rows or positions > planned_positions):
            print(f"fast decoding: this call needs {R} rows x {L + rule.max_new} positions, more than the "
                  f"{planned_rows} x {planned_positions} planned (buffer_shape): growing the kept buffers "
                  f"(new addresses: CUDA graphs are recorded again)", flush=True)
        dec.reserve(max(R, dec.rows, planned_rows), max(positions, dec.positions, planned_positions), vocab)
    buf = dec.views(R)

    # The prefill: each prompt once (B rows), by the model itself; only the last position's logits.
    position = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    for layer, prefilled in zip(buf["cache"].layers, out.cache.layers):
        for cache, prompt in [(layer.keys, prefilled.keys), (layer.values, prefilled.values)]:
            # Each prompt's keys and values go to its M rows (cast to the compute dtype), without a repeated copy.
            # Positions past L keep what an earlier call left there: attention's mask never reads them unwritten.
            cache.view(B, M, *cache.shape[1:])[:, :, :, :L] = prompt[:, None]
    buf["logits"].copy_(out.logits[:, -1].repeat_interleave(M, 0))  # [R, V]
    del out  # the prefill's own cache and logits: copied, not needed during the decoding loop
    buf["state"].reset(rule.pad)
    buf["slot"].fill_(L)
    buf["first"].copy_((L - mask.sum(-1)).repeat_interleave(M))  # [R] left padding before the row's prompt
    buf["position"].copy_(position[:, -1].repeat_interleave(M) + 1)  # [R]

    step = decoding_step
    if compile:
        backend = "inductor" if compile is True else compile
        if backend not in dec.compiled:  # fullgraph: a graph break would split the step (and its CUDA graph)
            mode = "reduce-overhead" if cuda and backend == "inductor" else None
            dec.compiled[backend] = torch.compile(decoding_step, backend=backend, mode=mode, fullgraph=True)
        step = dec.compiled[backend]
        # One CUDA graph per attention width is the design: raise inductor's "too many graphs" warning threshold.
        config, widths = torch._inductor.config.triton, dec.positions // bucket
        if cuda and config.cudagraph_dynamic_shape_warn_limit is not None:
            config.cudagraph_dynamic_shape_warn_limit = max(config.cudagraph_dynamic_shape_warn_limit, 2 * widths)
    for n in range(rule.max_new):
        buf["noise"].exponential_()  # what torch.multinomial would draw, outside the compiled step
        slots = buf["slots"][:min(_round_up(L + n + 1, bucket), dec.positions)]  # [W]
        if compile:
            torch._dynamo.maybe_mark_dynamic(slots, 0)  # one compiled graph for all widths (one CUDA graph each)
            torch.compiler.cudagraph_mark_step_begin()
        step(dec.twin, buf, rule, slots)
        if (n + 1) % check_every == 0 and buf["state"].done.all():
            break
    state = buf["state"]
    return Decoded(state.tokens[:, :rule.max_new], state.logp[:, :rule.max_new], state.closed_at)


def generate(model, prompt_ids: list[list[int]], M: int, special: SpecialTokens, think_budget: int,
             answer_budget: int | None = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             buffer_shape: tuple[int, int] | None = None) -> list[list[Sample]]:
    """rollout.generate, on the fast path: the same arguments, the same Samples (the same tokens), faster.

    buffer_shape=(rows, positions): the kept buffers, reserved once for the largest call planned (train.py
    sizes them for its rollouts and its validation together); None: sized by the first call.
    """
    check_sampling_options(think_budget, answer_budget, temperature, top_p, top_k)
    generated = decode_fast(model, prompt_ids, M, special, think_budget, answer_budget, temperature, top_p, top_k,
                            buffer_shape=buffer_shape).tokens  # [R, max_new]
    return to_samples(prompt_ids, M, generated, special, think_budget, answer_budget)
