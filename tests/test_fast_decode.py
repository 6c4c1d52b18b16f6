"""The fast decoding path (fast/decode.py) against the reference, rollout.generate (Hugging Face's generate),
on the tiny model in fp32 on the CPU:

    same draws     the same tokens under a fixed seed, and the same number of random draws (the generator's
                   next number after each path is the same): several prompts of different lengths, M > 1,
                   rationale only and answer mode, 1-token and 8-token "</think>", temperature/top-k/top-p
    log-probs      the per-token log-probs it records equal logprobs.py's plain computation
    kept buffers   one buffer set across calls of different prompt lengths and row counts (the same data_ptr),
                   and no compilation after the first call of each mode (training-shaped, validation-shaped)
    bf16           under bf16 autocast: a bf16 cache, bf16 twin weights, fp32 masters untouched

The compiled step is checked with the "aot_eager" backend (dynamo's one-graph capture and functionalization,
in seconds); with inductor's kernels (what CUDA runs) only when ROLLOUT_TEST_INDUCTOR=1, since compiling takes
about a minute on a 2-core CPU.
"""
import os

import pytest
import torch

import logprobs
import models
import rollout
from fast import decode as fast
from prompts import THINK_CLOSE, prompt_ids
from rollout import SpecialTokens

EXAMPLE = {"question": "Which band recorded Counterparts?", "context": "Rush is a Canadian rock band. " * 3,
           "answer": "Rush", "aliases": []}


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


def three_prompts(tok, n=3):
    """Questions with prompts of different lengths (so left padding is exercised)."""
    contexts = [EXAMPLE["context"], "short", EXAMPLE["context"] * 2]
    return [prompt_ids(tok, dict(EXAMPLE, context=c), "hotpotqa", "warm") for c in contexts[:n]]


def reference_and_fast(model, tok, prompts, M, think_budget, answer_budget=None, seed=5, **options):
    """rollout.generate and fast.decode_fast from the same seed: (generated tokens [R, n], the generator's next
    draw) of each, and what decode_fast recorded."""
    sampling = {k: options.pop(k) for k in ["temperature", "top_p", "top_k"] if k in options}
    tokens = SpecialTokens.of(tok)
    torch.manual_seed(seed)
    groups = rollout.generate(model, prompts, M, tokens, think_budget, answer_budget, **sampling)
    reference = ([[s.ids for s in g] for g in groups], torch.rand(1))
    torch.manual_seed(seed)
    decoded = fast.decode_fast(model, prompts, M, tokens, think_budget, answer_budget, **sampling, **options)
    after = torch.rand(1)
    groups = rollout.to_samples(prompts, M, decoded.tokens, tokens, think_budget, answer_budget)
    return reference, ([[s.ids for s in g] for g in groups], after), decoded, groups


CASES = {  # (model options, prompts, M, think budget, answer budget, sampling)
    "rationale (GARL/PAFT)": (dict(), 3, 3, 12, None, dict()),
    "rationale + answer (GRPO)": (dict(), 2, 3, 12, 4, dict()),
    "evaluation: T 0.6, top-p 0.95, top-k 20": (dict(close_bias=1.0, eos_bias=3.0), 3, 4, 12, 6,
                                                dict(temperature=0.6, top_p=0.95, top_k=20)),
    "T 1.3, top-k 5": (dict(), 2, 2, 10, 3, dict(temperature=1.3, top_k=5)),
    "8-token </think>": (dict(one_token_close=False), 2, 2, 10, 3, dict()),
    "natural closes and EOS, pad is EOS": (dict(close_bias=4.0, eos_bias=4.0, pad_is_eos=True), 3, 4, 14, 6, dict()),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_decoding_draws_generates_tokens(case):
    options, n_prompts, M, budget, answer, sampling = CASES[case]
    model, tok = biased_tiny(**options)
    (ids, rng), (f_ids, f_rng), decoded, groups = reference_and_fast(model, tok, three_prompts(tok, n_prompts), M,
                                                                     budget, answer, bucket=8, **sampling)
    assert f_ids == ids and torch.equal(f_rng, rng)  # the same tokens, and the same number of random draws
    if options.get("close_bias"):
        forced = [s.forced for g in groups for s in g]
        assert any(forced) and not all(forced)  # natural closes and forced ones
    fast.release(model)


@pytest.mark.parametrize("answer", [None, 5])
def test_recorded_log_probs_are_the_plain_computations(answer):
    """On-policy: the log-probability each token was drawn with (temperature 1, EOS banned while thinking) is what
    logprobs.py's plain function sums, for rationale tokens and the model's own answer tokens alike."""
    model, tok = biased_tiny(close_bias=2.0, eos_bias=3.0)
    tokens, prompts = SpecialTokens.of(tok), three_prompts(tok)
    torch.manual_seed(5)
    decoded = fast.decode_fast(model, prompts, 3, tokens, 10, answer, bucket=8)
    logp = decoded.logp.clone()  # [R, T]
    samples = [s for g in rollout.to_samples(prompts, 3, decoded.tokens, tokens, 10, answer) for s in g]
    with torch.no_grad():
        logp_z, logp_y = logprobs.sequence_logprobs(model, samples, tokens)
    for r, s in enumerate(samples):
        z, f, y = len(s.z_ids), len(s.forced_ids), len(s.y_ids)
        assert logp_z[r].item() == pytest.approx(logp[r, :z].sum().item(), abs=1e-4)
        assert logp_y[r].item() == pytest.approx(logp[r, z + f:z + f + y].sum().item(), abs=1e-4)
    assert answer is None or any(s.y_ids for s in samples)
    fast.release(model)


def test_fast_decoding_under_bf16_autocast():
    """When attention reads exactly the filled positions (bucket=1) the fast path draws the reference's tokens
    under bf16 autocast too: the twin's bf16 weights, the bf16 cache, the shared prefill and the packed attention
    compute what autocast computes."""
    model, tok = biased_tiny(close_bias=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (ids, _), (f_ids, _), _, _ = reference_and_fast(model, tok, three_prompts(tok, 2), 3, 12, 4, bucket=1)
    assert f_ids == ids
    fast.release(model)


def test_the_fast_path_keeps_its_cache_in_the_compute_dtype():
    """Under bf16 autocast over fp32 weights, Qwen3's k_norm (an fp32 weight) promotes keys to fp32: transformers'
    cache holds fp32 keys next to bf16 values. The fast path stores both in bf16 (attention casts them to bf16
    anyway), and its linear layers read bf16 copies of the fp32 master weights, which stay untouched."""
    model, tok = biased_tiny()
    master = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = three_prompts(tok, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model(input_ids=torch.tensor(prompts), use_cache=True).cache
        assert (cache.layers[0].keys.dtype, cache.layers[0].values.dtype) == (torch.float32, torch.bfloat16)
        fast.generate(model, prompts, 2, SpecialTokens.of(tok), 4)
    assert fast.kv_cache_dtypes(model) == {"keys": "torch.bfloat16", "values": "torch.bfloat16"}
    dec = fast.decoder_of(model)
    assert dec.twin.lm_head.weight.dtype == dec.twin.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert dec.twin.model.embed_tokens.weight is model.model.embed_tokens.weight  # shared, fp32
    assert dec.twin.model.norm.weight is model.model.norm.weight
    assert all(v.dtype == torch.float32 and torch.equal(v, master[k]) for k, v in model.state_dict().items())
    assert model.config._attn_implementation == "sdpa"  # the twin's decode attention is the twin's only
    with torch.no_grad():  # a changed master weight reaches the twin on the next call
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast.generate(model, prompts, 2, SpecialTokens.of(tok), 4)
    torch.testing.assert_close(dec.twin.model.layers[0].mlp.up_proj.weight,
                               model.model.layers[0].mlp.up_proj.weight.bfloat16(), rtol=0, atol=0)
    fast.release(model)
    assert fast.decoder_of(model) is None


def buffer_addresses(model) -> list[int]:
    kept = fast.decoder_of(model).kept
    return [t.data_ptr() for name, t in kept.items() if name not in ("keys", "values")] + \
        [t.data_ptr() for t in kept["keys"] + kept["values"]]


def test_kept_buffers_and_no_recompilation_across_training_and_validation_calls():
    """Issue 17: buffers reserved once for buffer_shape=(rows, positions) and shared by training-shaped calls
    (think-only, T 1) and validation-shaped ones (answer mode, T 0.6 / top-p 0.95 / top-k 20), of different prompt
    lengths and row counts: the same data_ptr throughout, and no compilation after the first call of each mode.
    Every call still draws the reference's tokens."""
    model, tok = biased_tiny(close_bias=2.0, eos_bias=2.0)
    tokens = SpecialTokens.of(tok)
    compilations = []

    def counting_backend(gm, example_inputs):  # aot_eager, counting every graph dynamo hands it
        compilations.append(len(gm.graph.nodes))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    train = dict(M=3, think_budget=10, answer_budget=None)
    val = dict(M=4, think_budget=10, answer_budget=4, temperature=0.6, top_p=0.95, top_k=20)
    calls = [("train", three_prompts(tok, 2), train), ("val", three_prompts(tok, 1), val),
             ("train", three_prompts(tok, 3)[::-1], train), ("val", three_prompts(tok, 2)[1:], val),
             ("train", three_prompts(tok, 1), train), ("val", three_prompts(tok, 3)[2:], val)]
    plan = (3 * 3, max(map(len, three_prompts(tok))) + 10 + 1 + 4)  # the largest call: rows, positions
    first_calls, compiled_by, addresses = set(), {}, []
    torch._dynamo.reset()
    for i, (mode, prompts, kw) in enumerate(calls):
        kw = dict(kw)
        M, budget, answer = kw.pop("M"), kw.pop("think_budget"), kw.pop("answer_budget")
        torch.manual_seed(i)
        reference = [[s.ids for s in g] for g in rollout.generate(model, prompts, M, tokens, budget, answer, **kw)]
        torch.manual_seed(i)
        before = len(compilations)
        decoded = fast.decode_fast(model, prompts, M, tokens, budget, answer, **kw, buffer_shape=plan,
                                   compile=counting_backend, bucket=8)
        drawn = [[s.ids for s in g] for g in rollout.to_samples(prompts, M, decoded.tokens, tokens, budget, answer)]
        assert drawn == reference, f"call {i} ({mode})"
        if mode in first_calls:
            assert len(compilations) == before, f"call {i} ({mode}) compiled again"
        else:
            first_calls.add(mode)
            compiled_by[mode] = len(compilations) - before
        addresses.append(buffer_addresses(model))
    assert compiled_by["train"] >= 1 and compiled_by["val"] >= 1  # the counting backend saw the step compile
    assert all(a == addresses[0] for a in addresses)  # never re-allocated
    dec = fast.decoder_of(model)
    assert dec.rows == plan[0] and dec.positions == -(-plan[1] // 8) * 8
    fast.release(model)


def test_buffers_grow_only_and_warn_when_the_plan_is_exceeded(capsys):
    model, tok = biased_tiny()
    tokens = SpecialTokens.of(tok)
    fast.decode_fast(model, three_prompts(tok, 1), 2, tokens, 4, bucket=8)  # no plan: sized by the call
    small = (fast.decoder_of(model).rows, fast.decoder_of(model).positions)
    fast.decode_fast(model, three_prompts(tok, 2), 3, tokens, 4, bucket=8)
    dec = fast.decoder_of(model)
    assert small[0] == 2 and (dec.rows, dec.positions) > small and capsys.readouterr().out == ""
    grown = buffer_addresses(model)
    fast.decode_fast(model, three_prompts(tok, 1), 2, tokens, 4, bucket=8)  # smaller: the kept buffers serve it
    assert buffer_addresses(model) == grown
    fast.release(model)
    fast.decode_fast(model, three_prompts(tok, 1), 2, tokens, 4, buffer_shape=(2, 8), bucket=8)  # plan too small
    assert "more than the 2 x 8 planned" in capsys.readouterr().out
    fast.release(model)


def test_compiled_step_is_one_graph_with_generates_tokens():
    """The step compiles to one graph (fullgraph) and draws generate's tokens."""
    model, tok = biased_tiny(close_bias=2.0)
    (ids, rng), (f_ids, f_rng), decoded, groups = reference_and_fast(
        model, tok, three_prompts(tok), 3, 10, 4, temperature=0.8, top_k=30, top_p=0.9, compile="aot_eager", bucket=8)
    assert f_ids == ids and torch.equal(f_rng, rng)
    fast.release(model)


@pytest.mark.skipif(os.environ.get("ROLLOUT_TEST_INDUCTOR") != "1",
                    reason="inductor compilation takes about a minute on a 2-core CPU: ROLLOUT_TEST_INDUCTOR=1 runs it")
def test_inductor_compiled_step_matches_generate():
    """inductor's fused kernels round differently from eager ones: tokens equal, log-probs to 1e-5 (fp32)."""
    model, tok = biased_tiny(close_bias=2.0)
    tokens, prompts = SpecialTokens.of(tok), three_prompts(tok, 2)
    (ids, _), (f_ids, _), decoded, _ = reference_and_fast(model, tok, prompts, 3, 10, 4, compile=True, bucket=8)
    assert f_ids == ids
    logp = decoded.logp.clone()
    torch.manual_seed(5)
    eager = fast.decode_fast(model, prompts, 3, tokens, 10, 4, compile=False, bucket=8)
    torch.testing.assert_close(logp, eager.logp, atol=1e-5, rtol=0)
    fast.release(model)
