"""Memory a training run needs, known before the model loads: a breakdown by term and by phase.

    table, fit = plan_run(args, examples)              # train.py's flags and data: what --plan prints
    plan = estimate(models.qwen3_0_6b_config(), M=32, gen_questions=1, prompt_tokens=1800,
                    max_new_tokens=3968 + 1 + 128, micro_batch=4, grad_ckpt=True, decode="fast", logprobs="fast")
    print(format_plan(plan, *device_memory("cuda")))   # the table, against the device's memory
    fit = check_fits(plan, device_memory("cuda")[1])   # fit.ok; else fit.flag names the setting to change

    python scale/memory.py --device-gb 80       # the paper's FinQA setup on Qwen3-0.6B's shape (validation included)

A step of train.py goes through four phases, one after the other (five with validation). Alive through
every phase: the fp32 weights and AdamW's two moments, and with --decode fast its kept decoding state
(the buffers, sized once for the largest generate call of training or validation, the twin's bf16
weights and, on CUDA, the CUDA-graph pool). Gradients exist only in the gradient pass and the optimizer
step (train.py frees them, set to None, right after optimizer.step()). What each phase adds at its peak:
    generate        the bf16 weight copies (autocast, the prefill's) and
                      --decode fast      the prefill's cache while it is copied into the kept buffers, or one
                                         decoding step's logits and attention scores
                      --decode generate  Hugging Face generate's cache (fp32 keys under autocast, values in
                                         the compute dtype), built by the prefill of every row at once and grown
                                         by concatenation, and one step's logits
    weight pass     the bf16 weight copies and one micro-batch's forward
                      --logprobs fast    one prompt's keys/values, one layer's temporaries
                      --logprobs plain   whole sequences: the logits of every position [N, T, V] (fp32)
    gradient pass   the gradients, one micro-batch's saved activations, and
                      --logprobs fast    the chunked log-prob head (one chunk of logits, fp32 [V, H] gradient
                                         buffers), the backward's temporaries and the gradients autograd holds
                                         until the shared prompt's backward (see gradient_pass)
                      --logprobs plain   [N, T, V] logits, saved and back-propagated (plain_gradient_pass)
    optimizer step  the gradients and the optimizer's temporaries
    validation      as generate, for eval_batch x eval_n rows of think + answer tokens
The peak is the largest phase.

Every term is a formula of the model's config and the run's settings, derived from what the Llama and
Qwen3 decoder layers in transformers allocate and what autograd saves (the formulas are written next to
each term below). tests/test_memory.py checks the saved-activation formula byte for byte against
autograd's saved tensors, and experiments/memory_check.py compares every phase with measured peaks.
What it leaves out: the CUDA context and the allocator's fragmentation (check_fits keeps 10% of the
device for them), and buffers below ~1% of a phase (position ids, token lists, Python objects).
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # as a script from anywhere: the library is the top-level folder

from related import verified  # noqa: E402  the estimators whose rollouts write their own answers

FP32 = 4  # bytes of the master weights, their gradients and optimizer moments, and the residual stream
DTYPE_BYTES = {"fp32": 4, "bf16": 2}  # compute dtype: bf16 autocast computes matmuls and attention in 2 bytes
MODEL_TYPES = ("llama", "qwen3")  # decoder layers whose activations the formulas below follow
# What check_fits leaves free: the CUDA context (~0.5 GB), the caching allocator's fragmentation and the
# small buffers the estimate leaves out. Project choice.
HEADROOM = 0.9
CHARS_PER_TOKEN = 3.5  # prompt_tokens_of: characters per token, erring towards more tokens
DECODE_BUCKET = 256  # fast.decode.decode_fast's default bucket: its cache holds positions rounded up to a multiple
DECODE_PATHS = ("generate", "fast")  # train.py's --decode: Hugging Face generate, or the kept-buffer fast path
LOGPROB_PATHS = ("plain", "fast")  # train.py's --logprobs: whole sequences and [N, T, V] logits, or chunked/shared
# Terms alive through every phase (what a phase starts with; the optimizer step also starts with the gradients).
KEPT_TERMS = ("weights", "optimizer state", "decoding buffers", "decoding twin weights", "CUDA graph pool")
GB = 1e9


@dataclass(frozen=True)
class Shape:
    """The numbers of a model config the estimate needs (see shape_of)."""
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qk_norm: bool  # Qwen3 normalizes queries and keys per head; Llama does not
    attention_bias: bool
    mlp_bias: bool
    name: str


def shape_of(config) -> Shape:
    """The estimate's view of a transformers config (Llama / SmolLM2, Qwen3).

    >>> import models; s = shape_of(models.qwen3_0_6b_config()); (s.layers, s.kv_heads, s.head_dim, s.qk_norm)
    (28, 8, 128, True)
    """
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    if c.model_type not in MODEL_TYPES:
        raise ValueError(f"memory.py models the decoder layers of {', '.join(MODEL_TYPES)}; "
                         f"got model_type {c.model_type!r}")
    heads = c.num_attention_heads
    return Shape(vocab=c.vocab_size, hidden=c.hidden_size, intermediate=c.intermediate_size,
                 layers=c.num_hidden_layers, heads=heads, kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                 head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
                 tied=bool(getattr(c, "tie_word_embeddings", False)), qk_norm=c.model_type == "qwen3",
                 attention_bias=bool(getattr(c, "attention_bias", False)), mlp_bias=bool(getattr(c, "mlp_bias", False)),
                 name=c.model_type)


def parameter_count(s: Shape) -> dict:
    """Parameters by kind: 'total', 'cast' (what autocast copies to bf16: every Linear's weight and bias,
    the output layer included), 'layer' (one decoder layer) and 'largest' (the biggest single tensor).

    >>> import models; parameter_count(shape_of(models.qwen3_0_6b_config()))["total"]
    596049920
    """
    H, I, d = s.hidden, s.intermediate, s.head_dim
    q, kv = s.heads * d, s.kv_heads * d
    attn = H * q + 2 * H * kv + q * H + (q + 2 * kv + H if s.attention_bias else 0)  # q, k, v, o projections
    mlp = 3 * H * I + (2 * I + H if s.mlp_bias else 0)  # gate, up, down
    norms = 2 * H + (2 * d if s.qk_norm else 0)  # input and post-attention RMSNorm (+ Qwen3's q_norm, k_norm)
    embed = s.vocab * H
    head = 0 if s.tied else s.vocab * H
    total = embed + s.layers * (attn + mlp + norms) + H + head  # + the final RMSNorm
    cast = s.layers * (attn + mlp) + s.vocab * H  # the output layer's weight is cast too (the embedding, if tied)
    return {"total": total, "cast": cast, "layer": attn + mlp + norms, "largest": max(embed, H * I)}


def kv_bytes_per_token(s: Shape, dtype_bytes: int) -> int:
    """Keys and values of one token in every layer: layers x 2 x kv_heads x head_dim x bytes.

    >>> import models; kv_bytes_per_token(shape_of(models.qwen3_0_6b_config()), 2) // 1024   # KiB, bf16
    112
    """
    return s.layers * 2 * s.kv_heads * s.head_dim * dtype_bytes


def chunk_tokens(vocab: int) -> int:
    """logprobs.py's chunk of the output layer: ~2**26 fp32 logits (256 MB) per chunk, at least 64 tokens."""
    return max(64, (1 << 26) // vocab)


def config_for(name: str):
    """The config of train.py's --model without loading its weights and without network for the models
    the project knows: "tiny", "smollm2" (read from the GGUF file's metadata), the paper's Qwen/Qwen3-0.6B
    (its shape is written in models.py); any other hub id or local checkpoint through AutoConfig
    (config.json only). Raises models.ModelLoadError, naming --model, when that cannot be read.

    >>> config_for("Qwen/Qwen3-0.6B").num_hidden_layers    # no download
    28
    """
    import models
    if name == "tiny":
        return models.build_tiny_model(models.build_tiny_tokenizer()).config
    if name == models.PAPER_MODEL and not os.path.isdir(name):
        return models.qwen3_0_6b_config()
    from transformers import AutoConfig
    if name == "smollm2":
        return AutoConfig.from_pretrained(models.smollm2_dir(), gguf_file=models.SMOLLM2_FILE)
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:  # no such directory, no config.json, the hub unreachable or offline
        raise models.model_load_error(name, e) from None


# ------------------------------------------------------------------------------------------------ activations
def layer_saved_per_token(s: Shape, a: int) -> int:
    """Bytes one decoder layer saves for backward per token, apart from the attention's keys/values
    and mask (layer_saved_per_row). a = compute bytes (4 fp32, 2 under bf16 autocast).

    The residual stream is fp32 (fp32 master weights: embeddings and residual sums stay fp32), and an
    RMSNorm computes in fp32. Per token, with H hidden, I intermediate, h/k query/kv heads of d dims:
      2 RMSNorms       input (pow) 4H + normalized (weight mul) 4H + rsqrt 4          = 2 (8H + 4)
      linear inputs    fp32: the norm's output, one tensor per norm                  = 2 x 4H
                       bf16: q, k, v, gate and up each cast their own copy            = 5 x 2H
      Qwen3 q/k norm   fp32 copy of q (pow) + normalized q in the input dtype, + rsqrt = (4 + a) h d + 4h, same for k
      attention        query (cast) + output (also o_proj's input: the kernel writes  = 2 a h d + 4h
                       it [T, h, d], so .contiguous() is free) + logsumexp fp32
      MLP              gate, silu(gate), up, silu(gate) * up                          = 4 a I
    Rotary embeddings save only cos/sin (shared by every layer, counted once).
    """
    H, I, d, h, k = s.hidden, s.intermediate, s.head_dim, s.heads, s.kv_heads
    norms = 2 * (2 * FP32 * H + FP32)
    linear_inputs = 2 * FP32 * H if a == FP32 else 5 * a * H
    qk_norm = ((FP32 + a) * (h + k) * d + FP32 * (h + k)) if s.qk_norm else 0
    attention = 2 * a * h * d + FP32 * h
    mlp = 4 * a * I
    return norms + linear_inputs + qk_norm + attention + mlp


def layer_saved_per_row(s: Shape, a: int, query_tokens: int, kv_tokens: int) -> int:
    """Per sequence of a micro-batch that attends to kv_tokens (prompt + its own), per layer:
      keys and values   transformers repeats them to all h query heads (repeat_kv) whenever a mask is
                        passed, which the shared-prompt path always does, and SDPA saves them  = 2 a h d K
      mask              SDPA turns the boolean mask into an additive one in the query's dtype
                        and saves it for backward (the CUDA memory-efficient kernel pads K to 16) = a C K
    """
    return 2 * a * s.heads * s.head_dim * kv_tokens + a * query_tokens * kv_tokens


def prompt_kv_bytes(s: Shape, a: int, tokens: int) -> int:
    """One prompt's keys/values as logprobs.py keeps them for its samples: keys come out of the rotary
    embedding in fp32 (its cos/sin follow the fp32 residual stream), values in the compute dtype."""
    return s.layers * s.kv_heads * s.head_dim * (FP32 + a) * tokens


def gradient_pass(s: Shape, a: int, n: int, prompt: int, cont: int, grad_ckpt: bool, casts: int,
                  layer_params: int) -> dict:
    """Bytes alive at the peak of one micro-batch's forward + backward, beyond the persistent state.

    One micro-batch = n sequences of one question (train.py keeps a question's samples together):
    the prompt (P tokens) runs once, the n continuations (C tokens each: rationale, "</think>",
    answer) attend to it (logprobs.sequence_logprobs). T = n C continuation tokens, K = P + C.
    casts: the bf16 weight copies (0 in fp32); layer_params: one decoder layer's parameters.
    Returns the terms alive at the largest of five moments (the forward's end, the output layer's
    backward, the backward's first and last decoder layer, the embedding's backward) and which it is.
    """
    H, V, L, d = s.hidden, s.vocab, s.layers, s.head_dim
    T, K = n * cont, prompt + cont
    tok = layer_saved_per_token(s, a)
    row = layer_saved_per_row(s, a, cont, K)
    up = FP32 if a != FP32 else 0  # an fp32 copy that exists only when the compute dtype is not fp32
    # The prompt runs once as one causal sequence without a mask: SDPA takes the kv heads as they are
    # (enable_gqa) and saves the prompt's own keys/values, which are the kept prompt_kv tensors, apart
    # from the bf16 cast of the fp32 keys.
    prompt_tok = tok + (a * s.kv_heads * d if a != FP32 else 0)
    # Head: the final RMSNorm saves its input and normalized output (4H + 4H + 4 per token, over the
    # continuations and the whole prompt), the log-prob function the gathered fp32 hidden states of the
    # scored tokens (<= T) and their int64 row/column indices; rotary cos/sin, fp32 [tokens, d] x 2.
    head = (T + prompt) * (2 * FP32 * H + FP32) + T * (FP32 * H + 16) + (T + prompt) * 2 * d * FP32
    kv = prompt_kv_bytes(s, a, prompt)
    if grad_ckpt:
        # Non-reentrant checkpointing keeps each layer's input (the fp32 residual stream) and the
        # boolean mask [n, 1, C, K] it is called with; a layer's activations exist only while its
        # backward recomputes them (casting that layer's weights again under autocast).
        saved = L * (T + prompt) * FP32 * H + n * cont * K
        recompute = T * tok + n * row
        saved_prompt = L * prompt * FP32 * H  # the prompt's backward comes last
        saved_at_first_layer = T * FP32 * H + n * cont * K + saved_prompt
        layer_casts = casts // L
    else:
        saved = L * (T * tok + n * row) + L * prompt * prompt_tok
        recompute = 0
        saved_prompt = L * prompt * prompt_tok
        saved_at_first_layer = T * tok + n * row + saved_prompt
        layer_casts = casts  # autograd keeps every cast weight until its layer's backward
    # Output layer (logprobs._ChunkedLogProb), c tokens of V logits at a time (c = chunk_tokens, at most T).
    # Forward: the chunk's logits in the compute dtype, their fp32 copy (none in fp32) and logsumexp's
    # fp32 exp temporary. Backward: the fp32 logits turned in place into their gradient plus its
    # cast (bf16), the weight cast to the compute dtype once (bf16), and the fp32 [V, H] weight
    # gradient; twice, since the answer tokens' call (run second, so back-propagated first) returns
    # its own [V, H] gradient, which autograd holds until the rationale tokens' one arrives.
    c = min(chunk_tokens(V), T)
    fwd_chunk = c * V * (a + up + FP32)
    grad_w = V * H * FP32
    bwd_chunk = c * V * (FP32 + (a if a != FP32 else 0)) + (V * H * a if a != FP32 else 0) + 2 * grad_w
    # Gradients autograd holds back. A parameter used twice in the graph gets its gradient once both
    # uses are back-propagated, and the prompt's forward ran first, so its backward runs last:
    #  - the tied output layer's [V, H] gradient waits for the embedding's, at the very end;
    #  - every decoder layer's weight gradients wait for the prompt's pass through that layer (in bf16:
    #    both passes used the same cached bf16 copy, so the wait is in bf16, before the cast back);
    #  - the gradient of each layer's concatenated [prompt | continuation] keys and values, summed over
    #    the repeated heads ([n, kv_heads, K, d]: fp32 keys, values in the compute dtype), stays whole:
    #    the prompt's share of it is a view, summed over the n rows by a node that autograd runs only
    #    after every layer (it was created before them, in logprobs._PrefixLayer).
    held_head = grad_w if s.tied else 0
    held_w = layer_params * FP32 if a == FP32 else layer_params * a  # bf16: held before the cast back to fp32
    held_kv = n * s.kv_heads * K * d * (FP32 + a)
    # A decoder layer's backward goes through its MLP, then its attention. MLP: its saved tensors
    # (post-attention RMSNorm 8H + 4, the linears' inputs, 4 a I) plus d out (4H) and two [T, I]
    # gradients. Attention: the MLP's saved tensors are gone, its weight gradients are held, and SDPA
    # returns dK, dV over K per row in the compute dtype (dK also upcast to fp32), dQ, and d out.
    mlp_saved = T * ((2 * FP32 * H + FP32) + (FP32 * H if a == FP32 else 2 * a * H) + 4 * a * s.intermediate)
    ws_mlp = T * (FP32 * H + 2 * a * s.intermediate)
    ws_attn = n * s.heads * d * K * (2 * a + up) + T * (a * s.heads * d + FP32 * H)

    def layer_backward(activations, held):
        """A layer's backward: the larger of its MLP and attention moments."""
        mlp = {"activations": activations, "backward workspace": ws_mlp, "held gradients": held}
        attn = {"activations": activations - mlp_saved, "backward workspace": ws_attn, "held gradients": held + held_w}
        return max(mlp, attn, key=lambda t: sum(t.values()))

    moments = {
        # The forward's last step: inside autocast (every cast weight cached), the final hidden states
        # and their concatenation with the prompt's last one (fp32 [n, 1 + C, H]) are still referenced.
        "forward end": {"bf16 weight copies": casts, "activations": saved + head + 2 * T * FP32 * H,
                        "prompt keys/values": kv, "log-prob chunk (forward)": fwd_chunk},
        # Backward starts outside autocast; the gradient of the gathered hidden states is fp32 [T, H].
        "output layer backward": {"bf16 weight copies": 0 if grad_ckpt else casts,
                                  "activations": saved + head + T * FP32 * H, "prompt keys/values": kv,
                                  "log-prob chunk + [V, H] gradient (backward)": bwd_chunk},
        "last layer's backward": {"bf16 weight copies": layer_casts, "prompt keys/values": kv,
                                  **layer_backward(saved + recompute, held_head)},
        "first layer's backward": {"bf16 weight copies": layer_casts, "prompt keys/values": kv,
                                   **layer_backward(saved_at_first_layer + recompute,
                                                    held_head + (L - 1) * (held_w + held_kv))},
        # The continuations' embedding backward (a dense fp32 [V, H] gradient) runs before the prompt's
        # backward: every layer's held gradients are still there.
        "embedding backward": {"activations": saved_prompt, "prompt keys/values": kv,
                               "held gradients": held_head + L * (held_w + held_kv), "embedding gradient": V * H * FP32},
    }
    moment = max(moments, key=lambda m: sum(moments[m].values()))
    return {"moment": moment, "terms": moments[moment], "moments": moments}


def weight_pass(s: Shape, a: int, n: int, prompt: int, cont: int) -> dict:
    """Bytes alive at the peak of the weight pass (log_weights, no gradient), beyond the persistent state.

    The prompt's keys/values stay for all its micro-batches. Through a micro-batch's forward, the
    embedding output and the rotary cos/sin stay referenced (4H + 2 x 4d per token). In one layer, at
    the attention:
      hidden stream   the layer's input and normalized input, fp32                       2 x 4H per token
      query           fp32 after rotary, its cast (bf16), SDPA's output                  (4 + a + a) h d per token
      keys/values     prompt + continuation concatenated (fp32 keys, values in a), their
                      repeat to h heads, the bf16 cast of the repeated keys              K d (k + h)(4 + a) + K d h a
      mask            boolean [n, 1, C, K] and SDPA's additive copy in the compute dtype  (1 + a) C K per row
    In the MLP: residual + normalized input, the bf16 casts, gate/up/product ~ (8H + 2aH + 3aI) per token.
    """
    H, I, d, h, k = s.hidden, s.intermediate, s.head_dim, s.heads, s.kv_heads
    T, K = n * cont, prompt + cont
    cast = a if a != FP32 else 0
    rep = h if h != k else 0  # repeat_kv copies only when there are fewer kv heads than query heads
    forward = T * (FP32 * H + 2 * d * FP32)
    attn = (T * (2 * FP32 * H + (FP32 + cast + a) * h * d)
            + n * K * d * ((k + rep) * (FP32 + a) + (rep or k) * cast) + n * cont * K * (1 + a))
    mlp = T * (2 * FP32 * H + 2 * cast * H + 3 * a * I)
    out = 2 * T * FP32 * H  # the final hidden states and their concatenation with the prompt's last one
    return {"prompt keys/values": prompt_kv_bytes(s, a, prompt), "forward workspace": forward + max(attn, mlp, out)}


def decode_capacity(prompt: int, max_new: int) -> int:
    """Positions of the fast path's buffers: prompt + new tokens rounded up to its 256-position attention
    bucket, plus one spare slot (attention never reads the whole buffer, a case a compiled step would
    specialize).

    >>> decode_capacity(1800, 4097)      # 5897 positions -> 6144, + 1
    6145
    """
    return -(-(prompt + max_new) // DECODE_BUCKET) * DECODE_BUCKET + 1


def fast_decode_buffers(s: Shape, a: int, rows: int, capacity: int, kv_cache_bytes: float | None = None) -> int:
    """The fast path's buffers, allocated once for the largest call (rows x capacity) and kept through
    every phase of every step (a new allocation per call would fragment the device, and a CUDA graph
    reads fixed addresses):
      keys/values   rows x capacity positions x layers x 2 x kv_heads x head_dim, in the compute dtype
                    (kv_cache_bytes: bytes per element, if the code keeps another dtype)
      logits, noise fp32 [rows, V] each: the last position's logits and the Exp(1) sampling noise
      rows          each row's tokens (int64) and their log-probs (fp32): 12 bytes per position
    """
    kv = int(rows * capacity * kv_bytes_per_token(s, kv_cache_bytes or a))
    return kv + 2 * rows * s.vocab * FP32 + rows * capacity * (8 + FP32)


def decode_step_bytes(s: Shape, a: int, rows: int, positions: int) -> int:
    """One fast decoding step's temporaries: the output layer's logits [rows, V] in the compute dtype,
    pick()'s fp32 copy with EOS masked and its softmax (fp32 [rows, V] each; the kept logits and noise
    buffers are counted with the buffers), and one layer's attention scores (rows x heads x positions, fp32).
    """
    return rows * s.vocab * (a + 2 * FP32) + rows * s.heads * positions * FP32


def fast_generate_workspace(s: Shape, a: int, prompts: int, rows: int, prompt: int, capacity: int) -> int:
    """What one decode_fast call adds to its kept buffers, the larger of two moments:
      prefill    the prompts' own cache (keys come out of the rotary embedding / k_norm in fp32, values in
                 the compute dtype), whole at the last layer, where that layer's forward temporaries
                 (weight_pass's formula, no shared prompt) are alive too; then it is copied into the M rows'
                 buffers, with the last position's logits [prompts, V] and their repeat to the rows [rows, V].
                 Under autocast the output layer's weight is cast (V x H, counted with the bf16 weight
                 copies) only after the last layer's temporaries are freed: they overlap by that much less.
      decoding   one step's temporaries (decode_step_bytes)
    """
    head_cast = s.vocab * s.hidden * a if a != FP32 else 0
    layer = max(weight_pass(s, a, prompts, 0, prompt)["forward workspace"] - head_cast, 0)
    prefill = prompts * prompt * s.layers * s.kv_heads * s.head_dim * (FP32 + a) + (prompts + rows) * s.vocab * a + layer
    return max(prefill, decode_step_bytes(s, a, rows, capacity))


def cuda_graph_pool(s: Shape, a: int, rows: int, capacity: int) -> int:
    """The private memory pool of the fast path's CUDA graphs (CUDA only: decode_fast compiles its step
    with mode "reduce-overhead" there; on a CPU nothing is compiled into graphs).

    Assumption, from how torch's CUDA-graph trees allocate: every graph (one per attention width) records
    its allocations in one pool per device, kept reserved as long as the graphs exist (the decoder keeps
    them: through every phase). The step writes its results in place into the kept buffers and returns
    nothing, so when a graph ends all it allocated is dead and the next graph reuses that memory: the
    pool holds one step's temporaries at the widest attention (decode_step_bytes at full capacity). The
    eager warm-up run of each new graph allocates the same temporaries outside the pool, which the
    generate phase's workspace already counts. Not measured here (no GPU): experiments/gpu_check.py
    compares the CUDA peak with the plan.
    """
    return decode_step_bytes(s, a, rows, capacity)


def hf_generate_bytes(s: Shape, a: int, rows: int, prompt: int, max_new: int, kv_cache_bytes: float | None = None,
                      ) -> dict:
    """One Hugging Face generate call (--decode generate): rows = prompts x M sequences, each its own copy
    of the prompt. Its DynamicCache is freed when the call returns.

    KV cache     rows x (prompt + max_new) positions, no rounding. Under bf16 autocast the keys come out
                 of Qwen3's k_norm (Llama: the rotary embedding) in fp32 and values in bf16: 3 bytes per
                 element on average (kv_cache_bytes overrides it); in fp32, 4.
    The larger of two other moments:
      prefill    every row's prompt at once (rows x prompt tokens): its cache is still smaller than the
                 full one; one layer's forward temporaries (weight_pass's formula with no shared prompt;
                 the output layer's weight is cast after them, as in fast_generate_workspace) and the last
                 position's logits, compute dtype and fp32 copy [rows, V]
      decoding   the cache grows by concatenation: a layer's keys are copied into a new tensor one
                 position longer while the old one is alive (one layer's fp32 keys); one step's logits
                 [rows, V] in the compute dtype, and four fp32 [rows, V]: their fp32 copy (or Hugging Face generate's
                 noise), the processed scores (EOS masked), the probabilities and the sampler's temporary;
                 one layer's attention scores (rows x heads x positions, fp32)
    """
    bytes_per = kv_cache_bytes or ((FP32 + a) / 2 if a != FP32 else FP32)
    length = prompt + max_new
    kv = int(rows * length * kv_bytes_per_token(s, bytes_per))
    head_cast = s.vocab * s.hidden * a if a != FP32 else 0  # cast after the last layer (fast_generate_workspace)
    prefill = (rows * prompt * s.layers * s.kv_heads * s.head_dim * (FP32 + a) - kv  # the cache is counted whole
               + max(weight_pass(s, a, rows, 0, prompt)["forward workspace"] - head_cast, 0)
               + rows * s.vocab * (a + FP32))
    grow = rows * length * s.kv_heads * s.head_dim * FP32
    decode = grow + rows * s.vocab * (a + 4 * FP32) + rows * s.heads * length * FP32
    return {"KV cache": kv, "generate workspace": max(prefill, decode)}


def plain_weight_pass(s: Shape, a: int, n: int, seq: int) -> dict:
    """The weight pass with --logprobs plain (no gradient): n whole sequences of seq tokens per micro-batch.

    The larger of: one layer's forward temporaries (weight_pass's formula, no shared prompt), and the
    output layer: the final hidden states [n, seq, H] fp32 and the logits of every position, where
    _token_logprobs holds two [n, seq, V] fp32 tensors at once (the logits and their index_fill, or
    those and their log-softmax; under bf16 the compute-dtype logits die once copied to fp32), for z's
    tokens, then again for y's (the fp32 output layer and its log-softmax).
    """
    T = n * seq
    layer = weight_pass(s, a, n, 0, seq)["forward workspace"]
    head = T * FP32 * s.hidden + 2 * T * s.vocab * FP32
    return {"forward workspace": layer if layer > head else 0, "logits [N, T, V]": head if head >= layer else 0}


def plain_gradient_pass(s: Shape, a: int, n: int, seq: int, grad_ckpt: bool, casts: int) -> dict:
    """The gradient pass with --logprobs plain: n whole sequences of seq tokens (prompt included) per
    micro-batch, every position through the output layer (logprobs.sequence_logprobs).

    Activations, per layer: each sequence's seq tokens (layer_saved_per_token) and its attention over
    its own seq positions (layer_saved_per_row); with checkpointing, each layer's fp32 input and the
    boolean mask [n, 1, seq, seq], plus one layer recomputed. Final RMSNorm 8H + 4 per token.
    Logits: autograd saves each log-softmax's fp32 output [n, seq, V] (z's and y's); the compute-dtype
    logits, their fp32 copy and index_fill save nothing large. y's log-probs were computed last, so
    back-propagate first: its gather's gradient (a dense fp32 [n, seq, V]) and the log-softmax's input
    gradient (another) are alive with both saved outputs: 4 x [n, seq, V] fp32, the largest moment,
    with the output layer's fp32 [V, H] weight gradient right after it (held until the embedding's
    backward when the embedding is tied). A decoder layer's backward follows (gradient_pass's workspace
    formulas over n x seq tokens attending to seq positions).
    """
    H, V, L, I, d = s.hidden, s.vocab, s.layers, s.intermediate, s.head_dim
    T = n * seq
    tok, row = layer_saved_per_token(s, a), layer_saved_per_row(s, a, seq, seq)
    head = T * (2 * FP32 * H + FP32) + T * 2 * d * FP32  # final RMSNorm; rotary cos/sin
    if grad_ckpt:
        saved, recompute, layer_casts = L * T * FP32 * H + n * seq * seq, T * tok + n * row, casts // L
    else:
        saved, recompute, layer_casts = L * (T * tok + n * row), 0, casts
    grad_w = V * H * FP32
    up = FP32 if a != FP32 else 0
    ws_layer = max(T * (FP32 * H + 2 * a * I), n * s.heads * d * seq * (2 * a + up) + T * (a * s.heads * d + FP32 * H))
    moments = {
        "output layer backward": {"bf16 weight copies": 0 if grad_ckpt else casts, "activations": saved + head,
                                  "logits [N, T, V]": 4 * T * V * FP32},
        "last layer's backward": {"bf16 weight copies": layer_casts, "activations": saved + recompute,
                                  "backward workspace": ws_layer, "held gradients": grad_w if s.tied else 0},
        "embedding backward": {"held gradients": grad_w if s.tied else 0, "embedding gradient": grad_w},
    }
    moment = max(moments, key=lambda m: sum(moments[m].values()))
    return {"moment": moment, "terms": moments[moment], "moments": moments}


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """estimate()'s result: bytes per term and per phase, and the settings it was computed for."""
    settings: dict
    config: object  # the transformers config it was computed from (check_fits re-plans with it)
    shape: Shape
    params: int
    terms: dict  # term -> (bytes, formula): the largest value each term takes in any phase
    phases: dict  # phase -> {term: bytes alive at the phase's peak}
    notes: list = field(default_factory=list)

    def phase_bytes(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    def at_start(self, phase: str) -> int:
        """Bytes alive when the phase begins: the kept terms (KEPT_TERMS), and before the optimizer step the
        gradients. phase_bytes(phase) - at_start(phase) is what the phase adds (memory_check measures that)."""
        alive = KEPT_TERMS + (("gradients",) if phase == "optimizer step" else ())
        return sum(b for name, b in self.phases[phase].items() if name in alive)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def peak(self) -> int:
        return self.phase_bytes(self.peak_phase)


def estimate(config, *, M: int, gen_questions: int, prompt_tokens: int, max_new_tokens: int, micro_batch: int,
             seq_tokens: int | None = None, grad_ckpt: bool, precision: str = "bf16", optimizer: str = "adamw",
             device: str = "cuda", val_questions: int = 0, eval_n: int = 0, val_max_new_tokens: int = 0,
             kv_cache_bytes: float | None = None, decode: str = "fast", logprobs: str = "fast",
             step_rows: int | None = None) -> Plan:
    """Memory of a training run, per term and per phase, in bytes.

    config          a transformers config (Llama/SmolLM2 or Qwen3 decoder)
    M               rationales per question; gen_questions questions per generate call (rows = gen_questions x M)
    prompt_tokens   the longest prompt (generate pads to it)
    max_new_tokens  tokens a generate call may add: think budget + "</think>" (+ the answer budget)
    micro_batch     sequences per forward/backward (train.py's --micro-batch, also the weight pass's)
    seq_tokens      a gradient-pass sequence, prompt included (default prompt_tokens + max_new_tokens)
    grad_ckpt       gradient checkpointing; precision "fp32" or "bf16" (autocast over fp32 master weights)
    optimizer       "adamw" (two fp32 moments) or "sgd" (no state); device "cuda" (AdamW's foreach step
                    holds one temporary per parameter; the fast path's CUDA graphs) or "cpu"
    val_questions   questions per validation generate call, eval_n samples each (0: no validation phase),
                    adding val_max_new_tokens tokens (think budget + "</think>" + answer budget)
    kv_cache_bytes  bytes per cached key/value element (default: the compute dtype's for the fast path;
                    fp32 keys and compute-dtype values for Hugging Face generate)
    decode          train.py's --decode: "fast" (buffers kept through every phase) or "generate"
    logprobs        train.py's --logprobs: "fast" (chunked, shared prompt) or "plain" ([N, T, V] logits)
    step_rows       sequences in a step's gradient pass (B x M; default: more than one micro-batch)

    >>> import models
    >>> plan = estimate(models.qwen3_0_6b_config(), M=32, gen_questions=1, prompt_tokens=1800,
    ...                 max_new_tokens=4097, micro_batch=4, grad_ckpt=True)
    >>> plan.peak_phase, round(plan.phases["weight pass"]["decoding buffers"] / 1e9, 1)   # 32 x 6145 x 112 KiB, + logits
    ('gradient pass', 22.6)
    """
    if precision not in DTYPE_BYTES:
        raise ValueError(f"precision must be one of {sorted(DTYPE_BYTES)}, got {precision!r}")
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if decode not in DECODE_PATHS:
        raise ValueError(f"decode must be one of {DECODE_PATHS}, got {decode!r}")
    if logprobs not in LOGPROB_PATHS:
        raise ValueError(f"logprobs must be one of {LOGPROB_PATHS}, got {logprobs!r}")
    for name, value in [("M", M), ("gen_questions", gen_questions), ("prompt_tokens", prompt_tokens),
                        ("max_new_tokens", max_new_tokens), ("micro_batch", micro_batch)]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    s = shape_of(config)
    a = DTYPE_BYTES[precision]
    counts = parameter_count(s)
    P = counts["total"]
    seq = seq_tokens if seq_tokens is not None else prompt_tokens + max_new_tokens
    cont = max(seq - prompt_tokens, 1)
    rows = gen_questions * M
    validation = bool(val_questions and eval_n)
    val_rows = val_questions * eval_n if validation else 0

    weights, grads = P * FP32, P * FP32
    opt_state = 2 * P * FP32 if optimizer == "adamw" else 0
    # bf16 autocast casts each Linear weight on first use and caches the copy until the autocast block
    # ends (torch caches casts of leaf tensors that require grad): all of them during generate (the
    # prefill runs the model itself) and the weight pass, and during the gradient pass's forward; without
    # checkpointing the backward keeps them.
    casts = counts["cast"] * a if a != FP32 else 0
    if optimizer == "adamw":  # torch's foreach AdamW: one sqrt(v) temporary per parameter; per tensor on a CPU
        opt_step = P * FP32 if device == "cuda" else 2 * counts["largest"] * FP32
    else:
        opt_step = 0  # SGD without momentum updates in place

    # Alive through every phase: the weights, AdamW's moments and, with the fast decoding path, its kept
    # state: the buffers for the largest call (training's rows or validation's, the longest new tokens),
    # the twin's compute-dtype copy of every Linear (none in fp32: the twin shares the fp32 weights), and on
    # CUDA the CUDA graphs' pool.
    kept = {"weights": weights, "optimizer state": opt_state}
    buf_rows = max(rows, val_rows)
    capacity = decode_capacity(prompt_tokens, max(max_new_tokens, val_max_new_tokens if validation else 0))
    if decode == "fast":
        kept["decoding buffers"] = fast_decode_buffers(s, a, buf_rows, capacity, kv_cache_bytes)
        kept["decoding twin weights"] = casts
        kept["CUDA graph pool"] = cuda_graph_pool(s, a, buf_rows, capacity) if device == "cuda" else 0

    def generate_terms(questions, n_rows, max_new):
        if decode == "fast":
            return {"generate workspace": fast_generate_workspace(s, a, questions, n_rows, prompt_tokens, capacity)}
        return hf_generate_bytes(s, a, n_rows, prompt_tokens, max_new, kv_cache_bytes)

    if logprobs == "fast":
        wp = weight_pass(s, a, micro_batch, prompt_tokens, cont)
        gp = gradient_pass(s, a, micro_batch, prompt_tokens, cont, grad_ckpt, casts, counts["layer"])
    else:
        wp = plain_weight_pass(s, a, micro_batch, seq)
        gp = plain_gradient_pass(s, a, micro_batch, seq, grad_ckpt, casts)
    # The gradients are freed after each step: the first micro-batch's backward creates them, each when its
    # parameter's gradient is ready, after the moments the gradient pass peaks at (the gradients not ready
    # then are the held ones, counted there). Every later micro-batch runs with all of them alive: count them
    # unless the whole step is one micro-batch.
    grads_in_pass = 0 if step_rows is not None and step_rows <= micro_batch else grads
    phases = {
        "generate": {**kept, "bf16 weight copies": casts, **generate_terms(gen_questions, rows, max_new_tokens)},
        "weight pass": {**kept, "bf16 weight copies": casts, **wp},
        "gradient pass": {**kept, "gradients": grads_in_pass, **gp["terms"]},
        "optimizer step": {**kept, "gradients": grads, "optimizer step temporaries": opt_step},
    }
    if validation:
        val = generate_terms(val_questions, val_rows, val_max_new_tokens)
        phases["validation generate"] = {**kept, "bf16 weight copies": casts,
                                         **{("KV cache (validation)" if k == "KV cache" else k): v
                                            for k, v in val.items()}}
    kv_tok = kv_bytes_per_token(s, kv_cache_bytes or a)
    hf_tok = kv_bytes_per_token(s, kv_cache_bytes or ((FP32 + a) / 2 if a != FP32 else FP32))
    formulas = {
        "weights": f"{P / 1e6:.1f}M parameters x 4 B (fp32 master weights)",
        "optimizer state": "AdamW: 2 fp32 moments per parameter" if optimizer == "adamw" else "SGD: none",
        "decoding buffers": (f"fast decode, kept: {buf_rows} rows x {capacity} positions x {kv_tok / 1024:.1f} "
                             "KiB/token, + fp32 [rows, V] logits and noise"),
        "decoding twin weights": f"fast decode, kept: {counts['cast'] / 1e6:.1f}M Linear parameters x 2 B",
        "CUDA graph pool": "fast decode on CUDA, kept: one decoding step's temporaries at full width",
        "gradients": "fp32, one per parameter (gradient pass and optimizer step only)",
        "bf16 weight copies": f"{counts['cast'] / 1e6:.1f}M Linear parameters x 2 B (autocast cache)",
        "KV cache": (f"HF generate: {rows} rows x {prompt_tokens + max_new_tokens} tokens x {hf_tok / 1024:.1f} "
                     "KiB/token (fp32 keys)"),
        "generate workspace": ("prefill cache copy, or one decoding step's logits" if decode == "fast" else
                               "all rows' prefill, or the cache's growth and one step's logits"),
        "prompt keys/values": f"one {prompt_tokens}-token prompt, all layers (fp32 keys)",
        "forward workspace": (f"weight pass: one layer of {micro_batch} x {cont} tokens attending to {prompt_tokens + cont}"
                              if logprobs == "fast" else f"weight pass: one layer of {micro_batch} x {seq} tokens"),
        "logits [N, T, V]": f"plain log-probs: {micro_batch} x {seq} positions x {s.vocab} fp32 logits, 2 or 4 at once",
        "activations": (f"{micro_batch} x {cont} tokens + the {prompt_tokens}-token prompt, " if logprobs == "fast"
                        else f"{micro_batch} x {seq} tokens, ")
                       + ("layer inputs (checkpointing) + one layer recomputed" if grad_ckpt else "all layers"),
        "backward workspace": "gradients of one layer's attention or MLP",
        "log-prob chunk (forward)": f"{min(chunk_tokens(s.vocab), micro_batch * cont)} tokens x {s.vocab} logits",
        "log-prob chunk + [V, H] gradient (backward)": "the chunk's logit gradients + the fp32 output-layer gradient",
        "held gradients": "weight and prompt key/value gradients autograd holds until the prompt's backward",
        "embedding gradient": "dense fp32 [V, H], at the end of the backward",
        "optimizer step temporaries": "foreach AdamW: sqrt(v) per parameter" if optimizer == "adamw" else "none",
        "KV cache (validation)": f"HF generate: {val_rows} rows x {prompt_tokens + val_max_new_tokens} tokens",
    }
    terms = {}  # each term's largest value in any phase (and in any moment of the gradient pass)
    for phase in list(phases.values()) + list(gp["moments"].values()):
        for name, b in phase.items():
            terms[name] = (max(b, terms.get(name, (0, ""))[0]), formulas.get(name, ""))
    settings = dict(M=M, gen_questions=gen_questions, prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens,
                    micro_batch=micro_batch, seq_tokens=seq_tokens, grad_ckpt=grad_ckpt, precision=precision,
                    optimizer=optimizer, device=device, val_questions=val_questions, eval_n=eval_n,
                    val_max_new_tokens=val_max_new_tokens, kv_cache_bytes=kv_cache_bytes, decode=decode,
                    logprobs=logprobs, step_rows=step_rows)
    notes = [f"gradient pass peaks at the {gp['moment']}"]
    return Plan(settings=settings, config=config, shape=s, params=P, terms=terms, phases=phases, notes=notes)


# ------------------------------------------------------------------------------------------------ the device
def device_memory(device: str = "cuda") -> tuple[str, int]:
    """(name, bytes) of the memory a run can use: the GPU's total memory, or on a CPU the machine's RAM
    (the cgroup limit if a container sets a lower one)."""
    if device == "cuda":
        import torch
        props = torch.cuda.get_device_properties(0)
        return props.name, props.total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]:
        try:
            limit = open(path).read().strip()
        except OSError:
            continue
        if limit.isdigit():
            ram = min(ram, int(limit))
    return "CPU RAM", ram


def format_plan(plan: Plan, device_name: str, device_bytes: int) -> str:
    """The plan as two markdown tables (terms, then phases) against the device's memory."""
    st = plan.settings
    lines = [f"memory plan: {plan.shape.name} shape, {plan.params / 1e6:.1f}M parameters, "
             f"{'bf16 autocast over fp32 weights' if st['precision'] == 'bf16' else 'fp32'}, {st['optimizer']}, "
             f"gradient checkpointing {'on' if st['grad_ckpt'] else 'off'}, --decode {st['decode']}, "
             f"--logprobs {st['logprobs']}, {st['device']}",
             f"  generate: {st['gen_questions']} question(s) x M {st['M']} = {st['gen_questions'] * st['M']} rows of "
             f"{st['prompt_tokens']} prompt + {st['max_new_tokens']} new tokens; gradient pass: micro-batch "
             f"{st['micro_batch']} sequences of {st['seq_tokens'] or st['prompt_tokens'] + st['max_new_tokens']} tokens",
             "", "| term | GB | what |", "|---|---:|---|"]
    for name, (b, what) in plan.terms.items():
        if b:
            lines.append(f"| {name} | {b / GB:.2f} | {what} |")
    lines += ["(each term at its largest; a phase counts the terms alive together at its peak)", "",
              f"| phase | GB | of {device_name} ({device_bytes / GB:.1f} GB) |", "|---|---:|---:|"]
    for phase in plan.phases:
        b = plan.phase_bytes(phase)
        lines.append(f"| {phase} | {b / GB:.2f} | {b / device_bytes:.0%} |")
    lines.append(f"| **peak ({plan.peak_phase})** | **{plan.peak / GB:.2f}** | **{plan.peak / device_bytes:.0%}** |")
    lines += [f"({note})" for note in plan.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ does it fit
@dataclass
class Fit:
    ok: bool
    peak: int
    budget: int
    phase: str
    flag: str | None = None  # the train.py flag to change, when it does not fit
    message: str = ""




def check_fits(plan: Plan, device_bytes: int, headroom: float = HEADROOM) -> Fit:
    """Whether the plan's peak fits in headroom x device_bytes; if not, the flag to change and a value that fits.

    The flags are tried in the order that changes the method least, each only where it lowers the
    peak phase: --gen-batch and --eval-batch (questions per generate call, of training and of validation),
    --grad-ckpt, --logprobs fast, --micro-batch, --decode (the gradient does not depend on these), --eval-n
    (validation), then --M and --think-budget (the paper's values).

    >>> import models
    >>> plan = estimate(models.qwen3_0_6b_config(), M=32, gen_questions=4, prompt_tokens=1800,
    ...                 max_new_tokens=4097, micro_batch=4, grad_ckpt=True)
    >>> fit = check_fits(plan, 80 * 10**9)      # 4 questions per call: 98 GB at the generate phase
    >>> fit.ok, fit.flag, fit.message.split(": ")[-1]
    (False, '--gen-batch', 'lower --gen-batch to 2')
    """
    budget = int(headroom * device_bytes)
    st = plan.settings
    fit = Fit(ok=plan.peak <= budget, peak=plan.peak, budget=budget, phase=plan.peak_phase)
    if fit.ok:
        return fit

    def fits(**changes):
        return estimate(plan.config, **{**plan.settings, **changes}).peak <= budget

    need = f"{plan.peak_phase} needs {plan.peak / GB:.1f} GB, over {budget / GB:.1f} GB ({headroom:.0%} of the device)"
    phase = plan.peak_phase

    def think_cut(cut):  # the thinking budget is in every generate call's new tokens and in the sequences
        changes = {"max_new_tokens": st["max_new_tokens"] - cut}
        if st["seq_tokens"] is not None:
            changes["seq_tokens"] = st["seq_tokens"] - cut
        if st["val_max_new_tokens"]:
            changes["val_max_new_tokens"] = st["val_max_new_tokens"] - cut
        return changes

    # (flag, values from the least to the most change, the settings for a value, what to tell)
    candidates = []
    # Questions per call set the generate phases: train.py's --gen-batch for training's rollouts, --eval-batch
    # for validation's. With --decode fast they also size the buffers every phase keeps (the larger of the two
    # calls' rows), so then the larger one is tried first.
    kept_rows = st["decode"] == "fast"
    calls = [("--gen-batch", "gen_questions", "generate", st["gen_questions"] * st["M"]),
             ("--eval-batch", "val_questions", "validation generate", st["val_questions"] * st["eval_n"])]
    for flag, key, own_phase, _ in sorted(calls, key=lambda c: -c[3]) if kept_rows else calls:
        if st[key] > 1 and (kept_rows or phase == own_phase):
            candidates.append((flag, range(st[key] - 1, 0, -1), lambda v, key=key: {key: v}, f"lower {flag} to {{}}"))
    if phase == "gradient pass" and not st["grad_ckpt"]:
        candidates.append(("--grad-ckpt", [True], lambda v: {"grad_ckpt": v}, "pass --grad-ckpt"))
    if phase in ("gradient pass", "weight pass") and st["logprobs"] == "plain":  # the same numbers, chunked
        candidates.append(("--logprobs", ["fast"], lambda v: {"logprobs": v}, "pass --logprobs {}"))
    if phase in ("gradient pass", "weight pass") and st["micro_batch"] > 1:
        candidates.append(("--micro-batch", range(st["micro_batch"] - 1, 0, -1), lambda v: {"micro_batch": v},
                           "lower --micro-batch to {}"))
    # The same samples by another loop: the fast path's kept buffers weigh on every phase, generate's
    # cache (fp32 keys) on the generate phases only.
    other = {"fast": "generate", "generate": "fast"}[st["decode"]]
    candidates.append(("--decode", [other], lambda v: {"decode": v}, "pass --decode {}"))
    if (phase == "validation generate" or kept_rows) and st["eval_n"] > 1:
        candidates.append(("--eval-n", range(st["eval_n"] - 1, 0, -1), lambda v: {"eval_n": v}, "lower --eval-n to {}"))
    if (phase == "generate" or kept_rows) and st["M"] > 2:
        candidates.append(("--M", range(st["M"] - 1, 1, -1), lambda v: {"M": v}, "lower --M to {}"))
    candidates.append(("--think-budget", range(1, st["max_new_tokens"]), think_cut,
                       "lower --think-budget by {} tokens"))
    for flag, values, changes, say in candidates:
        values = list(values)
        # The plan grows monotonically with each setting, so the first value that fits is found by bisection.
        lo, hi = 0, len(values)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(**changes(values[mid])) else (mid + 1, hi)
        if lo < len(values):
            fit.flag, fit.message = flag, f"{need}: " + say.format(values[lo])
            return fit
    fit.flag = "--optimizer" if st["optimizer"] == "adamw" else None
    fit.message = (f"{need}; no single setting among --gen-batch, --eval-batch, --grad-ckpt, --micro-batch, --logprobs, --decode, "
                   "--eval-n, --M, --think-budget "
                   "makes it fit" + (" (--optimizer sgd drops AdamW's two moments)" if fit.flag else ""))
    return fit


# ------------------------------------------------------------------------------------------------ the paper's setup
def prompt_tokens_of(text: str) -> int:
    """Tokens of a prompt, estimated from its characters: no tokenizer (or its download) needed.

    Project choice: 3.5 characters per token. Qwen3's BPE averages ~4 on English text and numbers and
    SmolLM2's measures 4.03 on the FinQA sample, but the longest prompt runs denser (SmolLM2: 1,788 tokens
    for 6,794 characters, 3.8), and a memory plan should err high.

    >>> prompt_tokens_of("x" * 700)
    200
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def finqa_prompt_tokens(path: str = "samples/finqa_dev_sample.json") -> int:
    """The longest warm-start FinQA prompt of the shipped sample, in tokens (prompt_tokens_of)."""
    import data
    import models
    import prompts
    tok = models.build_tiny_tokenizer()  # only for its ChatML template: the prompt's text, not its tokens
    rows = data.load_examples("finqa", None, path)
    return max(prompt_tokens_of(prompts.build_prompt(tok, ex, "finqa", "warm")) for ex in rows)


THINK_CLOSE_TOKENS = 8  # plan_run counts "</think>" at its longest spelling (the byte-level tiny tokenizer's)
CHAT_TEMPLATE_TOKENS = 32  # plan_run: the chat template's tokens around the user turn


def plan_run(args, examples) -> tuple[str, "Fit"]:
    """The memory train.py's run will need, before any weights load: (the table, the fit against the device).

    args: train.py's parsed flags (model, task, start, M, B, gen_batch, think_budget, answer_budget,
    estimator, micro_batch, grad_ckpt, precision, optimizer, device, eval_batch, eval_n, decode,
    logprobs); examples: every question the run will see (training and validation), whose longest
    prompt sets the prompt length. The model's shape comes from its config alone (config_for: no
    download for the models the project knows), the prompt's tokens from its characters
    (prompt_tokens_of) plus the chat template's, and "</think>" counts 8 tokens, its longest spelling.
    GRPO's rollouts write answers too; validation always writes them (train.py validates after the
    last step at least). Raises models.ModelLoadError when --model's config cannot be read.

        table, fit = plan_run(args, train_examples + val_examples)
        print(table); print("fits" if fit.ok else f"does not fit: {fit.message}")
    """
    from prompts import user_message
    config = config_for(args.model)
    prompt = max(prompt_tokens_of(user_message(ex, args.task, args.start)) for ex in examples)
    prompt += CHAT_TEMPLATE_TOKENS
    think = args.think_budget + THINK_CLOSE_TOKENS
    plan = estimate(
        config, M=args.M, gen_questions=args.gen_batch or args.B, prompt_tokens=prompt,
        max_new_tokens=think + (args.answer_budget if verified(args.estimator) else 0),
        micro_batch=args.micro_batch,
        seq_tokens=prompt + think + args.answer_budget, grad_ckpt=args.grad_ckpt, precision=args.precision,
        optimizer=args.optimizer, device=args.device, val_questions=args.eval_batch, eval_n=args.eval_n,
        val_max_new_tokens=think + args.answer_budget, decode=getattr(args, "decode", "fast"),
        logprobs=getattr(args, "logprobs", "fast"), step_rows=args.B * args.M)
    name, total = device_memory(args.device)
    return format_plan(plan, name, total), check_fits(plan, total)


def main(argv=None):
    import models
    from presets import PAPER_THINK_BUDGETS, PRESETS  # every default below is train.py's paper preset
    p = argparse.ArgumentParser(description="Print the memory plan of the paper's setup (Qwen3-0.6B's shape, no "
                                "download) or of other settings, against this machine's memory.")
    a = p.add_argument
    paper = PRESETS["paper"]
    a("--M", type=int, default=paper["M"], help="rationales per question")
    a("--gen-batch", type=int, default=paper["gen_batch"], help="questions per generate call")
    a("--prompt-tokens", type=int, default=None,
      help="longest prompt (default: the longest FinQA prompt in samples/, characters / 4)")
    a("--think-budget", type=int, default=PAPER_THINK_BUDGETS["finqa"], help="thinking tokens (FinQA: 3968)")
    a("--answer-budget", type=int, default=paper["answer_budget"], help="answer tokens")
    a("--micro-batch", type=int, default=paper["micro_batch"], help="sequences per forward/backward")
    a("--eval-n", type=int, default=paper["eval_n"], help="validation samples per question (0: no validation phase)")
    a("--eval-batch", type=int, default=paper["eval_batch"], help="validation questions per generate call")
    a("--decode", choices=DECODE_PATHS, default=paper["decode"], help="rollouts: Hugging Face generate, or the fast path "
      "whose buffers stay allocated (train.py's paper preset: fast)")
    a("--logprobs", choices=LOGPROB_PATHS, default=paper["logprobs"], help="log-probs: plain (whole sequences, [N, T, V] "
      "logits) or fast (chunked, shared prompt; train.py's paper preset)")
    a("--precision", choices=sorted(DTYPE_BYTES), default=paper["precision"], help="bf16 autocast over fp32 weights, or fp32")
    a("--grad-ckpt", action=argparse.BooleanOptionalAction, default=paper["grad_ckpt"], help="gradient checkpointing")
    a("--optimizer", choices=["adamw", "sgd"], default="adamw", help="optimizer")
    a("--device-gb", type=float, default=None,
      help="device memory in GB (default: this machine's GPU, else its RAM)")
    args = p.parse_args(argv)
    prompt = args.prompt_tokens or finqa_prompt_tokens()
    close = 1  # "</think>" is one token in Qwen3's vocabulary
    plan = estimate(models.qwen3_0_6b_config(), M=args.M, gen_questions=args.gen_batch, prompt_tokens=prompt,
                    max_new_tokens=args.think_budget + close + args.answer_budget, micro_batch=args.micro_batch,
                    grad_ckpt=args.grad_ckpt, precision=args.precision, optimizer=args.optimizer,
                    device="cuda", val_questions=args.eval_batch if args.eval_n else 0, eval_n=args.eval_n,
                    val_max_new_tokens=args.think_budget + close + args.answer_budget, decode=args.decode,
                    logprobs=args.logprobs)
    if args.device_gb:
        name, total = "the device", int(args.device_gb * GB)
    else:
        import torch
        name, total = device_memory("cuda" if torch.cuda.is_available() else "cpu")
    print(format_plan(plan, name, total))
    fit = check_fits(plan, total)
    print("fits" if fit.ok else f"does not fit: {fit.message}")


if __name__ == "__main__":
    main()
