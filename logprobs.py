"""Score rollouts: logp_z and logp_y, the sequence-level log-probabilities the estimators take.

    sequence_logprobs(model, samples, special)    (logp_z, logp_y) [N], with gradient if enabled (gradient pass)
    log_weights(model, samples, special, mb)      log w = logp_y [N], no gradient (GARL/PAFT's weight pass)
    answer_token_logprobs(model, samples, special, mb)   logp_y token by token [N, T], no gradient (RLPR's)

For one sample   prompt | z | forced | y   (a rollout.Sample):
    logp_z = sum over z's tokens of log p(token | all tokens before it), EOS left out of the softmax
             (the sampler banned it inside the thinking block, see rollout.py)
    logp_y = sum over y's tokens (EOS included) of log p(token | all tokens before it)
Forced "</think>" tokens count in neither. Both are SUMS over tokens, as the paper's estimators need.
Worked example: prompt [p q], z [a b], forced [], y [c EOS]. The hidden state at position t-1
predicts the token at t, so
    logp_z = log p(a | p q) + log p(b | p q a)                  (softmaxes without EOS)
    logp_y = log p(c | p q a b) + log p(EOS | p q a b c)

Precision. Project choice (the paper does not say): under bf16 autocast (the GPU setting: fp32 master
weights, bf16 compute) the answer tokens go through the output layer in fp32. bf16 keeps 8 significant
bits: a logit between 16 and 64 is rounded by up to 0.06-0.125 (and the inputs of its dot product are
rounded too); log w sums such log-probs over the answer, and GARL/PAFT exponentiate it. The answer is a
few tokens per sample, so fp32 costs little there; the rationale (thousands of tokens per sample) stays
in the compute dtype. The weight pass and the gradient pass score y the same way, so the pathwise term's
gradient is the gradient of the log w that weighted it. This removes the output layer's rounding only:
the model's body still runs in bf16, and on SmolLM2 its rounding of log w is as large as the output
layer's (`python tests/test_logprobs.py` measures both).

This file is the plain computation, the definition: one forward over whole sequences, a log-softmax at
every position. It holds the logits of every position at once ([N, T, V], twice): fine for reading,
testing and the CPU runs, not for training at scale (one 4k-token sequence's fp32 logits at Qwen3's
151,936-token vocabulary take 2.5 GB). fast/logprobs.py has the same three functions, with the same
arguments and numbers (tested equal in tests/test_fast_logprobs.py), without ever holding [N, T, V] logits
and with each prompt computed once for all its samples; train.py chooses (--logprobs plain|fast), and
nothing here imports it.

    logp_z, logp_y = logprobs.sequence_logprobs(model, samples, special)        # the definition
    logp_z, logp_y = fast.logprobs.sequence_logprobs(model, samples, special)   # the same, at scale
"""
import torch
import torch.nn.functional as F

from rollout import Sample, SpecialTokens


def sequence_logprobs(model, samples: list[Sample], special: SpecialTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_z, logp_y), each [N]: every whole sequence through the model, log-softmax at every position.

    With gradient if it is enabled. Autocast or not, the rationale's logits come out of the output layer
    in the compute dtype, the answer's in fp32. special: the tokenizer's SpecialTokens (EOS, padding).

    >>> import models
    >>> tok = models.build_tiny_tokenizer(); model = models.build_tiny_model(tok)
    >>> s = Sample(prompt_ids=[1, 2, 3], z_ids=[4, 5], forced_ids=[], y_ids=[6, tok.eos_token_id])
    >>> logp_z, logp_y = sequence_logprobs(model, [s, s], SpecialTokens.of(tok))
    >>> logp_z.shape, bool(logp_z[0] < 0), bool(logp_y[0] == logp_y[1])
    (torch.Size([2]), True, True)
    """
    check_prompts(samples)
    hidden, targets = _forward(model, samples, special)  # [N, T-1, H], [N, T-1]: hidden[:, t-1] predicts token t
    lm_head = model.get_output_embeddings()
    eos = torch.tensor(special.eos_ids, device=targets.device)
    token_logp_z = _token_logprobs(hidden, targets, lm_head, banned=eos)  # [N, T-1], compute dtype
    token_logp_y = _token_logprobs(hidden, targets, lm_head, fp32=True)  # [N, T-1], fp32 output layer
    is_z, is_y = _z_and_y(samples, targets)  # [N, T-1] each: target t-1 is a z token, a y token
    # where, not a product with the mask: token_logp_z is -inf wherever the target is an EOS (y's last
    # token, padding), and -inf * 0 is nan.
    logp_z = torch.where(is_z, token_logp_z, 0.0).sum(1)  # [N]
    logp_y = torch.where(is_y, token_logp_y, 0.0).sum(1)  # [N]
    return logp_z, logp_y


@torch.no_grad()
def log_weights(model, samples: list[Sample], special: SpecialTokens, micro_batch: int) -> torch.Tensor:
    """log w = log p(y*|x, z) = logp_y for every sample [N], without gradient, in micro-batches.

    The samples go through sequence_logprobs micro_batch at a time, in order; logp_z is computed and
    dropped. (fast/logprobs.py's log_weights skips z and runs each prompt once: the same numbers.)
    Example: 10 samples, micro_batch 4 -> three forwards of 4, 4 and 2 sequences, log w [10].
    """
    check_prompts(samples)
    return torch.cat([sequence_logprobs(model, samples[i:i + micro_batch], special)[1]
                      for i in range(0, len(samples), micro_batch)])  # [N]


@torch.no_grad()
def answer_token_logprobs(model, samples: list[Sample], special: SpecialTokens,
                          micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logp_y token by token: (token_logp [N, T], mask [N, T]), without gradient, in micro-batches.

    token_logp[n, i] = log p(y_i | everything before it) for sample n's i-th answer token (EOS included),
    computed as sequence_logprobs computes logp_y (fp32 output layer), zero-padded on the right to the
    longest answer; mask is 1 on real tokens. Each row sums to log_weights' log w (to fp32 rounding).
    RLPR's reward needs the tokens one by one: a mean of their probabilities (related.rlpr_rewards).
    Worked example: answers [c EOS] and [EOS] -> token_logp [[log p(c|..), log p(EOS|..c)], [log p(EOS|..), 0]],
    mask [[1, 1], [1, 0]].

    >>> import models
    >>> tok = models.build_tiny_tokenizer(); model = models.build_tiny_model(tok); special = SpecialTokens.of(tok)
    >>> s1 = Sample(prompt_ids=[1, 2, 3], z_ids=[4, 5], forced_ids=[], y_ids=[6, tok.eos_token_id])
    >>> s2 = Sample(prompt_ids=[1, 2], z_ids=[4], forced_ids=[], y_ids=[tok.eos_token_id])
    >>> token_logp, mask = answer_token_logprobs(model, [s1, s2], special, micro_batch=1)
    >>> mask.tolist(), token_logp[1, 1].item()
    ([[1, 1], [1, 0]], 0.0)
    >>> torch.allclose(token_logp.sum(1), log_weights(model, [s1, s2], special, micro_batch=1))
    True
    """
    check_prompts(samples)
    lm_head = model.get_output_embeddings()
    rows = []  # [len(y_n)] per sample: its answer's log-probs, in order
    for i in range(0, len(samples), micro_batch):
        part = samples[i:i + micro_batch]
        hidden, targets = _forward(model, part, special)  # [n, T-1, H], [n, T-1]
        token_logp_y = _token_logprobs(hidden, targets, lm_head, fp32=True)  # [n, T-1], as sequence_logprobs
        _, is_y = _z_and_y(part, targets)  # [n, T-1]
        rows += [lp[y] for lp, y in zip(token_logp_y, is_y)]  # y's tokens are contiguous: [len(y_n)] each
    return pad_right(rows)  # [N, T] each


def pad_right(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths -> (values [N, T], mask [N, T]): zero-padded on the right, mask 1 on real entries.

    >>> pad_right([torch.tensor([-1.0, -2.0]), torch.tensor([-3.0])])
    (tensor([[-1., -2.],
            [-3.,  0.]]), tensor([[1, 1],
            [1, 0]]))
    """
    T = max(len(r) for r in rows)
    values = torch.stack([F.pad(r, (0, T - len(r))) for r in rows])  # [N, T]
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows], dtype=torch.long,
                        device=values.device)  # [N, T]
    return values, mask


def _forward(model, samples: list[Sample], special: SpecialTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Every whole sequence through the model, right-padded: (hidden [N, T-1, H], targets [N, T-1]).

    The hidden state at position t-1 predicts the token at t: hidden[:, t-1] goes with targets[:, t-1] =
    ids[:, t]. Right padding is masked and, being after every real token, never changes one (the
    attention is causal).
    """
    device = next(model.parameters()).device
    T = max(len(s.ids) for s in samples)
    ids = torch.tensor([s.ids + [special.pad_id] * (T - len(s.ids)) for s in samples], device=device)  # [N, T]
    mask = torch.tensor([[1] * len(s.ids) + [0] * (T - len(s.ids)) for s in samples], device=device)  # [N, T]
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, T, H]
    return hidden[:, :-1], ids[:, 1:]  # [N, T-1, H], [N, T-1]


def _z_and_y(samples: list[Sample], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_z, is_y), each [N, T-1] like targets: True where target t-1 is one of z's tokens, one of y's.
    Example: prompt [p q], z [a b], forced [], y [c EOS]: targets [q a b c EOS] -> is_z [0 1 1 0 0],
    is_y [0 0 0 1 1]."""
    is_z = torch.zeros(targets.shape, dtype=torch.bool, device=targets.device)  # [N, T-1]
    is_y = torch.zeros_like(is_z)  # [N, T-1]
    for n, s in enumerate(samples):
        z0 = len(s.prompt_ids)  # position of z's first token
        y0 = z0 + len(s.z_ids) + len(s.forced_ids)  # position of y's first token
        is_z[n, z0 - 1:z0 - 1 + len(s.z_ids)] = True
        is_y[n, y0 - 1:y0 - 1 + len(s.y_ids)] = True
    return is_z, is_y


def _token_logprobs(hidden: torch.Tensor, targets: torch.Tensor, lm_head, banned: torch.Tensor | None = None,
                    fp32: bool = False) -> torch.Tensor:
    """log p(target) (fp32) for hidden states [..., H] and targets [...], through the whole [..., V] logits.

    banned: token ids left out of the softmax. fp32: the output layer itself in fp32 (answer tokens,
    see answer_logits); otherwise in the compute dtype (bf16 under autocast), then fp32.
    """
    logits = answer_logits(lm_head, hidden) if fp32 else lm_head(hidden).float()  # [..., V]
    if banned is not None:
        logits = logits.index_fill(-1, banned, float("-inf"))
    return logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # [...]


def answer_logits(lm_head, hidden: torch.Tensor) -> torch.Tensor:
    """The output layer in fp32, autocast or not: hidden [..., H] -> logits [..., V], the answer's.

    Under autocast a linear layer runs in bf16 (inputs and output rounded to 8 significant bits);
    here autocast is off and the hidden state and weight are fp32 (the master weights already are).
    """
    with torch.autocast(hidden.device.type, enabled=False):
        bias = None if lm_head.bias is None else lm_head.bias.float()
        return F.linear(hidden.float(), lm_head.weight.float(), bias)


def check_prompts(samples: list[Sample]):
    """Refuse what cannot be scored: no samples, or a sample whose prompt is empty."""
    if not samples:
        raise ValueError("no samples to score")
    for i, s in enumerate(samples):
        if not s.prompt_ids:
            raise ValueError(f"sample {i} has an empty prompt: its first token would have nothing to be predicted from")
