"""Score rollouts: logp_z and logp_y, the sequence-level log-probabilities the estimators take.

    sequence_logprobs(model, samples, tokens)     (logp_z, logp_y) [N], with gradient if enabled
    log_weights(model, samples, tokens, mb)       log w = logp_y [N], no gradient (GARL/PAFT's weight pass)

logp_z sums log p over a sample's rationale tokens under the sampler that drew them (EOS left out of
the softmax, see rollout.py); logp_y sums log p over its answer tokens, EOS included. Forced
"</think>" tokens count in neither. Both are SUMS over tokens, as the paper's estimators need.

Performance (bench.py measures each; test_perf.py checks each against the plain path):
- A prompt is computed once for all its samples: the samples' continuations attend to its keys and
  values (gradients reach the prompt through them) instead of recomputing it for every sample.
- Only z and y positions go through the output layer, in chunks of tokens: never [B, T, V] at once.
  With gradient, a custom autograd function keeps one chunk of logits and one fp32 weight-gradient
  buffer alive at a time (at Qwen3's 151,936-token vocabulary the full logits of one 5k-token
  sequence would be 3 GB).
"""
import contextlib

import torch
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from rollout import Sample, Tokens, full_attention_only


def _token_logprobs(hidden: torch.Tensor, targets: torch.Tensor, lm_head, banned: torch.Tensor | None) -> torch.Tensor:
    """log p(target) for each row of hidden [n, H]; banned token ids are left out of the softmax."""
    logits = lm_head(hidden).float()  # [n, V]
    if banned is not None:
        logits = logits.index_fill(1, banned, float("-inf"))
    return logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(-1)  # [n]


class _ChunkedLogProb(torch.autograd.Function):
    """log p(target) for hidden [n, H] through a linear output layer, one chunk of tokens at a time.

    Forward keeps only each token's logsumexp. Backward recomputes one chunk's logits at a time, turns
    them in place into the logits' gradient, g * (onehot(target) - softmax), and accumulates the weight
    gradient into a single fp32 [V, H] buffer. The peak is one chunk's [c, V] logits plus that buffer,
    whatever n is. (Checkpointing each chunk, the obvious alternative, also keeps one [V, H] weight
    gradient per chunk alive until autograd sums them, and the softmax backward's temporaries.)
    The math is the plain path's: same logits, same dtype (bf16 under autocast, then fp32).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, banned, chunk):
        out = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)  # [n]
        lse = torch.empty_like(out)  # [n] logsumexp of each token's logits
        ctx.dtype = hidden.dtype
        for s in range(0, hidden.shape[0], chunk):
            raw = torch.nn.functional.linear(hidden[s:s + chunk], weight, bias)  # [c, V]; autocast applies here
            ctx.dtype = raw.dtype
            logits = raw.float()
            if banned is not None:
                logits.index_fill_(1, banned, float("-inf"))
            lse[s:s + chunk] = logits.logsumexp(-1)
            out[s:s + chunk] = logits.gather(1, targets[s:s + chunk, None]).squeeze(1) - lse[s:s + chunk]
        ctx.chunk = chunk
        ctx.save_for_backward(hidden, weight, bias, targets, banned, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, banned, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here
            w = weight.to(ctx.dtype)  # once, not per chunk
            b = None if bias is None else bias.to(ctx.dtype)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros(weight.shape[0], device=weight.device, dtype=torch.float32) if need_b else None
            for s in range(0, hidden.shape[0], ctx.chunk):
                h, g, t = hidden[s:s + ctx.chunk].to(ctx.dtype), grad_out[s:s + ctx.chunk], targets[s:s + ctx.chunk]
                logits = torch.nn.functional.linear(h, w, b).float()  # [c, V], recomputed
                if banned is not None:
                    logits.index_fill_(1, banned, float("-inf"))  # softmax 0 there: no gradient
                grad = logits.sub_(lse[s:s + ctx.chunk, None]).exp_().mul_(-g[:, None])  # [c, V] -g softmax
                grad[torch.arange(len(t), device=t.device), t] += g  # + g onehot(target)
                if need_h:
                    grad_h[s:s + ctx.chunk] = grad.to(ctx.dtype) @ w  # [c, H]
                if need_w:
                    grad_w.addmm_(grad.T, h.float())  # [V, H] += [V, c] @ [c, H], accumulated in fp32
                if need_b:
                    grad_b += grad.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def chunked_token_logprobs(hidden, targets, lm_head, banned=None, chunk_tokens: int = 0) -> torch.Tensor:
    """_token_logprobs over [n, H] in chunks, never holding more than one chunk's [c, V] logits.

    With gradient on it goes through _ChunkedLogProb (one chunk of logits and one weight-gradient
    buffer at a time), which needs the output layer to be a torch.nn.Linear, as in every causal LM in
    transformers that this project loads (no logit soft-capping or scaling). At
    Qwen3's 151,936-token vocabulary, a 5,000-token sequence's full fp32 logits would be 3 GB; a
    441-token chunk is 256 MB.
    """
    if chunk_tokens <= 0:
        chunk_tokens = max(64, (1 << 26) // lm_head.weight.shape[0])  # ~256 MB of fp32 logits per chunk
    if not isinstance(lm_head, torch.nn.Linear):
        raise ValueError(f"the output layer must be a torch.nn.Linear, got {type(lm_head).__name__}")
    if torch.is_grad_enabled() and hidden.shape[0] > 0:
        return _ChunkedLogProb.apply(hidden, lm_head.weight, lm_head.bias, targets, banned, chunk_tokens)
    parts = [_token_logprobs(hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens], lm_head, banned)
             for s in range(0, hidden.shape[0], chunk_tokens)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _score(model, samples: list[Sample], hidden: torch.Tensor, first: int, tokens: Tokens, need_z: bool,
           chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_z, logp_y) [n] from hidden states [n, L, H] whose column j is sequence position first + j.

    Token t is predicted by the hidden state at t-1: gather (row, column) for every z and y token,
    and send only those through the output layer.
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
    banned = torch.tensor(tokens.eos_ids, device=device)
    out = []
    for rows, cols, tgt, ban in [(z_rows, z_cols, z_tgt, banned), (y_rows, y_cols, y_tgt, None)]:
        rows = torch.tensor(rows, device=device, dtype=torch.long)
        cols = torch.tensor(cols, device=device, dtype=torch.long)
        tgt = torch.tensor(tgt, device=device, dtype=torch.long)
        lp = chunked_token_logprobs(hidden[rows, cols], tgt, lm_head, ban, chunk_tokens)  # [n_tokens]
        out.append(torch.zeros(len(samples), device=device, dtype=lp.dtype).index_add(0, rows, lp))  # [n]
    return out[0], out[1]


def _plain_logprobs(model, samples, tokens, need_z, chunk_tokens):
    """The reference path: every sequence (prompt included) through the model, right-padded."""
    device = next(model.parameters()).device
    seqs = [s.ids for s in samples]
    T = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tokens.pad_id] * (T - len(s)) for s in seqs], device=device)  # [N, T]
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs], device=device)  # [N, T]
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, T, H]
    return _score(model, samples, hidden, 0, tokens, need_z, chunk_tokens)


# ------------------------------------------------------------------------- a prompt computed once for its samples
class _PromptLayer(DynamicLayer):
    """Records one layer's prompt keys/values. It keeps the latest, rather than appending, so that a
    gradient-checkpointing replay (which calls update again with the same tensors) changes nothing."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """Read-only: the continuation attends to [prompt keys, its own keys]. Nothing is stored, so a
    checkpointing replay sees the same prefix; gradients flow back into the prompt's keys/values."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: int):
        super().__init__()
        self.keys = keys.expand(rows, -1, -1, -1)  # [rows, H, P, D]: a view, no copy
        self.values = values.expand(rows, -1, -1, -1)
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


@contextlib.contextmanager
def _cache_allowed_under_checkpointing(model):
    """Yields whether a prompt can be shared here; lets the cache through transformers' checkpointing.

    transformers drops the cache inside gradient-checkpointed layers, since a cache that appends would
    be appended twice by the backward replay. Ours never appends (see _PromptLayer, _PrefixLayer), so
    the layers may keep it. That needs non-reentrant checkpointing: the reentrant kind gives no
    gradient to tensors a layer reads from outside its arguments, so there we use the plain path.
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


def _shared_logprobs(model, prefix, samples, tokens, need_z, chunk_tokens):
    """(logp_z, logp_y) for samples that share one prompt, given that prompt's _prefill."""
    last_hidden, kv = prefix  # [1, 1, H], per layer ([1, Hkv, P, D], [1, Hkv, P, D])
    device = last_hidden.device
    n, P = len(samples), len(samples[0].prompt_ids)
    conts = [s.ids[P:] for s in samples]
    C = max(len(c) for c in conts)
    hidden = last_hidden.expand(n, 1, -1)  # [n, 1, H]: predicts each sample's first token after the prompt
    if C > 0:
        ids = torch.tensor([c + [tokens.pad_id] * (C - len(c)) for c in conts], device=device)  # [n, C]
        # Attention mask over [prompt | continuation]; right padding is masked and, being causal, never
        # changes a real token. Positions continue after the prompt.
        mask = torch.tensor([[1] * (P + len(c)) + [0] * (C - len(c)) for c in conts], device=device)  # [n, P+C]
        positions = torch.arange(P, P + C, device=device).expand(n, C)  # [n, C]
        cache = Cache(layers=[_PrefixLayer(k, v, n) for k, v in kv])
        out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                               use_cache=False).last_hidden_state  # [n, C, H]
        hidden = torch.cat([hidden, out], 1)  # [n, 1+C, H]: column j is sequence position P-1+j
    return _score(model, samples, hidden, P - 1, tokens, need_z, chunk_tokens)


def _by_prompt(samples: list[Sample]) -> dict[tuple, list[int]]:
    """Indices of the samples, grouped by prompt (in order of first appearance)."""
    groups = {}
    for i, s in enumerate(samples):
        groups.setdefault(tuple(s.prompt_ids), []).append(i)
    return groups


def sequence_logprobs(model, samples: list[Sample], tokens: Tokens, need_z: bool = True,
                      chunk_tokens: int = 0, share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_z, logp_y), each [N]: sums of token log-probs over each sample's z and y tokens.

    Gradient flows if it is enabled. Only z and y positions go through the output layer.
    need_z=False skips z (the weight pass of GARL/PAFT needs log w = logp_y only) and returns zeros.

    share_prompt: samples with the same prompt (a micro-batch of one question's M samples) run the
    prompt once; their continuations attend to its keys and values. The same numbers as the plain
    path (share_prompt=False: every sequence whole, right-padded, positions 0..T-1), to fp32
    rounding, and the same gradient: the prompt's gradient is the sum over the samples that read it.
    """
    groups = _by_prompt(samples)
    with _cache_allowed_under_checkpointing(model) as allowed:
        if not (share_prompt and allowed and full_attention_only(model) and len(groups) < len(samples)
                and all(groups)):  # all(groups): no empty prompt
            return _plain_logprobs(model, samples, tokens, need_z, chunk_tokens)
        logp_z, logp_y = [None] * len(samples), [None] * len(samples)
        for prompt, idx in groups.items():
            group = [samples[i] for i in idx]
            lz, ly = _shared_logprobs(model, _prefill(model, list(prompt)), group, tokens, need_z, chunk_tokens)
            for j, i in enumerate(idx):
                logp_z[i], logp_y[i] = lz[j], ly[j]
    return torch.stack(logp_z), torch.stack(logp_y)


@torch.no_grad()
def log_weights(model, samples: list[Sample], tokens: Tokens, micro_batch: int,
                share_prompt: bool = True) -> torch.Tensor:
    """log w = log p(y*|x, z) for every sample [N], without gradient, in micro-batches (the weight pass).

    share_prompt: each prompt runs once for all its samples (no gradient, so its keys and values can
    serve every micro-batch), and a prompt's samples are batched by length, longest first, so that
    little padding is computed. Results come back in the samples' order.
    """
    if not (share_prompt and full_attention_only(model) and all(_by_prompt(samples))):
        parts = [_plain_logprobs(model, samples[i:i + micro_batch], tokens, False, 0)[1]
                 for i in range(0, len(samples), micro_batch)]
        return torch.cat(parts)
    out = [None] * len(samples)
    for prompt, idx in _by_prompt(samples).items():
        prefix = _prefill(model, list(prompt))
        idx = sorted(idx, key=lambda i: -len(samples[i].ids))
        for k in range(0, len(idx), micro_batch):
            chunk = idx[k:k + micro_batch]
            _, ly = _shared_logprobs(model, prefix, [samples[i] for i in chunk], tokens, False, 0)
            for j, i in enumerate(chunk):
                out[i] = ly[j]
    return torch.stack(out)
