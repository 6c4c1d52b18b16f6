"""logprobs.py: the plain computation, the definition (fast/logprobs.py is tested equal to it in
tests/test_fast_logprobs.py).

    by hand         sequence_logprobs equals a hand-computed per-token sum
    weight pass     log_weights is logp_y, in micro-batches, in the samples' order, without gradient
    per token       answer_token_logprobs is logp_y token by token (by hand), zero-padded; its rows sum to log w
    fp32 answers    under bf16 autocast the answer tokens go through the output layer in fp32; the
                    rationale stays in bf16
    edge cases      empty z, empty y, nothing after the prompt, an empty prompt

All on the tiny model, in seconds. `python tests/test_logprobs.py` (SmolLM2, minutes) prints how far
log w under bf16 autocast is from a full-fp32 log w, with the answer scored in fp32 and in bf16.
"""
import argparse
import doctest
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library, when run as a script

import logprobs
import models
from logprobs import answer_token_logprobs, log_weights, sequence_logprobs
from prompts import gold_ids, prompt_ids
from rollout import Sample, SpecialTokens, generate

EXAMPLE = {"question": "Which band recorded Counterparts?", "context": "Rush is a Canadian rock band.",
           "answer": "Rush", "aliases": []}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small run fastest on one thread; on a busy machine two threads spin-wait (~50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    tok = models.build_tiny_tokenizer()
    return models.build_tiny_model(tok, seed=3), tok


def rollouts(model, tok, M=3, budget=12, seed=0):
    """M samples for each of two prompts of different lengths, the gold answer attached; flattened.
    Sample 1 has no answer, sample 2 no rationale (and nothing forced); the rest were forced to close."""
    prompts = [prompt_ids(tok, ex, "hotpotqa", "cold") for ex in [EXAMPLE, dict(EXAMPLE, context="short")]]
    torch.manual_seed(seed)
    samples = [s for g in generate(model, prompts, M, SpecialTokens.of(tok), budget) for s in g]
    for s in samples:
        s.y_ids = gold_ids(tok, "Rush")
    samples[1].y_ids = []
    samples[2].z_ids, samples[2].forced_ids = [], []
    return samples


def answers_of_different_lengths(model, tok):
    """rollouts(M=4) with answers of four lengths (one empty), the two prompts' samples interleaved."""
    samples = rollouts(model, tok, M=4)
    samples[3].y_ids = gold_ids(tok, "R")
    samples[5].y_ids = gold_ids(tok, "Rush, a Canadian band")
    return samples[::2] + samples[1::2]


# ------------------------------------------------------------------------------------------------ by hand
def test_plain_path_is_the_sum_of_token_logprobs_computed_by_hand(tiny):
    model, tok = tiny
    tokens = SpecialTokens.of(tok)
    samples = rollouts(model, tok)
    with torch.no_grad():
        logp_z, logp_y = sequence_logprobs(model, samples, tokens)  # batched, right-padded
    for n, s in enumerate(samples):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s.ids])).logits[0].double()  # [T, V], one unpadded sequence
        banned = logits.clone()
        banned[:, tokens.eos_ids] = float("-inf")  # the rationale's sampler never sees EOS
        z0 = len(s.prompt_ids)
        y0 = z0 + len(s.z_ids) + len(s.forced_ids)
        hand_z = sum(torch.log_softmax(banned[t - 1], -1)[s.ids[t]].item() for t in range(z0, z0 + len(s.z_ids)))
        hand_y = sum(torch.log_softmax(logits[t - 1], -1)[s.ids[t]].item() for t in range(y0, len(s.ids)))
        assert logp_z[n].item() == pytest.approx(hand_z, abs=1e-4)
        assert logp_y[n].item() == pytest.approx(hand_y, abs=1e-4)
    assert logp_y[1] == 0 and logp_z[2] == 0  # no answer, no rationale
    assert doctest.testmod(logprobs).failed == 0


def test_weight_pass_is_logp_y_in_micro_batches_in_the_samples_order(tiny):
    model, tok = tiny
    tokens = SpecialTokens.of(tok)
    samples = rollouts(model, tok, M=4)
    samples = samples[::2] + samples[1::2]  # the two prompts' samples interleaved
    samples[3].z_ids = samples[3].z_ids[:3]  # different lengths within a prompt
    with torch.no_grad():
        _, logp_y = sequence_logprobs(model, samples, tokens)  # one batch, padded to the longest
    for micro_batch in [1, 3, 8]:
        log_w = log_weights(model, samples, tokens, micro_batch)
        assert not log_w.requires_grad
        torch.testing.assert_close(log_w, logp_y, atol=1e-5, rtol=0)  # padding changes no real token


def test_answer_token_logprobs_are_logp_y_token_by_token(tiny):
    """Row n holds sample n's answer tokens' log-probs (computed by hand), zero-padded on the right, mask 1 on them;
    the rows sum to log_weights' log w (the same micro-batches, so the same numbers, summed in another order)."""
    model, tok = tiny
    tokens = SpecialTokens.of(tok)
    samples = answers_of_different_lengths(model, tok)
    lengths = [len(s.y_ids) for s in samples]
    T = max(lengths)
    assert len(set(lengths)) == 4 and 0 in lengths
    for micro_batch in [1, 3, 8]:
        token_logp, mask = answer_token_logprobs(model, samples, tokens, micro_batch)
        assert token_logp.shape == mask.shape == (len(samples), T) and not token_logp.requires_grad
        assert mask.tolist() == [[1] * n + [0] * (T - n) for n in lengths]
        assert (token_logp[mask == 0] == 0).all() and (token_logp[mask == 1] < 0).all()
        log_w = log_weights(model, samples, tokens, micro_batch)  # [N]
        torch.testing.assert_close(token_logp.sum(1), log_w, atol=1e-6, rtol=1e-6)  # to fp32 rounding (sums to -133)
    for n, s in enumerate(samples):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s.ids])).logits[0].double()  # [T, V], one unpadded sequence
        y0 = len(s.ids) - len(s.y_ids)  # y is last: prompt | z | forced | y
        hand = [torch.log_softmax(logits[t - 1], -1)[s.ids[t]].item() for t in range(y0, len(s.ids))]
        assert token_logp[n, :len(hand)].tolist() == pytest.approx(hand, abs=1e-5)


# ------------------------------------------------------------------------------------------------ fp32 answers
def output_layer_only_model(tok):
    """The tiny model with every layer's output projections zeroed (each layer adds exactly 0) and an
    output layer of its own (untied), whose logits spread by ~7 as SmolLM2's do (Qwen3's are larger).
    Under bf16 autocast its only rounded computation is the output layer, what fp32 answer scoring removes."""
    model = models.build_tiny_model(tok, seed=3)
    H = model.config.hidden_size
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.lm_head.weight = torch.nn.Parameter(torch.randn(len(tok), H) * 7 / H ** 0.5)  # the hidden state's rms is 1
    return model


def bf16_scored_answers(model, samples, tokens, body_in_fp32=False):
    """logp_y with the answer tokens scored as the rationale's are: the output layer in bf16 (what
    log w would be without fp32 answer scoring). Under autocast; body_in_fp32 runs the model's body
    (everything before the output layer) without it, leaving the output layer's rounding alone."""
    T = max(len(s.ids) for s in samples)
    ids = torch.tensor([s.ids + [tokens.pad_id] * (T - len(s.ids)) for s in samples])  # [N, T]
    mask = torch.tensor([[1] * len(s.ids) + [0] * (T - len(s.ids)) for s in samples])  # [N, T]
    out = []
    with torch.no_grad():
        with torch.autocast("cpu", enabled=not body_in_fp32):
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, T, H]
        for n, s in enumerate(samples):
            h = hidden[n, len(s.ids) - 1 - len(s.y_ids):len(s.ids) - 1]  # [len(y), H]: the states predicting y
            out.append(logprobs._token_logprobs(h, torch.tensor(s.y_ids), model.get_output_embeddings()).sum())
    return torch.stack(out)  # [N]


def test_answers_are_scored_in_fp32_under_autocast_and_rationales_in_bf16(tiny):
    tiny_model, tok = tiny
    model = output_layer_only_model(tok)
    tokens = SpecialTokens.of(tok)
    samples = rollouts(tiny_model, tok)
    with torch.no_grad():
        full_z, full_y = sequence_logprobs(model, samples, tokens)  # full fp32: the reference
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_w = log_weights(model, samples, tokens, micro_batch=2)  # the weight pass
            logp_z, logp_y = sequence_logprobs(model, samples, tokens)  # the gradient pass's numbers
            bf16_y = bf16_scored_answers(model, samples, tokens)
    has_y = torch.tensor([bool(s.y_ids) for s in samples])
    assert (bf16_y - full_y)[has_y].abs().min() > 1e-2  # bf16 answer scoring: off by the logits' rounding
    torch.testing.assert_close(log_w, full_y, atol=1e-4, rtol=0)  # fp32 answer scoring: nothing left to round
    torch.testing.assert_close(logp_y, full_y, atol=1e-4, rtol=0)
    assert (logp_z - full_z).abs().max() > 1e-2  # the rationale in bf16, not fp32


# ------------------------------------------------------------------------------------------------ edge cases
def test_empty_rationales_answers_and_continuations(tiny):
    """An empty part sums to exactly 0, in a batch of its own or padded among others; an empty prompt is refused."""
    model, tok = tiny
    tokens = SpecialTokens.of(tok)
    prompt = prompt_ids(tok, EXAMPLE, "hotpotqa", "cold")
    y = gold_ids(tok, "Rush")
    no_z = [Sample(prompt, [], [], y), Sample(prompt, [], list(tokens.close_ids), y)]
    no_y = [Sample(prompt, [5, 6, 7], [], []), Sample(prompt, [5, 6], list(tokens.close_ids), [])]
    nothing = [Sample(prompt, [], [], []), Sample(prompt, [], [], [])]  # only the prompt
    with torch.no_grad():
        together = sequence_logprobs(model, no_z + no_y + nothing, tokens)
        for k, batch in enumerate([no_z, no_y, nothing]):
            alone = sequence_logprobs(model, batch, tokens)
            torch.testing.assert_close(alone[0], together[0][2 * k:2 * k + 2], atol=1e-5, rtol=0)
            torch.testing.assert_close(alone[1], together[1][2 * k:2 * k + 2], atol=1e-5, rtol=0)
    for s, lz, ly in zip(no_z + no_y + nothing, *together):
        assert (lz == 0) == (not s.z_ids) and (ly == 0) == (not s.y_ids)  # an empty part sums to exactly 0
    logp_z, logp_y = sequence_logprobs(model, no_y, tokens)
    logp_z.sum().backward()  # a gradient through z alone, with y empty everywhere
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    model.zero_grad()
    empty_prompt = [no_z[0], Sample([], [5], [], y)]
    with pytest.raises(ValueError, match="sample 1 has an empty prompt"):
        sequence_logprobs(model, empty_prompt, tokens)
    with pytest.raises(ValueError, match="sample 1 has an empty prompt"):
        log_weights(model, empty_prompt, tokens, micro_batch=1)


# ------------------------------------------------------------------------------------------------ a measurement
def measure(model_name: str, seeds: list[int], n_questions: int, M: int, think_budget: int, context_chars: int):
    """Print |log w - full-fp32 log w| under bf16 autocast, the answer scored in fp32 (what log_weights
    does) and in bf16, on real questions (samples/hotpotqa) with their gold answers teacher-forced."""
    from data import load_examples
    model, tok = models.load_model(model_name)
    tokens = SpecialTokens.of(tok, model.generation_config)
    examples = load_examples("hotpotqa", path=Path(__file__).resolve().parent.parent
                             / "samples/hotpotqa_dev_distractor_sample.json")[:n_questions]
    prompts = [prompt_ids(tok, dict(ex, context=ex["context"][:context_chars]), "hotpotqa", "warm") for ex in examples]
    print(f"{model_name}: {n_questions} questions x M={M}, prompts {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens, think budget {think_budget}; |log w - full-fp32 log w| over the samples:")
    for seed in seeds:
        torch.manual_seed(seed)
        samples = []
        for prompt, ex in zip(prompts, examples):
            for s in generate(model, [prompt], M, tokens, think_budget)[0]:
                s.y_ids = gold_ids(tok, ex["answer"])
                samples.append(s)
        full = log_weights(model, samples, tokens, micro_batch=M)  # fp32 throughout
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs = [("body bf16, answer's output layer fp32 (log_weights)", log_weights(model, samples, tokens, M)),
                    ("body bf16, answer's output layer bf16", bf16_scored_answers(model, samples, tokens)),
                    ("body fp32, answer's output layer bf16", bf16_scored_answers(model, samples, tokens, True))]
        n_y = torch.tensor([len(s.y_ids) for s in samples], dtype=torch.float)  # [N]
        print(f" seed {seed}: answers {n_y.min():.0f}-{n_y.max():.0f} tokens, log w {full.min():.1f} to {full.max():.1f}")
        for name, log_w in runs:
            err = (log_w - full).abs()  # [N]
            print(f"  {name:53s} mean {err.mean():.4f}  median {err.median():.4f}  max {err.max():.4f}"
                  f"  (per answer token {(err / n_y).mean():.4f})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=measure.__doc__)
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2",
                   help="smollm2 (about 10 minutes on 2 busy cores) or tiny (a smoke run, seconds)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="rollout seeds")
    p.add_argument("--questions", type=int, default=4, help="questions from samples/hotpotqa")
    p.add_argument("--M", type=int, default=4, help="samples per question")
    p.add_argument("--think-budget", type=int, default=32, help="rationale tokens before '</think>' is forced")
    p.add_argument("--context-chars", type=int, default=1000, help="each question's context, cut to this length")
    a = p.parse_args()
    torch.set_num_threads(1)
    measure(a.model, a.seeds, a.questions, a.M, a.think_budget, a.context_chars)
