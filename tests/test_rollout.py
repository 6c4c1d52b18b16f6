"""Prompts, thinking-budget forcing and sequence log-probabilities, on the tiny model built in code."""
import pytest
import torch

import models
from prompts import THINK_CLOSE, build_prompt, gold_ids, gold_text, prompt_ids, user_message
from logprobs import log_weights, sequence_logprobs
from rollout import BudgetState, ForceThinkingBudget, Sample, StopAfterThinking, Tokens, generate

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
    tokens = Tokens.of(tok)
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
    tokens = Tokens.of(tok)
    torch.manual_seed(0)
    samples = generate(model, encoded_prompts(tok), 8, tokens, think_budget=20)[0]
    natural = [s for s in samples if not s.forced]
    assert natural, "the biased model should close on its own"
    for s in natural:
        assert s.z_ids[-1] == tokens.close_ids[0] and s.forced_ids == [] and len(s.z_ids) <= 20


def test_budget_state_on_a_scripted_multi_token_close():
    """Drive the processor and stopping criterion by hand: natural close of a 3-token "</think>" and forcing."""
    close, eos, V = [5, 6, 7], 9, 10
    tokens = Tokens(close_ids=close, eos_ids=[eos], pad_id=0)
    state = BudgetState(rows=2, prompt_len=1, budget=5, tokens=tokens, answer_budget=None, device="cpu")
    proc, stop = ForceThinkingBudget(state), StopAfterThinking(state)
    script = [[1, 5, 6, 7, 2, 2, 2, 2, 2], [eos, 1, 1, 1, 1, 3, 3, 3, 3]]  # what each row "wants" to sample
    ids = torch.tensor([[1], [1]])
    for t in range(8):
        scores = torch.full((2, V), -5.0)
        scores[[0, 1], [script[0][t], script[1][t]]] = 5.0
        scores = proc(ids, scores)
        ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
        done = stop(ids, scores)
    assert state.closed_at.tolist() == [4, 8]  # row 0 closed naturally after 4 tokens, row 1 forced at 5 + 3
    assert ids[1, 1:].tolist() == [0, 1, 1, 1, 1, 5, 6, 7]  # EOS banned while thinking (id 0 won the tie), then forced
    assert done.tolist() == [True, True]


def test_answers_end_at_the_real_eos_even_when_pad_is_eos():
    model, tok = tiny(eos_bias=6.0, pad_is_eos=True)
    tokens = Tokens.of(tok)
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
    tokens = Tokens.of(tok)
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
    tokens = Tokens.of(tok)
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
    tokens = Tokens.of(tok)
    s = Sample(prompt_ids=[1, 2, 3], z_ids=[4, 5], forced_ids=tokens.close_ids, y_ids=[6, tok.eos_token_id])
    bare = Sample(prompt_ids=[1, 2, 3], z_ids=[4, 5], forced_ids=[], y_ids=[])
    logp_z, _ = sequence_logprobs(model, [s, bare], tokens)
    assert logp_z[0].item() == pytest.approx(logp_z[1].item(), abs=1e-6)  # same z tokens, same prefix


def test_think_budget_must_be_positive():
    model, tok = tiny()
    with pytest.raises(ValueError, match="think-budget"):
        generate(model, encoded_prompts(tok), 2, Tokens.of(tok), 0)
