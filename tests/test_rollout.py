"""Prompts, the decoding rule (thinking-budget forcing, sampling) and sequence log-probabilities, on the tiny
model built in code."""
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import models
import rollout
from prompts import THINK_CLOSE, build_prompt, gold_ids, gold_text, prompt_ids, user_message
from logprobs import log_weights, sequence_logprobs
from fast import decode as fast_decode
from fast.decode import DecodingState, SamplingRule, choose_next_token, sample
from rollout import Sample, SpecialTokens, generate

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


def fresh_state(R, width, pad):
    z = lambda *shape, dtype=torch.long: torch.zeros(*shape, dtype=dtype)
    return DecodingState(z(R, width), z(R, width, dtype=torch.float), z(R), z(R, dtype=torch.bool), z(())).reset(pad)


def test_the_step_rule_on_a_scripted_multi_token_close():
    """Drive the fast path's step rule by hand: natural close of a 3-token "</think>", EOS banned while
    thinking, then forcing."""
    tokens = SpecialTokens(close_ids=[5, 6, 7], eos_ids=[9], pad_id=0)
    eos, V = 9, 10
    rules = SamplingRule.of(tokens, V, "cpu", think_budget=5)
    script = [[1, 5, 6, 7, 2, 2, 2, 2], [eos, 1, 1, 1, 1, 3, 3, 3]]  # what each row "wants" to sample
    rows = fresh_state(2, rules.max_new, rules.pad)
    for t in range(8):
        logits = torch.full((2, V), -5.0)
        logits[[0, 1], [script[0][t], script[1][t]]] = 5.0
        choose_next_token(rows, logits, torch.ones(2, V), rules)  # noise 1: the most likely token (first on ties)
    assert rows.closed_at.tolist() == [4, 8]  # row 0 closed naturally after 4 tokens, row 1 forced at 5 + 3
    assert rows.tokens[0].tolist() == [1, 5, 6, 7, 0, 0, 0, 0]  # row 0: padding once done
    assert rows.tokens[1].tolist() == [0, 1, 1, 1, 1, 5, 6, 7]  # EOS banned while thinking (0 won the tie), forced
    assert rows.done.tolist() == [True, True] and int(rows.n) == 8


def test_answer_mode_stops_at_eos_or_the_answer_budget():
    tokens = SpecialTokens(close_ids=[5], eos_ids=[9], pad_id=9)
    eos, V = 9, 10
    rules = SamplingRule.of(tokens, V, "cpu", think_budget=2, answer_budget=3)
    script = [[1, 5, 2, eos, 2, 2], [1, 1, 2, 2, 2, 2]]  # row 0 closes, answers "2" and EOS; row 1 is forced
    rows = fresh_state(2, rules.max_new, rules.pad)
    for t in range(rules.max_new):
        logits = torch.full((2, V), -5.0)
        logits[[0, 1], [script[0][t], script[1][t]]] = 5.0
        choose_next_token(rows, logits, torch.ones(2, V), rules)
    assert rows.closed_at.tolist() == [2, 3]
    assert rows.tokens.tolist() == [[1, 5, 2, eos, eos, eos], [1, 1, 5, 2, 2, 2]]  # row 1: 3 answer tokens, no EOS
    assert rollout.rationale_closed_at(rows.tokens, torch.tensor([5])).tolist() == [2, 3]  # generate's reading
    samples = rollout.to_samples([[8], [8]], 1, rows.tokens, tokens, 2, 3)
    assert samples[0][0].y_ids == [2, eos] and samples[1][0].y_ids == [2, 2, 2]
    assert samples[1][0].z_ids == [1, 1] and samples[1][0].forced_ids == [5]


def test_the_sampler_draws_what_torch_multinomial_draws():
    probs = torch.softmax(3 * torch.randn(6, 300), -1)
    torch.manual_seed(0)
    expected = torch.multinomial(probs, 1)[:, 0]
    torch.manual_seed(0)
    assert torch.equal(sample(probs, torch.empty(6, 300).exponential_()), expected)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.6, 20, 0.95), (1.3, 0, 0.5), (1.0, 3, 1.0)])
def test_the_warpers_are_transformers_own_in_generates_order(temperature, top_k, top_p):
    """sampling_warpers: HF's warpers, temperature -> top-k -> top-p (as generate orders them); none when neutral."""
    warpers = rollout.sampling_warpers(temperature, top_k, top_p)
    expected = [w for w, on in [(TemperatureLogitsWarper, temperature != 1), (TopKLogitsWarper, top_k > 0),
                                (TopPLogitsWarper, top_p < 1)] if on]
    assert [type(w) for w in warpers] == expected
    logits = 4 * torch.randn(5, 300)
    reference = logits / temperature
    if top_k:
        reference = reference.masked_fill(reference < reference.topk(top_k).values[:, -1:], float("-inf"))
    if top_p < 1:
        reference = TopPLogitsWarper(top_p)(None, reference)
    torch.testing.assert_close(warpers(None, logits), reference, rtol=0, atol=0)


def test_the_thinking_block_rule_bans_eos_then_forces_the_close():
    """The rule acts on the scores before any warper: EOS -inf on thinking rows; at the budget, only "</think>"."""
    scores = torch.zeros(3, 10)
    thinking = torch.tensor([True, True, False])
    out = rollout.thinking_block_rule(scores, thinking, 1, [5, 6], [9], think_budget=2)  # before the budget
    assert torch.isinf(out[:2, 9]).all() and torch.isfinite(out[2]).all() and torch.isfinite(out[:2, :9]).all()
    out = rollout.thinking_block_rule(scores, thinking, 3, [5, 6], [9], think_budget=2)  # second forced token
    assert out[:2].argmax(-1).tolist() == [6, 6] and torch.isinf(out[:2]).sum().item() == 2 * 9
    assert torch.isfinite(out[2]).all()  # a closed row samples freely (its answer)
    assert torch.equal(scores, torch.zeros(3, 10))  # the caller's scores are left as they were


@pytest.mark.parametrize("close", [[5], [5, 6, 7]])
def test_the_compiled_steps_branch_free_rule_is_the_reference_rule(close):
    """fast/decode.py's thinking_block_rule (n a 0-dim tensor, no branch: what a compiled step needs) gives
    rollout.thinking_block_rule's scores, at every step from the first to past the forced close, on rows
    thinking and closed, with EOS tokens inside and outside the close's spelling."""
    torch.manual_seed(0)
    V, eos_ids, budget = 12, [9, 11], 3
    eos = torch.zeros(V, dtype=torch.bool)
    eos[eos_ids] = True
    for n in range(budget + len(close) + 2):
        scores = torch.randn(4, V)  # [R, V]
        thinking = torch.tensor([True, False, True, n % 2 == 0])  # [R]
        reference = rollout.thinking_block_rule(scores, thinking, n, close, eos_ids, budget)
        branch_free = fast_decode.thinking_block_rule(scores, thinking, torch.tensor(n), torch.tensor(close), eos, budget)
        assert torch.equal(branch_free, reference), n


def test_default_sampling_is_untruncated_and_top_k_is_applied_as_transformers_applies_it():
    """On-policy training (the defaults): tokens outside the top-20 are drawn. top_k=20 (evaluation): only
    tokens inside each step's top-20 of the (EOS-banned) scores, checked against the model's own logits."""
    model, tok = tiny()
    tokens, prompts = SpecialTokens.of(tok), encoded_prompts(tok)
    ranks = {}
    for top_k in [0, 20]:
        torch.manual_seed(0)
        samples = generate(model, prompts, 8, tokens, think_budget=12, top_k=top_k)[0]
        ranks[top_k] = []
        for s in samples:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([s.ids])).logits[0]  # [T, V]
            logits[:, tokens.eos_ids] = float("-inf")
            z0 = len(s.prompt_ids)
            for t in range(z0, z0 + len(s.z_ids)):
                ranks[top_k].append(int((logits[t - 1] > logits[t - 1, s.ids[t]]).sum()))  # 0: the most likely
    assert max(ranks[0]) >= 20  # no truncation by default
    assert max(ranks[20]) < 20


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
                                         (dict(temperature=0.0), "temperature"), (dict(top_p=1.5), "top-p"),
                                         (dict(top_k=-1), "top-k")])
def test_bad_sampling_options_are_refused(kwargs, flag):
    model, tok = tiny()
    args = dict(think_budget=4) | kwargs
    with pytest.raises(ValueError, match=flag):
        generate(model, encoded_prompts(tok), 2, SpecialTokens.of(tok), **args)


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.6, top_p=0.95, top_k=20)])
def test_generation_config_never_leaks_into_rollouts(options):
    """transformers' generate fills unset sampling options from model.generation_config; ours reads none:
    a model whose generation config sets foreign options draws what a clean one draws, and generate's
    effective logits-processor list is exactly ours (the thinking block's rule, then HF's warpers)."""
    model, tok = tiny()
    leaky, _ = tiny()
    leaky.generation_config.update(do_sample=False, temperature=0.05, top_k=2, top_p=0.3, min_p=0.5,
                                   repetition_penalty=5.0, no_repeat_ngram_size=1, max_new_tokens=2,
                                   suppress_tokens=[40, 41], cache_implementation="static")
    tokens, prompts = SpecialTokens.of(tok), encoded_prompts(tok, [EXAMPLE, dict(EXAMPLE, question="Who?")])
    effective = []
    prepare = leaky._get_logits_processor
    leaky._get_logits_processor = lambda *a, **k: effective.append(prepare(*a, **k)) or effective[-1]
    out = []
    for m in (model, leaky):
        torch.manual_seed(4)
        out.append([[s.ids for s in g] for g in generate(m, prompts, 3, tokens, 12, answer_budget=5, **options)])
    assert out[0] == out[1]
    assert any(len(set(ids)) < len(ids) for g in out[0] for ids in g)  # repeated tokens: no repetition penalty
    expected = [rollout.ThinkingBlockRules] + [type(w) for w in rollout.sampling_warpers(
        options.get("temperature", 1.0), options.get("top_k", 0), options.get("top_p", 1.0))]
    assert [type(p) for p in effective[0]] == expected
    assert leaky.generation_config.repetition_penalty == 5.0  # the model's own config is left as it was


@pytest.mark.parametrize("decode", ["generate", "fast"])
def test_only_the_last_position_goes_through_the_output_layer(decode):
    model, tok = tiny()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape[:-1])))
    run = fast_decode.generate if decode == "fast" else generate
    run(model, encoded_prompts(tok, [EXAMPLE, dict(EXAMPLE, context="short")]), 3, SpecialTokens.of(tok), 4, 2)
    hook.remove()
    assert seen and all(shape[1] == 1 for shape in seen)  # [rows, 1]: never [rows, prompt_len, V] logits


def test_the_reference_imports_no_layer_above_it():
    """The caller chooses: rollout.py and logprobs.py import nothing from fast/ or scale/, and no module of fast/
    or scale/ imports train.py (read from their source, so that a lazy import inside a function counts too)."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent

    def imported(path):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        return names

    for core in ["rollout.py", "logprobs.py", "qlog.py", "garl.py", "paft.py", "grpo.py", "presets.py"]:
        assert not {n for n in imported(root / core) if n.split(".")[0] in ("fast", "scale", "train", "experiments")}, core
    for layer in sorted((root / "fast").glob("*.py")) + sorted((root / "scale").glob("*.py")):
        assert not {n for n in imported(layer) if n.split(".")[0] in ("train", "experiments")}, layer.name
