"""Every speed-up keeps the numbers: each optimized path against the plain one, on the tiny model.

    shared prompt   generate's shared prefill and growing cache, sequence_logprobs' and log_weights'
                    shared prompt: same tokens, same log-probs, same gradients as recomputing it
    PAFT            the gradient pass over distinct resampled sequences, weighted by their counts,
                    equals the plain sum over the K resampled indices
    chunked         chunked log-probs (values and gradients) equal the full-vocabulary ones
and a smoke run of bench.py.
"""
import json

import pytest
import torch
from transformers import DynamicCache

from experiments import bench
import logprobs
import models
import rollout
import train
from logprobs import log_weights, sequence_logprobs
from paft import paft_coefficients, paft_resample
from prompts import gold_ids, prompt_ids
from rollout import Tokens, generate

EXAMPLE = {"question": "Which band recorded Counterparts?", "context": "Rush is a Canadian rock band. " * 3,
           "answer": "Rush", "aliases": []}


@pytest.fixture(scope="module")
def tiny():
    tok = models.build_tiny_tokenizer()
    return models.build_tiny_model(tok, seed=3), tok


def rollouts(model, tok, M=3, budget=12, seed=0, shared=True):
    """Two questions with prompts of different lengths (so left padding is exercised), gold answers set."""
    prompts = [prompt_ids(tok, ex, "hotpotqa", "warm")
               for ex in [EXAMPLE, dict(EXAMPLE, context="short")]]
    torch.manual_seed(seed)
    groups = generate(model, prompts, M, Tokens.of(tok), budget, shared_prefill=shared)
    gold = gold_ids(tok, "Rush")
    for g in groups:
        for s in g:
            s.y_ids = gold
    return groups


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_shared_prefill_samples_the_same_tokens(tiny):
    model, tok = tiny
    for answer in [None, 4]:  # rationale only (GARL/PAFT) and rationale + answer (GRPO, evaluation)
        prompts = [s.prompt_ids for s in (g[0] for g in rollouts(model, tok))]
        torch.manual_seed(5)
        shared = generate(model, prompts, 3, Tokens.of(tok), 12, answer, shared_prefill=True)
        torch.manual_seed(5)
        plain = generate(model, prompts, 3, Tokens.of(tok), 12, answer, shared_prefill=False)
        assert [[s.ids for s in g] for g in shared] == [[s.ids for s in g] for g in plain]


def test_growing_cache_gives_the_full_forward_logits(tiny):
    model, tok = tiny
    ids = torch.randint(0, 250, (1, 20))  # [1, T]
    with torch.no_grad():
        full = model(input_ids=ids).logits  # [1, T, V]
        cache = model(input_ids=ids[:, :8], use_cache=True).cache  # the prompt: 8 tokens
        cache.layers = [rollout._GrowingLayer(l.keys, l.values, 2, 8 + 6) for l in cache.layers]  # room for 6 of 12
        for t in range(8, 20):  # one token at a time, past the buffer's room (it grows)
            step = model(input_ids=ids[:, t:t + 1].expand(2, 1), cache=cache, use_cache=True).logits  # [2, 1, V]
            torch.testing.assert_close(step[:, 0], full[:, t].expand(2, -1), atol=1e-5, rtol=1e-5)
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 20


def logprobs_and_grads(model, samples, tokens, share, checkpointing=None):
    """Log-probs and the gradient of a fixed weighted sum of them, under optional gradient checkpointing."""
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": checkpointing == "reentrant"})
    model.train()
    model.zero_grad()
    logp_z, logp_y = sequence_logprobs(model, samples, tokens, share_prompt=share)  # [N] each
    weights = torch.linspace(-1, 2, len(samples))
    (weights * logp_z - 2 * weights * logp_y).sum().backward()
    model.eval()
    if checkpointing:
        model.activation_checkpointing_disable()
    return logp_z.detach(), logp_y.detach(), grads(model)


@pytest.mark.parametrize("checkpointing", [None, "non-reentrant", "reentrant"])
def test_shared_prompt_logprobs_and_gradients_equal_the_plain_path(tiny, checkpointing):
    model, tok = tiny
    groups = rollouts(model, tok)
    samples = [s for g in groups for s in g]
    samples[1].y_ids = []  # a sample with nothing after its rationale, and one with no rationale at all
    samples[2].z_ids, samples[2].forced_ids = [], []
    tokens = Tokens.of(tok)
    plain = logprobs_and_grads(model, samples, tokens, share=False)
    shared = logprobs_and_grads(model, samples, tokens, share=True, checkpointing=checkpointing)
    for a, b in zip(shared, plain):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    # That each prompt ran once is checked in test_logprobs.py (test_shared_path_runs_each_prompt_once).


def test_shared_weight_pass_equals_the_plain_one_in_the_samples_order(tiny):
    model, tok = tiny
    groups = rollouts(model, tok, M=4)
    samples = [groups[0][0], groups[1][0], groups[0][1], groups[1][1], groups[0][2], groups[1][2]]  # interleaved
    samples[3].z_ids = samples[3].z_ids[:3]  # different lengths within a prompt
    plain = log_weights(model, samples, Tokens.of(tok), micro_batch=2, share_prompt=False)
    for micro_batch in [1, 3, 8]:
        torch.testing.assert_close(log_weights(model, samples, Tokens.of(tok), micro_batch), plain, atol=1e-5, rtol=0)


def test_paft_distinct_sequences_weighted_by_count_equal_the_plain_sum(tiny):
    """train.gradient_pass on PAFT's count coefficients (zero-count sequences skipped, the prompt shared)
    gives the gradient of Algorithm 2's plain sum over the K resampled indices, duplicates included."""
    model, tok = tiny
    groups = rollouts(model, tok, M=4)
    tokens, q, B, M = Tokens.of(tok), 0.5, len(groups), 4
    log_w = log_weights(model, [s for g in groups for s in g], tokens, micro_batch=4).view(B, M).double()
    log_w = log_w - log_w.max() + 0.5 * torch.arange(M)  # spread the weights, so resampling repeats and skips
    coef = paft_coefficients(log_w, q, generator=torch.Generator().manual_seed(7)).float()  # [B, M]
    counts = paft_resample(log_w, M, torch.Generator().manual_seed(7))  # [B, M], the same draws
    assert (counts == 0).any() and (counts > 1).any()

    model.zero_grad()
    train.gradient_pass(model, groups, coef, coef, tokens, micro_batch=3)
    dedup = grads(model)

    model.zero_grad()
    model.train()
    w_bar = log_w.exp().mean(-1)  # [B]
    for b, g in enumerate(groups):
        resampled = [s for m, s in enumerate(g) for _ in range(int(counts[b, m]))]  # K sequences, repeats included
        logp_z, logp_y = sequence_logprobs(model, resampled, tokens, share_prompt=False)
        scale = (w_bar[b] ** (1 - q) / (M ** q * M)).float()  # w_bar^(1-q) / (M^q K), K = M
        (-(scale * (logp_z + logp_y)).sum() / B).backward()
    model.eval()
    torch.testing.assert_close(dedup, grads(model), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_logprobs_equal_the_full_vocabulary_ones(bias, chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=bias)
    hidden = torch.randn(40, 16, requires_grad=True)  # [n, H]
    banned = torch.tensor([3, 7])
    targets = torch.randint(8, 300, (40,))  # never a banned id
    coef = torch.randn(40)
    params = [hidden] + list(head.parameters())
    full = logprobs._token_logprobs(hidden, targets, head, banned)  # [n] through the whole [n, V] logits
    chunked = logprobs.chunked_token_logprobs(hidden, targets, head, banned, chunk_tokens=chunk)
    torch.testing.assert_close(chunked, full)
    for g_full, g_chunked in zip(torch.autograd.grad((coef * full).sum(), params),
                                 torch.autograd.grad((coef * chunked).sum(), params)):
        torch.testing.assert_close(g_chunked, g_full, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(logprobs.chunked_token_logprobs(hidden, targets, head, banned, chunk), full.detach())


def test_bench_smoke(tmp_path):
    result = bench.main(["--model", "tiny", "--no-trl", "--repeats", "1", "--M", "2", "--think-budget", "4",
                         "--prompt-tokens", "40", "--answer-tokens", "4", "--micro-batch", "2",
                         "--logprob-tokens", "64", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved["summary"]) == {"grpo", "garl", "paft"}
    assert saved["targets"] == json.loads(json.dumps(result["targets"]))
    assert saved["logprob_memory"]["max_grad_diff"] < 1e-5
    for est in ["grpo", "garl", "paft"]:
        tokens = saved["targets"][f"{est} prompt tokens per step (plain -> shared)"]
        assert tokens["generate"][1] < tokens["generate"][0]  # the prompt's prefill is shared by the M samples
