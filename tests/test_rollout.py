"""Prompts, the decoding rule (thinking-budget forcing, sampling) and sequence log-probabilities, on the tiny
model built in code."""
import pytest
import torch
from transformers import DynamicCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

import models
import rollout
from prompts import THINK_CLOSE, build_prompt, gold_ids, gold_text, prompt_ids, user_message
from logprobs import log_weights, sequence_logprobs
from rollout import Rows, Rules, Sample, SpecialTokens, generate

EXAMPLE = {"id": "x", "question": "Which band recorded Counterparts?",
           "context": "Rush: Rush is a Canadian rock band.\n\nCounterparts: an album by Rush.", "answer": "Rush",
           "aliases": []}


def tiny(one_token_close=True, close_bias=0.0, eos_bias=0.0, pad_is_eos=False, seed=0):
    """Tiny model + tokenizer; optional logit biases towards "</think>" (one-token case) and EOS."""
    tok = models.build_tiny_tokenizer(one_token_close)
    if pad_is_eos:
        tok.pad_token = tok.eos_token  # as in SmolLM2: padding and the real EOS share an id
    model = models.build_tiny_model(tok, seed=seed)
    if close_bias or eos_bias:
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.data.copy_(model.lm_head.weight.data)
        head.bias.data.zero_()
        if close_bias:
            head.bias.data[tok.convert_tokens_to_ids(THINK_CLOSE)] = close_bias
        head.bias.data[tok.eos_token_id] = eos_bias
        model.lm_head = head
    return model, tok


def encoded_prompts(tok, examples=(EXAMPLE,), start="warm"):
    return [prompt_ids(tok, ex, "hotpotqa", start) for ex in examples]


def test_prompts_render_through_the_chat_template():
    _, tok = tiny()
    warm = build_prompt(tok, EXAMPLE, "hotpotqa", "warm")
    cold = build_prompt(tok, EXAMPLE, "hotpotqa", "cold")
    for text in (warm, cold):
        assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n<think>\n")
        assert EXAMPLE["question"] in text and "Canadian rock band" in text
    assert "Wikipedia paragraphs" in warm and "final answer only" in warm
    assert "Answer" not in cold and "Wikipedia" not in cold  # no task description, no format instruction
    assert gold_text("Rush") == "\n\nRush"
    with pytest.raises(ValueError, match="--start"):
        user_message(EXAMPLE, "hotpotqa", "lukewarm")


@pytest.mark.parametrize("one_token_close", [True, False])
def test_budget_forcing_closes_every_rationale(one_token_close):
    """A rationale either closed naturally within the budget, or got "</think>" forced at exactly the budget."""
    model, tok = tiny(one_token_close)
    tokens = SpecialTokens.of(tok)
    assert len(tokens.close_ids) == (1 if one_token_close else 8)
    torch.manual_seed(0)
    budget = 6
    for group in generate(model, encoded_prompts(tok, [EXAMPLE, dict(EXAMPLE, question="Who?")]), 4, tokens, budget):
        for s in group:
            assert s.y_ids == []
            assert s.forced  # a random model does not spell "</think>" by chance
            assert len(s.z_ids) == budget and s.forced_ids == tokens.close_ids
            assert tok.decode(s.z_ids + s.forced_ids).endswith(THINK_CLOSE)


def test_natural_close_is_kept_in_z_and_not_forced():
    model, tok = tiny(close_bias=8.0)
    tokens = SpecialTokens.of(tok)
    torch.manual_seed(0)
    samples = generate(model, encoded_prompts(tok), 8, tokens, think_budget=20)[0]
    natural = [s for s in samples if not s.forced]
    assert natural, "the biased model should close on its own"
    for s in natural:
        assert s.z_ids[-1] == tokens.close_ids[0] and s.forced_ids == [] and len(s.z_ids) <= 20


def test_the_step_rule_on_a_scripted_multi_token_close():
    """Drive `pick` by hand: natural close of a 3-token "</think>", EOS banned while thinking, then forcing."""
    close, eos, V = [5, 6, 7], 9, 10
    rules = Rules(close=torch.tensor(close), eos=torch.arange(V) == eos, pad=0, think_budget=5, answer_budget=0,
                  temperature=1.0, top_p=1.0)
    script = [[1, 5, 6, 7, 2, 2, 2, 2], [eos, 1, 1, 1, 1, 3, 3, 3]]  # what each row "wants" to sample
    rows = Rows(2, rules.max_new, "cpu").reset(rules.pad)
    for t in range(8):
        logits = torch.full((2, V), -5.0)
        logits[[0, 1], [script[0][t], script[1][t]]] = 5.0
        rollout.pick(rows, logits, torch.ones(2, V), rules)  # noise 1: the most likely token (the first on ties)
    assert rows.closed_at.tolist() == [4, 8]  # row 0 closed naturally after 4 tokens, row 1 forced at 5 + 3
    assert rows.tokens[0].tolist() == [1, 5, 6, 7, 0, 0, 0, 0]  # row 0: padding once done
    assert rows.tokens[1].tolist() == [0, 1, 1, 1, 1, 5, 6, 7]  # EOS banned while thinking (0 won the tie), forced
    assert rows.done.tolist() == [True, True] and int(rows.n) == 8


def test_answer_mode_stops_at_eos_or_the_answer_budget():
    close, eos, V = [5], 9, 10
    rules = Rules(close=torch.tensor(close), eos=torch.arange(V) == eos, pad=eos, think_budget=2, answer_budget=3,
                  temperature=1.0, top_p=1.0)
    script = [[1, 5, 2, eos, 2, 2], [1, 1, 2, 2, 2, 2]]  # row 0 closes, answers "2" and EOS; row 1 is forced
    rows = Rows(2, rules.max_new, "cpu").reset(rules.pad)
    for t in range(rules.max_new):
        logits = torch.full((2, V), -5.0)
        logits[[0, 1], [script[0][t], script[1][t]]] = 5.0
        rollout.pick(rows, logits, torch.ones(2, V), rules)
    assert rows.closed_at.tolist() == [2, 3]
    assert rows.tokens.tolist() == [[1, 5, 2, eos, eos, eos], [1, 1, 5, 2, 2, 2]]  # row 1: 3 answer tokens, no EOS
    samples = rollout.to_samples([[8], [8]], 1, rows, rules)
    assert samples[0][0].y_ids == [2, eos] and samples[1][0].y_ids == [2, 2, 2]
    assert samples[1][0].z_ids == [1, 1] and samples[1][0].forced_ids == [5]


def test_the_sampler_draws_what_torch_multinomial_draws():
    probs = torch.softmax(3 * torch.randn(6, 300), -1)
    torch.manual_seed(0)
    expected = torch.multinomial(probs, 1)[:, 0]
    torch.manual_seed(0)
    assert torch.equal(rollout.sample(probs, torch.empty(6, 300).exponential_()), expected)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 0.95), (1.3, 0.5)])
def test_temperature_and_top_p_are_transformers_warpers(temperature, top_p):
    logits = 4 * torch.randn(5, 300)
    expected = TemperatureLogitsWarper(temperature)(None, logits)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    torch.testing.assert_close(rollout.warp(logits, temperature, top_p), expected, rtol=0, atol=0)


def test_answers_end_at_the_real_eos_even_when_pad_is_eos():
    model, tok = tiny(eos_bias=6.0, pad_is_eos=True)
    tokens = SpecialTokens.of(tok)
    assert tokens.pad_id == tok.eos_token_id
    torch.manual_seed(0)
    samples = generate(model, encoded_prompts(tok), 4, tokens, think_budget=5, answer_budget=6)[0]
    for s in samples:
        assert tok.eos_token_id not in s.z_ids  # banned inside the thinking block
        assert s.y_ids and s.y_ids[-1] == tok.eos_token_id and s.y_ids.count(tok.eos_token_id) == 1


def with_gold(tok, samples, answer="Rush"):
    y = gold_ids(tok, answer)
    for s in samples:
        s.y_ids = y
    return samples


def test_logp_matches_a_hand_computed_sum_and_padding_changes_nothing():
    model, tok = tiny()
    tokens = SpecialTokens.of(tok)
    torch.manual_seed(1)
    groups = generate(model, encoded_prompts(tok, [EXAMPLE, dict(EXAMPLE, context="short")]), 3, tokens, 7)
    samples = with_gold(tok, [s for g in groups for s in g])
    logp_z, logp_y = sequence_logprobs(model, samples, tokens)  # batched: padded to the longest sequence
    for n, s in enumerate(samples):
        ids = torch.tensor([s.ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()  # [T, V]  one unpadded sequence
        z0, y0 = len(s.prompt_ids), len(s.prompt_ids) + len(s.z_ids) + len(s.forced_ids)
        banned = logits.clone()
        banned[:, tokens.eos_ids] = float("-inf")  # the rationale's sampler never sees EOS
        hand_z = sum(torch.log_softmax(banned[t - 1], -1)[s.ids[t]] for t in range(z0, z0 + len(s.z_ids)))
        hand_y = sum(torch.log_softmax(logits[t - 1], -1)[s.ids[t]] for t in range(y0, len(s.ids)))
        assert logp_z[n].item() == pytest.approx(hand_z.item(), abs=1e-4)
        assert logp_y[n].item() == pytest.approx(hand_y.item(), abs=1e-4)
        alone = sequence_logprobs(model, [s], tokens)
        assert alone[0].item() == pytest.approx(logp_z[n].item(), abs=1e-5)
        assert alone[1].item() == pytest.approx(logp_y[n].item(), abs=1e-5)


def test_gradient_path_and_weight_pass_agree():
    model, tok = tiny()
    tokens = SpecialTokens.of(tok)
    torch.manual_seed(2)
    samples = with_gold(tok, generate(model, encoded_prompts(tok), 5, tokens, 9)[0])
    log_w = log_weights(model, samples, tokens, micro_batch=2)  # [N], no gradient
    _, logp_y = sequence_logprobs(model, samples, tokens)  # with gradient
    assert logp_y.requires_grad and not log_w.requires_grad
    torch.testing.assert_close(log_w, logp_y.detach(), atol=1e-5, rtol=0)
    logp_y.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_forced_tokens_count_in_neither_logp():
    model, tok = tiny()
    tokens = SpecialTokens.of(tok)
    s = Sample(prompt_ids=[1, 2, 3], z_ids=[4, 5], forced_ids=tokens.close_ids, y_ids=[6, tok.eos_token_id])
    bare = Sample(prompt_ids=[1, 2, 3], z_ids=[4, 5], forced_ids=[], y_ids=[])
    logp_z, _ = sequence_logprobs(model, [s, bare], tokens)
    assert logp_z[0].item() == pytest.approx(logp_z[1].item(), abs=1e-6)  # same z tokens, same prefix


@pytest.mark.parametrize("kwargs,flag", [(dict(think_budget=0), "think-budget"),
                                         (dict(answer_budget=0), "answer-budget"),
                                         (dict(temperature=0.0), "temperature"), (dict(top_p=1.5), "top-p")])
def test_bad_sampling_options_are_refused(kwargs, flag):
    model, tok = tiny()
    args = dict(think_budget=4) | kwargs
    with pytest.raises(ValueError, match=flag):
        generate(model, encoded_prompts(tok), 2, SpecialTokens.of(tok), **args)


@pytest.mark.parametrize("fast", [True, False])
def test_generation_config_never_leaks_into_rollouts(fast):
    """transformers' generate fills unset sampling options from model.generation_config; our loop reads none."""
    model, tok = tiny()
    leaky, _ = tiny()
    leaky.generation_config.update(do_sample=False, temperature=0.05, top_k=2, top_p=0.3, min_p=0.5,
                                   repetition_penalty=5.0, no_repeat_ngram_size=1, max_new_tokens=2)
    tokens, prompts = SpecialTokens.of(tok), encoded_prompts(tok, [EXAMPLE, dict(EXAMPLE, question="Who?")])
    out = []
    for m in (model, leaky):
        torch.manual_seed(4)
        out.append([[s.ids for s in g] for g in generate(m, prompts, 3, tokens, 12, answer_budget=5, fast=fast)])
    assert out[0] == out[1]
    assert any(len(set(ids)) < len(ids) for g in out[0] for ids in g)  # repeated tokens: no repetition penalty


def test_the_sampler_log_probs_are_what_logprobs_scores():
    """On-policy: the log-probability each token was drawn with (temperature 1) is what sequence_logprobs
    sums, for rationale tokens (EOS banned) and the model's own answer tokens alike."""
    model, tok = tiny(eos_bias=3.0)
    tokens, prompts = SpecialTokens.of(tok), encoded_prompts(tok, [EXAMPLE, dict(EXAMPLE, context="short")])
    rules = Rules.of(model, tokens, 10, 6, 1.0, 1.0)
    torch.manual_seed(5)
    rows = rollout.decode_fast(model, prompts, 3, rules)
    logp = rows.logp[:, :rules.max_new].clone()  # [R, T]
    samples = [s for g in rollout.to_samples(prompts, 3, rows, rules) for s in g]
    logp_z, logp_y = sequence_logprobs(model, samples, tokens)
    for r, s in enumerate(samples):
        z, f, y = len(s.z_ids), len(s.forced_ids), len(s.y_ids)
        assert logp_z[r].item() == pytest.approx(logp[r, :z].sum().item(), abs=1e-4)
        assert logp_y[r].item() == pytest.approx(logp[r, z + f:z + f + y].sum().item(), abs=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_only_the_last_position_goes_through_the_output_layer(fast):
    model, tok = tiny()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape[:-1])))
    generate(model, encoded_prompts(tok, [EXAMPLE, dict(EXAMPLE, context="short")]), 3, SpecialTokens.of(tok), 4, 2, fast=fast)
    hook.remove()
    assert seen and all(shape[1] == 1 for shape in seen)  # [rows, 1]: never [rows, prompt_len, V] logits


def test_the_fast_path_keeps_its_cache_in_the_compute_dtype():
    """Under bf16 autocast over fp32 weights, Qwen3's k_norm (an fp32 weight) promotes keys to fp32: transformers'
    cache holds fp32 keys next to bf16 values. The fast path stores both in bf16 (attention casts them to bf16
    anyway), and its linear layers read bf16 copies of the fp32 master weights, which stay untouched."""
    model, tok = tiny()
    master = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([encoded_prompts(tok)[0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model(input_ids=ids, use_cache=True).cache
        assert (cache.layers[0].keys.dtype, cache.layers[0].values.dtype) == (torch.float32, torch.bfloat16)
        generate(model, encoded_prompts(tok), 2, SpecialTokens.of(tok), 4)
    dec = rollout._DECODERS[model]
    assert {(l.keys.dtype, l.values.dtype) for l in dec.cache.layers} == {(torch.bfloat16, torch.bfloat16)}
    assert dec.twin.lm_head.weight.dtype == dec.twin.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert dec.twin.model.embed_tokens.weight is model.model.embed_tokens.weight  # shared, fp32
    assert dec.twin.model.norm.weight is model.model.norm.weight
    assert all(v.dtype == torch.float32 and torch.equal(v, master[k]) for k, v in model.state_dict().items())
    assert model.config._attn_implementation == "sdpa"  # the twin's decode attention is the twin's only
    with torch.no_grad():  # a changed master weight reaches the twin on the next call
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        generate(model, encoded_prompts(tok), 2, SpecialTokens.of(tok), 4)
    torch.testing.assert_close(dec.twin.model.layers[0].mlp.up_proj.weight,
                               model.model.layers[0].mlp.up_proj.weight.bfloat16(), rtol=0, atol=0)
