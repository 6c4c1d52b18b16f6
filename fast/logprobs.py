"""logprobs.py's numbers, faster: what runs at the paper's scale (train.py --logprobs fast).

    sequence_logprobs(model, samples, special, need_z=True, chunk_tokens=0, share_prompt=True)
    log_weights(model, samples, special, micro_batch, share_prompt=True)
    answer_token_logprobs(model, samples, special, micro_batch, share_prompt=True)
    chunked_token_logprobs(hidden, targets, lm_head, banned=None, chunk_tokens=0, fp32=False)

The same (logp_z, logp_y) as the plain logprobs.sequence_logprobs (to fp32 rounding; the same dtypes for
the same tokens; tested in tests/test_fast_logprobs.py), and the same log w and per-token answer log-probs
as its log_weights and answer_token_logprobs, without ever holding [N, T, V] logits. At the
paper's scale (Qwen3-0.6B, micro-batches of 4k-token sequences, bf16 autocast) the plain path would not
fit. Three exact rewrites, each saying below what it saves:
    1. only z and y positions go through the output layer, a chunk of tokens at a time
    2. with gradient, a custom autograd function keeps one chunk of logits alive, not all of them
    3. a prompt is computed once for all its samples, not once per sample
One change that is not exact, said where it happens (_ChunkedLogProb): under bf16 compute the output
layer's weight gradient is taken in bf16 and summed in fp32, as autocast takes every other layer's.
"""
import contextlib

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from fast.decode import full_attention_only
from logprobs import check_prompts, pad_right
from rollout import Sample, SpecialTokens


def sequence_logprobs(model, samples: list[Sample], special: SpecialTokens, need_z: bool = True,
                      chunk_tokens: int = 0, share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_z, logp_y), each [N]: logprobs.sequence_logprobs's numbers, with gradient if it is enabled.

    need_z=False skips z (the weight pass needs log w = logp_y only) and returns zeros for it.
    chunk_tokens: tokens per output-layer chunk (0: about 256 MB of fp32 logits per chunk).
    share_prompt: samples with the same prompt (a micro-batch of one question's samples) run it once,
    their continuations attending to its keys and values (rewrite 3). False runs every sequence whole.
    Same numbers and gradients either way: a prompt's gradient is the sum over the samples that read it.

    >>> import logprobs, models
    >>> tok = models.build_tiny_tokenizer(); model = models.build_tiny_model(tok)
    >>> s = Sample(prompt_ids=[1, 2, 3], z_ids=[4, 5], forced_ids=[], y_ids=[6, tok.eos_token_id])
    >>> logp_z, logp_y = sequence_logprobs(model, [s, s], SpecialTokens.of(tok))
    >>> logp_z.shape, bool(torch.allclose(logp_y, logprobs.sequence_logprobs(model, [s, s], SpecialTokens.of(tok))[1]))
    (torch.Size([2]), True)
    """
    check_prompts(samples)
    groups = _by_prompt(samples)
    with _cache_allowed_under_checkpointing(model) as allowed:
        # Whole sequences when asked, when our cache cannot be used (reentrant checkpointing, sliding-window
        # layers), or when there is nothing to share (every prompt has one sample).
        if not (share_prompt and allowed and full_attention_only(model) and len(groups) < len(samples)):
            return _whole_sequence_logprobs(model, samples, special, need_z, chunk_tokens)
        logp_z, logp_y = [None] * len(samples), [None] * len(samples)
        for prompt, idx in groups.items():
            group = [samples[i] for i in idx]
            lz, ly = _shared_logprobs(model, _prefill(model, list(prompt)), group, special, need_z, chunk_tokens)
            for j, i in enumerate(idx):
                logp_z[i], logp_y[i] = lz[j], ly[j]
    return torch.stack(logp_z), torch.stack(logp_y)


@torch.no_grad()
def log_weights(model, samples: list[Sample], special: SpecialTokens, micro_batch: int,
                share_prompt: bool = True) -> torch.Tensor:
    """log w = log p(y*|x, z) = logp_y for every sample [N], without gradient, in micro-batches.

    share_prompt: each prompt runs once for all its samples (no gradient, so its keys and values can
    serve every micro-batch), and a prompt's samples are batched by length, longest first, so that
    little padding is computed. Results come back in the samples' order.
    Example: samples [a1 b1 a2 b2 a3] (prompts a and b), micro_batch 2 -> prompt a once, then
    micro-batches of a's samples by length, say [a3 a1] [a2]; prompt b once, then [b1 b2]; log w [5]
    in the order a1 b1 a2 b2 a3.
    """
    return torch.stack(_answer_pass(model, samples, special, micro_batch, share_prompt, per_token=False))  # [N]


@torch.no_grad()
def answer_token_logprobs(model, samples: list[Sample], special: SpecialTokens, micro_batch: int,
                          share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs.answer_token_logprobs's numbers: (token_logp [N, T], mask [N, T]), y's log-probs token by token.

    log_weights' pass (share_prompt: each prompt once, then its samples by length), with the answer's
    log-probs kept one per token instead of summed; zero-padded on the right, mask 1 on real tokens.
    """
    rows = _answer_pass(model, samples, special, micro_batch, share_prompt, per_token=True)  # [len(y_n)] each
    return pad_right(rows)  # [N, T] each


def _answer_pass(model, samples, special, micro_batch, share_prompt, per_token) -> list[torch.Tensor]:
    """log_weights' loop (its docstring has an example): logp_y for each sample, in the samples' order, or with
    per_token the answer's log-probs before they are summed, a [len(y_n)] tensor per sample."""
    check_prompts(samples)
    out = [None] * len(samples)

    def keep(idx, logp_y):  # logp_y [n] or, per_token, a list of n rows: one per sample of idx
        for j, i in enumerate(idx):
            out[i] = logp_y[j]

    if not (share_prompt and full_attention_only(model)):
        for k in range(0, len(samples), micro_batch):
            idx = range(k, min(k + micro_batch, len(samples)))
            keep(idx, _whole_sequence_logprobs(model, [samples[i] for i in idx], special, False, 0, per_token)[1])
        return out
    for prompt, idx in _by_prompt(samples).items():
        prefix = _prefill(model, list(prompt))
        idx = sorted(idx, key=lambda i: -len(samples[i].ids))
        for k in range(0, len(idx), micro_batch):
            chunk = idx[k:k + micro_batch]
            keep(chunk, _shared_logprobs(model, prefix, [samples[i] for i in chunk], special, False, 0, per_token)[1])
    return out


def _whole_sequence_logprobs(model, samples, special, need_z, chunk_tokens, per_token=False):
    """Every sequence whole (prompt included, right-padded) through the model, then rewrites 1 and 2."""
    device = next(model.parameters()).device
    T = max(len(s.ids) for s in samples)
    ids = torch.tensor([s.ids + [special.pad_id] * (T - len(s.ids)) for s in samples], device=device)  # [N, T]
    mask = torch.tensor([[1] * len(s.ids) + [0] * (T - len(s.ids)) for s in samples], device=device)  # [N, T]
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, T, H]
    return _score(model, samples, hidden, 0, special, need_z, chunk_tokens, per_token)


# ---------------------------------------------------------- rewrite 1: only z and y positions, in chunks
# Saves: the output layer on prompt, forced and padding positions (a prompt can be as long as the
# rationale), and memory: logits are never [N, T, V] (at Qwen3's vocabulary a micro-batch of eight
# 4k-token sequences would hold 20 GB of fp32 logits), one chunk of [c, V] at a time.
def _score(model, samples: list[Sample], hidden: torch.Tensor, first: int, special: SpecialTokens, need_z: bool,
           chunk_tokens: int, per_token: bool = False) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
    """(logp_z, logp_y) [n] from hidden states [n, L, H] whose column j is sequence position first + j.

    Token t is predicted by the hidden state at t-1: gather (row, column) for every z and y token,
    and send only those through the output layer: z's in the compute dtype with EOS banned, y's in fp32.
    per_token: logp_y is the answers' log-probs before they are summed, one [len(y_n)] tensor per sample
    (RLPR's reward needs them one by one).
    """
    device = hidden.device
    z_rows, z_cols, z_tgt, y_rows, y_cols, y_tgt = [], [], [], [], [], []
    for n, s in enumerate(samples):
        z0 = len(s.prompt_ids)
        y0 = z0 + len(s.z_ids) + len(s.forced_ids)
        if need_z:
            z_rows += [n] * len(s.z_ids)
            z_cols += range(z0 - 1 - first, z0 - 1 - first + len(s.z_ids))
            z_tgt += s.z_ids
        y_rows += [n] * len(s.y_ids)
        y_cols += range(y0 - 1 - first, y0 - 1 - first + len(s.y_ids))
        y_tgt += s.y_ids
    lm_head = model.get_output_embeddings()
    eos = torch.tensor(special.eos_ids, device=device)
    out = []
    for rows, cols, tgt, banned, fp32, by_token in [(z_rows, z_cols, z_tgt, eos, False, False),
                                                    (y_rows, y_cols, y_tgt, None, True, per_token)]:
        rows = torch.tensor(rows, device=device, dtype=torch.long)
        cols = torch.tensor(cols, device=device, dtype=torch.long)
        tgt = torch.tensor(tgt, device=device, dtype=torch.long)
        lp = chunked_token_logprobs(hidden[rows, cols], tgt, lm_head, banned, chunk_tokens, fp32)  # [n_tokens]
        if by_token:  # y's log-probs kept one by one: split back into samples (gathered sample by sample, in order)
            out.append(list(lp.split([len(s.y_ids) for s in samples])))  # [len(y_n)] each
        else:
            out.append(torch.zeros(len(samples), device=device, dtype=lp.dtype).index_add(0, rows, lp))  # [n]
    return out[0], out[1]


def chunked_token_logprobs(hidden, targets, lm_head, banned=None, chunk_tokens: int = 0,
                           fp32: bool = False) -> torch.Tensor:
    """logprobs._token_logprobs for hidden [n, H], targets [n] -> [n], never more than one chunk's [c, V] logits.

    fp32=True scores through the output layer in fp32 (answer tokens); otherwise in the compute dtype:
    bf16 under bf16 autocast, else the weight's dtype. Needs the output layer to be a torch.nn.Linear,
    as in every causal LM in transformers that this project loads (no logit soft-capping or scaling).
    The default chunk is ~256 MB of fp32 logits: 441 tokens at Qwen3's 151,936-token vocabulary.
    Example: 1000 rationale tokens at Qwen3's vocabulary -> chunks of 441, 441 and 118 tokens, [1000].
    """
    if not isinstance(lm_head, torch.nn.Linear):
        raise ValueError(f"the output layer must be a torch.nn.Linear, got {type(lm_head).__name__}")
    if chunk_tokens <= 0:
        chunk_tokens = max(64, (1 << 26) // lm_head.weight.shape[0])
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    device = hidden.device.type
    if fp32:
        dtype = torch.float32
    elif torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)  # what autocast would run the linear layer in
    else:
        dtype = lm_head.weight.dtype
    return _ChunkedLogProb.apply(hidden, lm_head.weight, lm_head.bias, targets, banned, chunk_tokens, dtype)


# ---------------------------------------------------------- rewrite 2: one chunk of logits alive in the backward
class _ChunkedLogProb(torch.autograd.Function):
    """log p(target) for hidden [n, H] through a linear output layer, one chunk of tokens at a time.

    Saves: autograd would keep every chunk's [c, V] logits (or, checkpointing each chunk, one [V, H]
    weight gradient per chunk until it sums them). Here the forward keeps only each token's logsumexp;
    the backward recomputes one chunk's logits at a time, turns them in place into the logits' gradient
    g * (onehot(target) - softmax), and accumulates the weight gradient into a single fp32 [V, H]
    buffer. The peak is one chunk's logits plus that buffer, whatever n is. The math is the plain
    path's, in the same dtypes: the matmul in `dtype` (explicit, autocast off), softmax in fp32.

    The weight gradient, [V, H] += grad [c, V]^T @ h [c, H] per chunk, is the output layer's largest
    matmul: 2 V H n FLOPs over n tokens, ~93 TFLOP per step at the paper's scale (Qwen3's V = 151,936,
    H = 1024, ~300k rationale tokens), seconds per step in fp32 without TF32. So when `dtype` is bf16 (or
    fp16) it runs in that dtype, as autocast runs every other layer's weight gradient, and this one in
    the plain path: bf16 inputs, fp32 accumulation inside the matmul, each chunk's product rounded to
    bf16, then summed into the fp32 buffer (in one chunk, exactly the plain path's autocast gradient).
        saves  the fp32 matmul's time: an H100 SXM's peak is 989 dense bf16 TFLOPS against 67 fp32
               ones (~1.4 s -> ~0.1 s at peak; not measured here)
        costs  the logits' gradient rounded to bf16 (h already is) and each chunk's product rounded to
               bf16: relative error 2.3e-3 to 2.4e-3 of the weight gradient against fp32 (measured in
               tests/test_fast_logprobs.py), and a [V, H] bf16 temporary per chunk (311 MB at Qwen3).
    In fp32 (`dtype` fp32: the answer tokens, or a model run in fp32) it stays the exact fp32 matmul.
    torch 2.13's matmul with out_dtype=torch.float32 (bf16 in, fp32 out: neither the products' rounding
    nor the temporary) runs on CUDA only, so this one path, which runs everywhere, is what is tested.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, banned, chunk, dtype):
        out = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)  # [n]
        lse = torch.empty_like(out)  # [n] logsumexp of each token's logits
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here
            w, b = weight.to(dtype), None if bias is None else bias.to(dtype)  # once, not per chunk
            for s in range(0, hidden.shape[0], chunk):
                logits = F.linear(hidden[s:s + chunk].to(dtype), w, b).float()  # [c, V]
                if banned is not None:
                    logits.index_fill_(1, banned, float("-inf"))
                lse[s:s + chunk] = logits.logsumexp(-1)
                out[s:s + chunk] = logits.gather(1, targets[s:s + chunk, None]).squeeze(1) - lse[s:s + chunk]
        ctx.chunk, ctx.dtype = chunk, dtype
        ctx.save_for_backward(hidden, weight, bias, targets, banned, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, banned, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(ctx.dtype)
            b = None if bias is None else bias.to(ctx.dtype)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros(weight.shape[0], device=weight.device, dtype=torch.float32) if need_b else None
            for s in range(0, hidden.shape[0], ctx.chunk):
                h, g, t = hidden[s:s + ctx.chunk].to(ctx.dtype), grad_out[s:s + ctx.chunk], targets[s:s + ctx.chunk]
                logits = F.linear(h, w, b).float()  # [c, V], recomputed
                if banned is not None:
                    logits.index_fill_(1, banned, float("-inf"))  # softmax 0 there: no gradient
                grad = logits.sub_(lse[s:s + ctx.chunk, None]).exp_().mul_(-g[:, None])  # [c, V] -g softmax
                grad[torch.arange(len(t), device=t.device), t] += g  # + g onehot(target)
                grad_c = grad.to(ctx.dtype)  # [c, V]: the matmuls' input in the compute dtype (grad itself in fp32)
                if need_h:
                    grad_h[s:s + ctx.chunk] = grad_c @ w  # [c, H]
                if need_w:
                    if ctx.dtype == torch.float32:
                        grad_w.addmm_(grad_c.T, h)  # [V, H] += [V, c] @ [c, H], exact fp32
                    else:  # bf16 matmul (fp32 inside it), its [V, H] product rounded to bf16, summed in fp32
                        grad_w += grad_c.T @ h
                if need_b:
                    grad_b += grad.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)


# ---------------------------------------------------------- rewrite 3: a prompt computed once for its samples
# Saves: (M-1) of every M prompt computations, forward and backward, when a micro-batch holds M samples
# of one question (train.py keeps them together). The samples' continuations attend to the prompt's keys
# and values (gradients reach the prompt through them) instead of recomputing it in every row.
class _PromptLayer(DynamicLayer):
    """Records one layer's prompt keys/values. It keeps the latest, rather than appending, so that a
    gradient-checkpointing replay (which calls update again with the same tensors) changes nothing."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """Read-only: the continuation attends to [prompt keys, its own keys]. Nothing is stored, so a
    checkpointing replay sees the same prefix; gradients flow back into the prompt's keys/values."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values  # [1, Hkv, P, D]: the prompt's, one row
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        # The prompt's keys/values expanded to the rows here, inside the layer (a view, no copy), not once
        # before the layers run: the expand's backward, which sums the rows' gradients into the prompt's
        # [1, Hkv, P, D], then runs right after this layer's attention backward. Expanded before the
        # layers, it would run after all of them, and autograd would hold every layer's [rows, Hkv, P+C, D]
        # key/value gradient until then (~3.6 GB at the paper's setup). The same sum either way.
        rows = key_states.shape[0]
        keys, values = self.keys.expand(rows, -1, -1, -1), self.values.expand(rows, -1, -1, -1)  # [rows, Hkv, P, D]
        return torch.cat([keys, key_states], -2), torch.cat([values, value_states], -2)  # [rows, Hkv, P+C, D]


@contextlib.contextmanager
def _cache_allowed_under_checkpointing(model):
    """Yields whether a prompt can be shared here; lets the cache through transformers' checkpointing.

    transformers drops the cache inside gradient-checkpointed layers, since a cache that appends would
    be appended twice by the backward replay. Ours never appends (see _PromptLayer, _PrefixLayer), so
    the layers may keep it. That needs non-reentrant checkpointing (transformers' default): the
    reentrant kind gives no gradient to tensors a layer reads from outside its arguments, so there
    every sequence runs whole.
    """
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if not (layers and model.training and torch.is_grad_enabled()):
        yield True
        return
    kwargs = [getattr(m._gradient_checkpointing_func, "keywords", {}) for m in layers]
    if not all(kw.get("use_reentrant") is False for kw in kwargs):
        yield False
        return
    for m in layers:
        m._can_checkpoint_with_cache = True  # an instance attribute shadows the class's False
    try:
        yield True
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache


def _prefill(model, prompt_ids: list[int]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Run one prompt [1, P]: its last hidden state [1, 1, H] and every layer's keys and values."""
    device = next(model.parameters()).device
    n_layers = model.config.get_text_config().num_hidden_layers
    cache = Cache(layers=[_PromptLayer() for _ in range(n_layers)])
    ids = torch.tensor([prompt_ids], device=device)  # [1, P]
    hidden = model.base_model(input_ids=ids, cache=cache, use_cache=False).last_hidden_state  # [1, P, H]
    return hidden[:, -1:], [(layer.keys, layer.values) for layer in cache.layers]


def _shared_logprobs(model, prefix, samples, special, need_z, chunk_tokens, per_token=False):
    """(logp_z, logp_y) for samples that share one prompt, given that prompt's _prefill."""
    last_hidden, kv = prefix  # [1, 1, H], per layer ([1, Hkv, P, D], [1, Hkv, P, D])
    device = last_hidden.device
    n, P = len(samples), len(samples[0].prompt_ids)
    conts = [s.ids[P:] for s in samples]
    C = max(len(c) for c in conts)
    hidden = last_hidden.expand(n, 1, -1)  # [n, 1, H]: predicts each sample's first token after the prompt
    if C > 0:
        ids = torch.tensor([c + [special.pad_id] * (C - len(c)) for c in conts], device=device)  # [n, C]
        # Attention mask over [prompt | continuation]; right padding is masked and, being causal, never
        # changes a real token. Positions continue after the prompt.
        mask = torch.tensor([[1] * (P + len(c)) + [0] * (C - len(c)) for c in conts], device=device)  # [n, P+C]
        positions = torch.arange(P, P + C, device=device).expand(n, C)  # [n, C]
        cache = Cache(layers=[_PrefixLayer(k, v) for k, v in kv])
        out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                               use_cache=False).last_hidden_state  # [n, C, H]
        hidden = torch.cat([hidden, out], 1)  # [n, 1+C, H]: column j is sequence position P-1+j
    return _score(model, samples, hidden, P - 1, special, need_z, chunk_tokens, per_token)


def _by_prompt(samples: list[Sample]) -> dict[tuple, list[int]]:
    """Indices of the samples, grouped by prompt (in order of first appearance)."""
    groups = {}
    for i, s in enumerate(samples):
        groups.setdefault(tuple(s.prompt_ids), []).append(i)
    return groups
