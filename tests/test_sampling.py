"""Which sampling each caller uses, and that the fast sampler draws exactly what the reference draws.

    evaluation   eval.evaluate, eval.py's CLI and train.py's validation sample with T 0.6, top-k 20, top-p 0.95
    training     train.rollouts, and train.train's rollouts, sample the model itself: T 1, no top-k, no top-p
    one step     fast/decode.py's choose_next_token chooses the token rollout.py's processors + torch.multinomial
                 choose, on thousands of rows built with near-ties, from the same random numbers
    draws        generate and the fast path consume the same random numbers when rows close on their own

What sampling used is read from the decoding itself (SamplingSpy): for Hugging Face generate, the logits-processor
list generate really applied (GenerationMixin._get_logits_processor's result, transformers' own additions
included); for the fast path, the warpers of the SamplingRule that each choose_next_token step received.
"""
import pytest
import torch
from transformers import GenerationMixin, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import eval as evaluator
import models
import rollout
import train
from data import load_examples
from fast import decode as fast_decode
from prompts import THINK_CLOSE
from rollout import SpecialTokens

SYNTH = "samples/synth_musique_test.jsonl"  # short contexts: cheap prompts for the tiny model
HOTPOT = "samples/hotpotqa_dev_distractor_sample.json"
EVAL_SAMPLING = [("temperature", 0.6), ("top_k", 20), ("top_p", 0.95)]  # Qwen3's thinking mode, in HF's order
TRAIN_SAMPLING = []  # T 1, no top-k, top-p 1: no warper at all, the model's own distribution


# ------------------------------------------------------------------------------------------------ the APIs under test
# Every call to the decoding entry points goes through these helpers (one place to adapt when they change).
def generate_function(decode: str):
    """The generate function of a decoding path ("generate": the reference, "fast": fast/decode.py's)."""
    return rollout.generate if decode == "generate" else fast_decode.generate


def generate_reference(model, prompts, M, special, think_budget, answer_budget=None, temperature=1.0, top_p=1.0,
                       top_k=0):
    """Hugging Face generate (rollout.generate)."""
    return rollout.generate(model, prompts, M, special, think_budget, answer_budget, temperature, top_p, top_k)


def generate_fast(model, prompts, M, special, think_budget, answer_budget=None, temperature=1.0, top_p=1.0, top_k=0):
    """The fast path (fast.decode.generate; on a CPU: no compilation, check_every 1)."""
    return fast_decode.generate(model, prompts, M, special, think_budget, answer_budget, temperature, top_p, top_k)


def run_evaluate(model, tok, examples, task, n, think_budget, answer_budget, decode):
    """eval.evaluate with its default sampling, on the decoding path `decode` ("generate" or "fast")."""
    return evaluator.evaluate(model, tok, examples, task, "warm", n, think_budget, answer_budget, progress=False,
                              generate=generate_function(decode))


def run_rollouts(model, tok, examples, task, M, special, think_budget, decode):
    """train.rollouts with its default sampling (GARL/PAFT: rationales only), on the decoding path `decode`."""
    return train.rollouts(model, tok, examples, task=task, start="warm", M=M, special=special,
                          think_budget=think_budget, generate=generate_function(decode))


def run_validate(args, model, tok, val, decode):
    """train.validate (step 0) on the decoding path `decode`."""
    return train.validate(args, model, tok, val, 0, generate_function(decode))


def reference_processors(prompt_len, special, think_budget, temperature, top_k, top_p):
    """generate's logits processors for a rollout: the thinking block's rule, then the warpers (rollout.generate's)."""
    return LogitsProcessorList([rollout.ThinkingBlockRules(prompt_len, special, think_budget),
                                *rollout.sampling_warpers(temperature, top_k, top_p)])


# ------------------------------------------------------------------------------------------------ the spy
def described(warpers) -> list[tuple[str, float | None]]:
    """[("temperature", 0.6), ("top_k", 20), ...]: what each warper does, in the order they apply."""
    out = []
    for w in warpers:
        if isinstance(w, TemperatureLogitsWarper):
            out.append(("temperature", w.temperature))
        elif isinstance(w, TopKLogitsWarper):
            out.append(("top_k", w.top_k))
        elif isinstance(w, TopPLogitsWarper):
            out.append(("top_p", w.top_p))
        else:  # anything else (repetition penalty, min-p, ...) changes what is drawn too
            out.append((type(w).__name__, None))
    return out


class SamplingSpy:
    """Records every decoding call's sampling: calls = [(phase, path, described warpers)].

    generate: the processor list generate built (its own additions included), minus the thinking block's rule.
    fast: the SamplingRule's warpers, once per call (a new rule object starts a new call).
    phase: the name of the function the call ran inside (see `label`), or None.
    """

    def __init__(self, monkeypatch):
        self.monkeypatch, self.calls, self.phase, self.rules = monkeypatch, [], None, []
        build = GenerationMixin._get_logits_processor
        choose = fast_decode.choose_next_token

        def spied_build(model, *args, **kwargs):
            processors = build(model, *args, **kwargs)
            warpers = [p for p in processors if not isinstance(p, rollout.ThinkingBlockRules)]
            self.calls.append((self.phase, "generate", described(warpers)))
            return processors

        def spied_choose(state, logits, noise, rule):
            if not self.rules or self.rules[-1] is not rule:  # kept alive in self.rules: `is` is safe
                self.rules.append(rule)
                self.calls.append((self.phase, "fast", described(rule.warpers)))
            return choose(state, logits, noise, rule)

        monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spied_build)
        monkeypatch.setattr(fast_decode, "choose_next_token", spied_choose)

    def label(self, module, name):
        """Label the decoding calls made inside module.name (looked up at call time, e.g. train.rollouts)."""
        real = getattr(module, name)

        def labelled(*args, **kwargs):
            outer, self.phase = self.phase, name
            try:
                return real(*args, **kwargs)
            finally:
                self.phase = outer

        self.monkeypatch.setattr(module, name, labelled)

    def sampling(self, phase=None, path=None) -> list:
        return [w for p, d, w in self.calls if (phase is None or p == phase) and (path is None or d == path)]


def tiny_pair():
    tok = models.build_tiny_tokenizer()
    return models.build_tiny_model(tok), tok


def synth_questions(k):
    return load_examples("musique", "test", SYNTH, 0)[:k]


# ------------------------------------------------------------------------------------------------ 1. evaluation
def test_eval_cli_samples_with_t_0_6_top_k_20_top_p_0_95(tmp_path, monkeypatch):
    """eval.py's command line, with no sampling flag, samples with Qwen3's thinking-mode settings (its default
    decoding path; both paths are checked through eval.evaluate below)."""
    spy = SamplingSpy(monkeypatch)
    evaluator.main(["--model", "tiny", "--task", "musique", "--data", SYNTH, "--limit", "2", "-n", "2",
                    "--think-budget", "3", "--answer-budget", "2", "--out", str(tmp_path / "eval")])
    assert spy.calls, "no decoding call was seen"
    assert spy.sampling() == [EVAL_SAMPLING] * len(spy.calls), f"eval.py's CLI sampled with {spy.sampling()}"


@pytest.mark.parametrize("decode", ["generate", "fast"])
def test_evaluate_samples_with_t_0_6_top_k_20_top_p_0_95_by_default(monkeypatch, decode):
    """eval.evaluate called without sampling arguments (its defaults) samples with Qwen3's thinking-mode settings."""
    spy = SamplingSpy(monkeypatch)
    model, tok = tiny_pair()
    run_evaluate(model, tok, synth_questions(2), "musique", n=2, think_budget=3, answer_budget=2, decode=decode)
    assert spy.sampling(path=decode)
    assert spy.sampling() == [EVAL_SAMPLING] * len(spy.calls), f"eval.evaluate sampled with {spy.sampling()}"


@pytest.mark.parametrize("decode", ["generate", "fast"])
def test_training_validation_samples_with_t_0_6_top_k_20_top_p_0_95(tmp_path, monkeypatch, decode):
    """train.validate (train.py's validation) samples as eval.py does, whatever the training rollouts use."""
    out = tmp_path / "run"
    out.mkdir()
    args = train.parse_args(["--model", "tiny", "--task", "musique", "--data", SYNTH, "--M", "2", "--think-budget",
                             "3", "--answer-budget", "2", "--eval-n", "2", "--eval-batch", "2", "--decode", decode,
                             "--temperature", "1.0", "--top-p", "1.0", "--out", str(out)])
    spy = SamplingSpy(monkeypatch)
    model, tok = tiny_pair()
    metrics = run_validate(args, model, tok, synth_questions(2), decode)
    assert "val/maj@2" in metrics
    assert spy.sampling(path=decode)
    assert spy.sampling() == [EVAL_SAMPLING] * len(spy.calls), f"train.validate sampled with {spy.sampling()}"


# ------------------------------------------------------------------------------------------------ 2. training
@pytest.mark.parametrize("decode", ["generate", "fast"])
def test_training_rollouts_sample_at_t_1_untruncated(monkeypatch, decode):
    """train.rollouts with its defaults samples the model's own distribution: no temperature, top-k or top-p warper
    (and nothing transformers would add from a generation config)."""
    spy = SamplingSpy(monkeypatch)
    model, tok = tiny_pair()
    model.generation_config.update(top_k=20, temperature=0.6, top_p=0.95)  # what Qwen3 ships: must not leak in
    groups = run_rollouts(model, tok, synth_questions(2), "musique", 3, SpecialTokens.of(tok), 4, decode)
    assert [len(g) for g in groups] == [3, 3]
    assert spy.sampling(path=decode)
    assert spy.sampling() == [TRAIN_SAMPLING] * len(spy.calls), f"train.rollouts sampled with {spy.sampling()}"


@pytest.mark.parametrize("decode", ["generate", "fast"])
def test_a_training_step_samples_rollouts_at_t_1_and_validation_as_eval(tmp_path, monkeypatch, decode):
    """One step of train.train (through train.main, on the tiny model): every decoding call made inside
    train.rollouts is untruncated at T 1, every one made inside train.validate uses evaluation's sampling."""
    spy = SamplingSpy(monkeypatch)
    spy.label(train, "rollouts")
    spy.label(train, "validate")
    train.main(["--model", "tiny", "--task", "hotpotqa", "--data", HOTPOT, "--M", "2", "--think-budget", "3",
                "--answer-budget", "2", "--context-chars", "100", "--B", "2", "--micro-batch", "4", "--val-size", "1",
                "--eval-n", "2", "--lr", "1e-3", "--steps", "1", "--no-checkpoints", "--decode", decode,
                "--out", str(tmp_path / "run")])
    assert spy.sampling(phase="rollouts", path=decode) and spy.sampling(phase="validate", path=decode)
    assert {phase for phase, _, _ in spy.calls} == {"rollouts", "validate"}  # no decoding outside the two
    rollouts, validations = spy.sampling("rollouts"), spy.sampling("validate")
    assert rollouts == [TRAIN_SAMPLING] * len(rollouts), f"train.train's rollouts sampled with {rollouts}"
    assert validations == [EVAL_SAMPLING] * len(validations), f"train.train's validation sampled with {validations}"


# ------------------------------------------------------------------------------------------------ 3. near-ties
def near_tie_logits(noise: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """Logits [R, V] in four blocks of rows, each built to put near-ties where the sampler decides:

    race      4 candidate tokens per row whose logits are T log(noise) + 6 + d, d in 0, +-1e-6 .. +-1e-3: after the
              temperature their probabilities are proportional to their own Exp(1) noise, so the exponential race
              argmax p / noise is a near-tie among them (decided by d), and top-p cuts among them
    boundary  30 tokens at 2 + e (e = 0 for half of them, else +-1e-6 .. +-1e-3): top-k 20 cuts among them, and
              top-p 0.95 cuts at ~0.05 of 20 near-equal probabilities
    equal     every logit in {-1, 1}: ~half the vocabulary exactly tied at the top (top-k keeps every tie)
    peaked    3 N(0, 1)
    """
    R, V = noise.shape
    q = R // 4
    logits = torch.empty(R, V)  # [R, V]
    tiny = torch.tensor([0.0, 1e-6, -1e-6, 1e-5, -1e-5, 1e-4, -1e-4, 1e-3, -1e-3])  # [9] near-tie offsets

    race = slice(0, q)
    logits[race] = torch.randn(q, V, generator=gen) - 8  # [q, V] background, far below the candidates
    candidates = torch.rand(q, V, generator=gen).argsort(-1)[:, :4]  # [q, 4] four distinct tokens per row
    offsets = tiny[torch.randint(len(tiny), (q, 4), generator=gen)]  # [q, 4]
    logits[race].scatter_(1, candidates, temperature * noise[race].gather(1, candidates).log() + 6 + offsets)

    boundary = slice(q, 2 * q)
    logits[boundary] = torch.randn(q, V, generator=gen) - 3  # [q, V]
    tied = torch.rand(q, V, generator=gen).argsort(-1)[:, :30]  # [q, 30]
    offsets = torch.where(torch.rand(q, 30, generator=gen) < 0.5, 0.0,
                          tiny[torch.randint(1, len(tiny), (q, 30), generator=gen)])  # [q, 30]
    logits[boundary].scatter_(1, tied, 2 + offsets)

    logits[2 * q:3 * q] = torch.where(torch.rand(q, V, generator=gen) < 0.5, 1.0, -1.0)  # [q, V]
    logits[3 * q:] = 3 * torch.randn(R - 3 * q, V, generator=gen)  # [R - 3q, V]
    return logits


def decoding_rows(R, n, special, gen):
    """Generated tokens [R, n] (bytes, no special token), half of the rows with "</think>" at a random place."""
    generated = torch.randint(0, 256, (R, n), generator=gen)  # [R, n]
    closed = torch.rand(R, generator=gen) < 0.5  # [R]
    where = torch.randint(0, n, (R,), generator=gen)  # [R] the index of "</think>" in closed rows
    generated[closed, where[closed]] = special.close_ids[0]
    return generated


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.6, 20, 0.95)])
def test_the_fast_sampler_chooses_what_generate_chooses_on_near_ties(temperature, top_k, top_p):
    """choose_next_token (a SamplingRule and a DecodingState as decode_fast builds them, noise drawn as decode_fast
    draws it) chooses, on every one of 4096 rows with near-ties, the token generate chooses: ThinkingBlockRules,
    the warpers, softmax and torch.multinomial from the same seed; finished rows padded. Rows still thinking
    (EOS banned), closed rows (free), finished rows, and at the budget rows being forced."""
    tok = models.build_tiny_tokenizer()
    special = SpecialTokens.of(tok)
    V, R, L, budget, answer_budget = len(tok), 4096, 3, 6, 3
    rule = fast_decode.SamplingRule.of(special, V, "cpu", budget, answer_budget, temperature, top_p, top_k)
    gen = torch.Generator().manual_seed(0)
    near_ties = 0
    for n, seed in [(budget - 1, 1), (budget, 2)]:  # before the budget; at it ("</think>" forced on thinking rows)
        torch.manual_seed(seed)
        noise = torch.empty(R, V).exponential_()  # [R, V] the Exp(1) noise torch.multinomial will draw from this seed
        logits = near_tie_logits(noise, temperature, gen)  # [R, V]
        generated = decoding_rows(R, n, special, gen)  # [R, n]
        ids = torch.cat([torch.randint(0, 256, (R, L), generator=gen), generated], 1)  # [R, L + n] prompt | generated
        done_stop = rollout.RolloutDone(L, special.close_ids, answer_budget, "cpu")

        # The reference: what generate's sampling loop does with these logits.
        processors = reference_processors(L, special, budget, temperature, top_k, top_p)
        probs = torch.nn.functional.softmax(processors(ids, logits.clone()), dim=-1)  # [R, V]
        unfinished = ~done_stop(ids, None)  # [R]
        torch.manual_seed(seed)
        expected = torch.multinomial(probs, num_samples=1).squeeze(1)  # [R]
        expected = expected * unfinished + special.pad_id * ~unfinished  # generate pads finished rows
        expected_rng = torch.get_rng_state()

        # The fast path's step, on the state decode_fast keeps.
        z = lambda *shape, dtype=torch.long: torch.zeros(*shape, dtype=dtype)
        state = fast_decode.DecodingState(z(R, rule.max_new), z(R, rule.max_new, dtype=torch.float), z(R),
                                          z(R, dtype=torch.bool), z(())).reset(rule.pad)
        state.tokens[:, :n] = generated
        state.closed_at.copy_(rollout.rationale_closed_at(generated, rule.close))
        state.done.copy_(~unfinished)
        state.n.fill_(n)
        torch.manual_seed(seed)
        drawn = torch.empty(R, V).exponential_()  # [R, V] as decode_fast draws it before each step
        chosen = fast_decode.choose_next_token(state, logits.clone(), drawn, rule)  # [R]

        assert torch.equal(torch.get_rng_state(), expected_rng), "a different number of random draws"
        mismatched = (chosen != expected).nonzero()[:, 0].tolist()
        assert not mismatched, f"n={n}: {len(mismatched)} of {R} rows differ, e.g. rows {mismatched[:8]}"
        # Its bookkeeping reads the new tokens as generate's stopping criteria do.
        after = torch.cat([ids, expected[:, None]], 1)  # [R, L + n + 1]
        closed_at = rollout.rationale_closed_at(after[:, L:], rule.close)  # [R]
        wrong = (state.closed_at != closed_at).sum()
        assert not wrong, f"n={n}: closed_at differs on {wrong} rows"
        ended = ~unfinished | done_stop(after, None) | torch.isin(expected, torch.tensor(special.eos_ids))  # [R]
        assert torch.equal(state.done, ended), f"n={n}: done differs on {(state.done != ended).sum()} rows"

        # The case is the one described: forced rows at the budget, finished rows, and races decided by near-ties.
        thinking = rollout.rationale_closed_at(generated, rule.close) < 0  # [R]
        assert (expected[thinking] == special.close_ids[0]).all() == (n >= budget)
        assert (~unfinished).sum() > 100 and (unfinished & ~thinking).sum() > 100
        race = (probs / noise).topk(2, -1).values  # [R, 2] the two best entries of the exponential race
        near_ties += int(((race[:, 0] - race[:, 1]) < 1e-4 * race[:, 0]).sum())
    assert near_ties > 300


# ------------------------------------------------------------------------------------------------ 4. same draws
def closing_tiny(close_bias):
    """The tiny model with its output layer biased towards "</think>" (one token), so rationales close on their own."""
    tok = models.build_tiny_tokenizer()
    model = models.build_tiny_model(tok, seed=3)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    head.bias.data[tok.convert_tokens_to_ids(THINK_CLOSE)] = close_bias
    model.lm_head = head
    return model, tok


def test_generate_and_the_fast_path_use_the_same_draws_when_rationales_close_on_their_own():
    """Rationale-only rollouts (answer_budget None) where rows sample "</think>" before the budget: both paths draw
    the same tokens, leave the global generator in the same state (the same number of draws: a row that stops
    one step late costs a draw), and so the next call draws the same tokens too. Three calls in a row: some rows
    natural and some forced; every row natural, well before the budget (the loop ends early); mixed again."""
    model, tok = closing_tiny(close_bias=4.5)
    special = SpecialTokens.of(tok)
    prompts = [tok("Who recorded it?").input_ids, tok("Which band?").input_ids]  # short, of different lengths
    budgets = [4, 40, 4]
    runs = {}
    for name, generate in [("generate", generate_reference), ("fast", generate_fast)]:
        torch.manual_seed(7)
        runs[name] = []
        for budget in budgets:
            groups = generate(model, prompts, 4, special, budget)
            runs[name].append(([[s.ids for s in g] for g in groups], torch.get_rng_state(),
                               [s for g in groups for s in g]))
    for i, budget in enumerate(budgets):
        (ids, rng, samples), (f_ids, f_rng, _) = runs["generate"][i], runs["fast"][i]
        assert f_ids == ids, f"call {i} (think budget {budget}): different tokens"
        assert torch.equal(f_rng, rng), f"call {i} (think budget {budget}): a different number of random draws"
        forced = [s.forced for s in samples]
        if budget == 40:
            assert not any(forced) and max(len(s.z_ids) for s in samples) < budget - 5  # the loop ends early
        else:
            assert any(forced) and not all(forced)  # natural closes and forced ones
        assert all(s.y_ids == [] for s in samples)
