"""Every speed-up keeps the numbers: each optimized path against the plain one, on the tiny model.

    fast decoding   rollout.decode_fast (shared prefill, static bf16-able cache, packed attention over the
                    filled part, compiled step) against the plain loop rollout.decode: the same tokens under
                    a fixed seed, log-probs to 1e-5 (fp32), no recompilation for new buffer sizes
    shared prompt   sequence_logprobs' and log_weights' shared prompt: same log-probs, same gradients as
                    recomputing it
    PAFT            the gradient pass over distinct resampled sequences, weighted by their counts,
                    equals the plain sum over the K resampled indices
    chunked         chunked log-probs (values and gradients) equal the full-vocabulary ones
and a smoke run of bench.py.

The compiled step is checked with the "aot_eager" backend (dynamo's one-graph capture and functionalization,
in seconds); with inductor's kernels (what CUDA runs) only when ROLLOUT_TEST_INDUCTOR=1, since compiling takes
about a minute on a 2-core CPU.
"""
import json
import os

import pytest
import torch

from experiments import bench
import logprobs
import models
import rollout
import train
from logprobs import log_weights, sequence_logprobs
from paft import paft_coefficients, paft_resample
from prompts import THINK_CLOSE, gold_ids, prompt_ids
from rollout import Rules, SpecialTokens, generate

EXAMPLE = {"question": "Which band recorded Counterparts?", "context": "Rush is a Canadian rock band. " * 3,
           "answer": "Rush", "aliases": []}


@pytest.fixture(scope="module")
def tiny():
    tok = models.build_tiny_tokenizer()
    return models.build_tiny_model(tok, seed=3), tok


def two_prompts(tok):
    """Two questions with prompts of different lengths (so left padding is exercised)."""
    return [prompt_ids(tok, ex, "hotpotqa", "warm") for ex in [EXAMPLE, dict(EXAMPLE, context="short")]]


def rollouts(model, tok, M=3, budget=12, seed=0):
    """Rollouts of two_prompts, gold answers set."""
    torch.manual_seed(seed)
    groups = generate(model, two_prompts(tok), M, SpecialTokens.of(tok), budget)
    gold = gold_ids(tok, "Rush")
    for g in groups:
        for s in g:
            s.y_ids = gold
    return groups


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


# ------------------------------------------------------------------------------------------------ fast decoding
def biased_tiny(one_token_close=True, close_bias=0.0, eos_bias=0.0, pad_is_eos=False):
    """A tiny model whose output layer leans towards "</think>" and EOS, so that rows close and end on their own."""
    tok = models.build_tiny_tokenizer(one_token_close)
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    model = models.build_tiny_model(tok, seed=1)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    head.bias.data[tok(THINK_CLOSE, add_special_tokens=False).input_ids[0]] = close_bias
    head.bias.data[tok.eos_token_id] = eos_bias
    model.lm_head = head
    return model, tok


def plain_and_fast(model, tok, M, think_budget, answer_budget, seed=5, **fast):
    """rollout.decode and rollout.decode_fast from the same seed: (tokens, logp, closed_at) of each, and
    the random-number generator's next draw after each (the same noise was consumed)."""
    rules = Rules.of(model, SpecialTokens.of(tok), think_budget, answer_budget, 1.0, 1.0)
    out = []
    for decode in [rollout.decode, lambda *a: rollout.decode_fast(*a, **fast)]:
        torch.manual_seed(seed)
        rows = decode(model, two_prompts(tok), M, rules)
        out.append((rows.tokens[:, :rules.max_new].clone(), rows.logp[:, :rules.max_new].clone(),
                    rows.closed_at.clone(), torch.rand(1)))
    return out


CASES = {  # (model options, M, think budget, answer budget)
    "rationale (GARL/PAFT)": (dict(), 3, 12, None),
    "rationale + answer (GRPO, evaluation)": (dict(), 3, 12, 4),
    "8-token </think>": (dict(one_token_close=False), 2, 10, 3),
    "natural closes and EOS, pad is EOS": (dict(close_bias=4.0, eos_bias=4.0, pad_is_eos=True), 4, 14, 6),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_decoding_samples_the_plain_loops_tokens(case):
    options, M, budget, answer = CASES[case]
    model, tok = biased_tiny(**options)
    (tokens, logp, closed, rng), (f_tokens, f_logp, f_closed, f_rng) = plain_and_fast(model, tok, M, budget, answer,
                                                                                     bucket=8)
    assert torch.equal(f_tokens, tokens) and torch.equal(f_closed, closed) and torch.equal(f_rng, rng)
    torch.testing.assert_close(f_logp, logp, atol=1e-5, rtol=0)
    if options.get("close_bias"):
        assert (closed < budget).any() and (closed == budget + 1).any()  # natural closes and forced ones


def test_fast_decoding_under_bf16_autocast():
    """When attention reads exactly the filled positions (bucket=1) the two paths are bitwise equal under bf16
    autocast: the twin's bf16 weights, the bf16 cache, the shared prefill and the packed attention compute what
    autocast computes. With a wider, masked read (bucket=8) attention's kernel splits its reduction differently
    and bf16 rounds each layer's output: the same tokens, log-probs within a bf16 rounding step of the logits
    (measured: at most 7.6e-3 over 25 runs, one row per prompt or three; in fp32 1e-6, tested to 1e-5 above)."""
    model, tok = biased_tiny(close_bias=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for M, bucket in [(3, 1), (3, 8)]:
            (tokens, logp, closed, _), (f_tokens, f_logp, f_closed, _) = plain_and_fast(model, tok, M, 12, 4,
                                                                                       bucket=bucket)
            assert torch.equal(f_tokens, tokens) and torch.equal(f_closed, closed)
            torch.testing.assert_close(f_logp, logp, atol=0 if bucket == 1 else 1.6e-2, rtol=0)


def test_compiled_step_is_one_graph_with_the_plain_loops_tokens():
    """The step compiles to one graph (fullgraph), samples the plain loop's tokens, and is not recompiled for
    new buffer sizes (more rows, a longer prompt): at the paper's scale a recompilation costs a minute."""
    model, tok = biased_tiny(close_bias=2.0)
    (tokens, logp, closed, rng), (f_tokens, f_logp, f_closed, f_rng) = plain_and_fast(
        model, tok, 3, 10, 4, compile="aot_eager", bucket=8)
    assert torch.equal(f_tokens, tokens) and torch.equal(f_closed, closed) and torch.equal(f_rng, rng)
    torch.testing.assert_close(f_logp, logp, atol=1e-5, rtol=0)
    rules = Rules.of(model, SpecialTokens.of(tok), 10, 4, 1.0, 1.0)
    longer = [prompt_ids(tok, dict(EXAMPLE, context=EXAMPLE["context"] * 4), "hotpotqa", "warm")] + two_prompts(tok)
    with torch._dynamo.config.patch(error_on_recompile=True):
        rollout.decode_fast(model, longer, 2, rules, compile="aot_eager", bucket=8)
    rollout.release(model)


@pytest.mark.skipif(os.environ.get("ROLLOUT_TEST_INDUCTOR") != "1",
                    reason="inductor compilation takes about a minute on a 2-core CPU: ROLLOUT_TEST_INDUCTOR=1 runs it")
def test_inductor_compiled_step_matches_the_plain_loop():
    """inductor's fused kernels round differently from eager ones: measured log-prob differences 5e-7 (fp32)."""
    model, tok = biased_tiny(close_bias=2.0)
    (tokens, logp, closed, _), (f_tokens, f_logp, f_closed, _) = plain_and_fast(model, tok, 3, 10, 4, compile=True,
                                                                                bucket=8)
    assert torch.equal(f_tokens, tokens) and torch.equal(f_closed, closed)
    torch.testing.assert_close(f_logp, logp, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ log-probs
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
    tokens = SpecialTokens.of(tok)
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
    plain = log_weights(model, samples, SpecialTokens.of(tok), micro_batch=2, share_prompt=False)
    for micro_batch in [1, 3, 8]:
        torch.testing.assert_close(log_weights(model, samples, SpecialTokens.of(tok), micro_batch), plain, atol=1e-5, rtol=0)


def test_paft_distinct_sequences_weighted_by_count_equal_the_plain_sum(tiny):
    """train.gradient_pass on PAFT's count coefficients (zero-count sequences skipped, the prompt shared)
    gives the gradient of Algorithm 2's plain sum over the K resampled indices, duplicates included."""
    model, tok = tiny
    groups = rollouts(model, tok, M=4)
    tokens, q, B, M = SpecialTokens.of(tok), 0.5, len(groups), 4
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
        assert tokens["generate"][1] * 2 == tokens["generate"][0]  # the prompt's prefill is shared by the M = 2 rows
    decode = saved["decode"]
    assert set(decode["paths"]) == {"plain", "fast"} and decode["paths"]["fast"]["same_tokens_as_plain"] == 1
    assert decode["bound"]["row_tokens_per_s"] > 0 and decode["bound"]["steps"] == 4 + 1
