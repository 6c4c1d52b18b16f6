"""End-to-end trainer and evaluator on the tiny model and the shipped samples."""
import json
import os
from pathlib import Path

import pytest
import torch

import data
import eval as evaluator
import logprobs
import models
import presets
import related
import train
from garl import garl_coefficients, garl_loss
from logprobs import log_weights, sequence_logprobs
from rollout import Sample, SpecialTokens

HOTPOT = "samples/hotpotqa_dev_distractor_sample.json"
FAST = ["--model", "tiny", "--task", "hotpotqa", "--data", HOTPOT, "--M", "3", "--think-budget", "5",
        "--answer-budget", "4", "--context-chars", "150", "--B", "2", "--micro-batch", "4",
        "--val-size", "2", "--eval-n", "2", "--lr", "1e-3"]


def run(tmp_path, *extra, name="run"):
    out = tmp_path / name
    train.main(FAST + ["--out", str(out), *extra])
    return out, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def two_questions_rolled_out(seed, M=3, think_budget=5):
    """The tiny model, its tokens, and M rollouts of each of two questions with the gold answer attached."""
    tok = models.build_tiny_tokenizer()
    model = models.build_tiny_model(tok)
    tokens = SpecialTokens.of(tok)
    examples = [{"id": str(i), "question": q, "context": "Rush: a band.", "answer": "Rush", "aliases": []}
                for i, q in enumerate(["Who?", "Which band?"])]
    torch.manual_seed(seed)
    groups = train.rollouts(model, tok, examples, task="hotpotqa", start="warm", M=M, special=tokens,
                            think_budget=think_budget)
    train.attach_gold_answers(groups, examples, tok)
    return model, tokens, groups


@pytest.mark.parametrize("estimator", ["garl", "paft", "grpo", *related.ESTIMATORS])
def test_a_few_steps_of_each_estimator(tmp_path, capsys, estimator):
    out, lines = run(tmp_path, "--estimator", estimator, "--steps", "2")
    said = [l for l in capsys.readouterr().out.splitlines() if l.startswith("held-out p@1 ")]
    assert len(said) == 1 and said[0].endswith("(2 validation questions, before training -> after step 2)")
    assert said[0].startswith(f"held-out p@1 {lines[0]['val/p@1']:.1f}% -> {lines[-1]['val/p@1']:.1f}%")
    assert [line["step"] for line in lines] == [-1, 0, 1]  # -1: the untrained model's validation (--eval-first)
    base, lines = lines[0], lines[1:]
    assert {"val/p@1", "val/p@2", "val/maj@2", "time_eval"} <= base.keys() and "loss" not in base
    written = sorted(p.name for p in (out / "predictions").iterdir())  # every sampled answer, per validation
    assert written == ["step-000000.jsonl", "step-000002.jsonl"]
    first = [json.loads(line) for line in (out / "predictions" / "step-000000.jsonl").read_text().splitlines()]
    assert len(first) == 2 and {"id", "gold", "answers", "majority", "p@1"} <= first[0].keys()
    assert len(first[0]["answers"]) == 2
    common = {"q", "lr", "loss", "grad_norm", "tokens_generated", "think_tokens_mean", "forced_frac",
              "seqs_in_grad_pass", "time_generate", "time_weights", "time_estimator", "time_backward", "time_optimizer"}
    for line in lines:
        assert common <= line.keys()
        if estimator in ("grpo", "maxrl"):  # a verifier scores the model's own answers
            assert "reward_mean" in line and "w_bar_mean" not in line
        else:
            assert {"w_bar_mean", "w_bar_min", "w_bar_max", "j_q"} <= line.keys()
            assert 0.0 <= line["w_bar_min"] <= line["w_bar_mean"] <= line["w_bar_max"] <= 1.0
        assert all(v == v for v in line.values() if isinstance(v, float))  # no NaN anywhere
    assert ("max_amplified_advantage" in lines[0]) == (estimator == "garl")
    rlpr = {"rlpr/reward_mean", "rlpr/std_mean", "rlpr/threshold", "rlpr/filtered_frac"}
    assert all((rlpr <= line.keys()) == (estimator == "rlpr") for line in lines)
    assert {"val/p@1", "val/p@2", "val/maj@2"} <= lines[-1].keys()  # validated after the last step
    for link in ["latest", "best"]:
        assert (out / link).is_symlink() and (out / link / "config.json").exists()
    assert (out / "latest" / "trainer_state.pt").exists()


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    _, straight = run(tmp_path, "--estimator", "paft", "--steps", "4", name="straight")
    out, _ = run(tmp_path, "--estimator", "paft", "--steps", "2", name="resumed")
    train.main(FAST + ["--out", str(out), "--estimator", "paft", "--steps", "4", "--resume"])
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    def training_numbers(line):  # timings differ from run to run; validation ran at step 1 only in the split run
        return {k: v for k, v in line.items() if not k.startswith(("time_", "val/"))}

    assert [training_numbers(line) for line in resumed] == [training_numbers(line) for line in straight]


def rlpr_threshold_from_step_2(monkeypatch):
    """train.py's RLPRThreshold with its moving average from step 1 and its filter from step 2 (RLPR's: 6 and 11),
    so that a few steps of a tiny run filter: step 2's threshold is step 1's mean group std (beta 1)."""
    monkeypatch.setattr(train, "RLPRThreshold", lambda: related.RLPRThreshold(beta=1.0, warmup=1, start=2))


@pytest.mark.parametrize("scoring", ["plain", "fast"])
def test_an_rlpr_step_is_rlpr_coefficients_of_the_answer_token_logprobs(tmp_path, monkeypatch, scoring):
    """Each rlpr step's coefficients are rlpr_coefficients of logprobs.answer_token_logprobs on that step's rollouts
    and on rationale-free samples built here (prompt | "</think>" | y*, no rationale), with the threshold of the
    steps before; its logged w_bar is log_weights' (log w = the rows' sums). Checked inside gradient_pass, which
    sees the model the weight pass scored with. --logprobs fast is held to the plain definition too."""
    rlpr_threshold_from_step_2(monkeypatch)
    close_ids = SpecialTokens.of(models.build_tiny_tokenizer()).close_ids
    seen = []
    gradient_pass = train.gradient_pass

    def checked(model, groups, score_coef, path_coef, special, micro_batch, *args, **kwargs):
        B, M = len(groups), len(groups[0])
        flat = [s for g in groups for s in g]
        bare = [Sample(g[0].prompt_ids, [], list(close_ids), g[0].y_ids) for g in groups]  # no rationale
        token_logp, mask = logprobs.answer_token_logprobs(model, flat, special, micro_batch)  # [B * M, T]
        inputs = (token_logp.view(B, M, -1).double(), mask.view(B, M, -1),
                  *logprobs.answer_token_logprobs(model, bare, special, micro_batch))
        seen.append({"score_coef": score_coef, "path_coef": path_coef, "inputs": inputs,
                     "std_mean": related.rlpr_rewards(*inputs).std(-1).mean().item(),
                     "w_bar": log_weights(model, flat, special, micro_batch).view(B, M).double().exp().mean(-1)})
        return gradient_pass(model, groups, score_coef, path_coef, special, micro_batch, *args, **kwargs)

    monkeypatch.setattr(train, "gradient_pass", checked)
    _, lines = run(tmp_path, "--estimator", "rlpr", "--steps", "2", "--logprobs", scoring, "--no-eval-first",
                   "--no-checkpoints")
    # plain: the same computation, the same numbers. fast: on the tiny model r and r_base are near-uniform token
    # probabilities (~4e-3) that differ by ~1e-6, so the log-probs' fp32 rounding moves r_hat, its std and the
    # coefficients (~0.2) by up to ~5e-5 (measured); a wrong r_base or threshold moves them by ~0.1.
    exact = dict(atol=1e-12, rtol=1e-12) if scoring == "plain" else dict(atol=2e-4, rtol=1e-2)
    for line, step, threshold in zip(lines, seen, [0.0, seen[0]["std_mean"]]):
        assert line["rlpr/threshold"] == pytest.approx(threshold, rel=exact["rtol"], abs=exact["atol"])
        score_coef, path_coef = related.rlpr_coefficients(*step["inputs"], std_threshold=threshold)
        torch.testing.assert_close(step["score_coef"], score_coef, **exact)
        assert (step["path_coef"] == 0).all()
        assert line["w_bar_mean"] == pytest.approx(step["w_bar"].mean().item(), rel=1e-5)
    assert all((step["score_coef"] != 0).any() for step in seen)  # not a vacuous check
    assert lines[1]["rlpr/filtered_frac"] == 0.5  # step 2's threshold dropped one of its two questions


def test_an_rlpr_run_resumes_its_threshold(tmp_path, monkeypatch):
    """The std filter's moving average is saved with the trainer state: a resumed rlpr run logs the thresholds (and
    everything else) of an uninterrupted one."""
    rlpr_threshold_from_step_2(monkeypatch)
    _, straight = run(tmp_path, "--estimator", "rlpr", "--steps", "3", "--no-eval-first", name="straight")
    out, _ = run(tmp_path, "--estimator", "rlpr", "--steps", "2", "--no-eval-first", name="resumed")
    train.main(FAST + ["--out", str(out), "--estimator", "rlpr", "--steps", "3", "--no-eval-first", "--resume"])
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    def training_numbers(line):
        return {k: v for k, v in line.items() if not k.startswith(("time_", "val/"))}

    assert straight[2]["rlpr/threshold"] > 0
    assert [training_numbers(line) for line in resumed] == [training_numbers(line) for line in straight]


def test_gradient_accumulation_is_exact():
    """The gradient of a step does not depend on --micro-batch."""
    tok = models.build_tiny_tokenizer()
    model = models.build_tiny_model(tok)
    tokens = SpecialTokens.of(tok)
    ex = {"id": "a", "question": "Who?", "context": "Rush: a band.", "answer": "Rush", "aliases": []}
    examples = [ex, dict(ex, question="Which band?")]
    torch.manual_seed(0)
    groups = train.rollouts(model, tok, examples, task="hotpotqa", start="warm", M=4, special=tokens, think_budget=6)
    train.attach_gold_answers(groups, examples, tok)
    log_w = log_weights(model, [s for g in groups for s in g], tokens, 8).view(2, 4).double()  # [B, M]
    score_coef, path_coef = garl_coefficients(log_w, 0.75)
    grads = []
    for micro_batch in [1, 3, 8]:
        model.zero_grad()
        train.gradient_pass(model, groups, score_coef, path_coef, tokens, micro_batch)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(grads[2], grads[0], atol=1e-7, rtol=1e-5)


def test_the_gradient_pass_is_the_gradient_of_garl_loss():
    """train.gradient_pass, with garl_coefficients of the weight pass, is Algorithm 1 (garl.garl_loss) exactly."""
    model, tokens, groups = two_questions_rolled_out(seed=1)
    flat = [s for g in groups for s in g]
    log_w = log_weights(model, flat, tokens, 6).view(2, 3).double()
    score_coef, path_coef = garl_coefficients(log_w, 0.5)
    model.zero_grad()
    train.gradient_pass(model, groups, score_coef, path_coef, tokens, 2)
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logp_z, logp_y = sequence_logprobs(model, flat, tokens)  # [6] each
    garl_loss(logp_z.view(2, 3), logp_y.view(2, 3), 0.5).backward()
    for a, b in zip(ours, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_grpo_rewards_exact_match_of_the_extracted_answer():
    tok = models.build_tiny_tokenizer()
    ex = {"id": "a", "question": "Who?", "context": "", "answer": "Rush", "aliases": ["Rush (band)"]}
    answers = ["\n\nRush", "\n\nThe answer is rush.", "\n\nToto", "\n\nRush (band)"]
    group = [Sample([1], [5, 6], [], tok(a, add_special_tokens=False).input_ids + [tok.eos_token_id]) for a in answers]
    reward = train.grpo_rewards([group], [ex], tok)
    assert reward.tolist() == [[1.0, 1.0, 0.0, 1.0]]


def test_q_schedules():
    assert [presets.q_at(s, "switch", 1.0, 0.0, 10) for s in (0, 9, 10, 50)] == [1.0, 1.0, 0.0, 0.0]
    assert [presets.q_at(s, "linear", 1.0, 0.0, 10) for s in (0, 5, 10, 20)] == [1.0, 0.5, 0.0, 0.0]
    assert presets.q_at(7, "constant", 1.0, 0.0, 10) == 1.0


def test_eval_on_a_saved_checkpoint(tmp_path):
    out, _ = run(tmp_path, "--estimator", "garl", "--steps", "1")
    metrics = evaluator.main(["--model", str(out / "latest"), "--task", "hotpotqa", "--data", HOTPOT, "--split", "val",
                              "-n", "3", "--limit", "2", "--think-budget", "4", "--answer-budget", "4",
                              "--out", str(tmp_path / "eval")])
    assert {"p@1", "p@3", "maj@3", "em@1", "f1@1", "forced_frac"} <= metrics.keys() and metrics["questions"] == 2
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["metrics"]["p@1"] == metrics["p@1"]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["answers"]) == 3 for r in rows)


@pytest.mark.parametrize("flags, message", [
    (["--q", "1.5"], "--q: q must be in"),
    (["--q-final", "-0.1"], "--q-final"),
    (["--M", "1"], "--M must be >= 2"),
    (["--task", "squad"], "invalid choice"),
    (["--estimator", "ppo"], "invalid choice"),
    (["--data", "no/such/file.json"], "no such file"),
    (["--think-budget", "0"], "--think-budget must be >= 1"),
    (["--q-schedule", "linear", "--q-steps", "0"], "--q-steps must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--lr", "nan"], "--lr must be > 0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--gen-batch", "-1"], "--gen-batch must be >= 0"),
    (["--eval-batch", "0"], "--eval-batch must be >= 1"),
    (["--K", "0"], "--K must be >= 1"),
    (["--preset", "gpu"], "invalid choice"),
    (["--data", "synth", "--task", "hotpotqa"], "--data synth: the fictional questions are in MuSiQue's format"),
])
def test_bad_flags_fail_before_any_model_loads(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(FAST + ["--out", str(tmp_path / "x"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_out_holding_another_run_needs_resume(tmp_path, monkeypatch, capsys):
    out, _ = run(tmp_path, "--steps", "1")
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit):
        train.main(FAST + ["--out", str(out), "--steps", "1"])
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(FAST + ["--out", str(out), "--steps", "3", "--resume", "--q", "0.5"])
    err = capsys.readouterr().err
    assert "different settings" in err and "--q 0.75 vs 0.5" in err
    with pytest.raises(SystemExit):
        train.main(FAST + ["--out", str(tmp_path / "empty"), "--resume"])
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_a_killed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    out, _ = run(tmp_path, "--steps", "1", "--estimator", "paft")
    before = os.path.realpath(out / "latest")
    real_save = torch.save

    def dies(obj, path, *a, **k):  # the process "dies" while writing the trainer state of step 2
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        train.main(FAST + ["--out", str(out), "--estimator", "paft", "--steps", "2", "--resume"])
    monkeypatch.setattr(torch, "save", real_save)
    assert os.path.realpath(out / "latest") == before and (Path(before) / "trainer_state.pt").exists()
    train.main(FAST + ["--out", str(out), "--estimator", "paft", "--steps", "2", "--resume"])  # and it resumes
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [-1, 0, 1]  # the base validation once, not again on --resume


def test_no_network_and_no_data_file_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    """--data hub offline (as here, and for a user without network): a SystemExit that names the flags to pass."""
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--model", "tiny", "--task", "hotpotqa", "--data", "hub", "--out", str(tmp_path / "x")])
    message = str(exit_info.value.code)
    assert message.startswith("train.py: ") and "--data FILE" in message and "--val-data" in message


def test_plan_prints_the_memory_and_loads_no_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert train.main(FAST + ["--out", str(tmp_path / "x"), "--plan"]) is None
    out = capsys.readouterr().out
    assert "**peak (" in out and "| generate |" in out and out.rstrip().endswith("fits")
    assert not (tmp_path / "x").exists()


def test_a_run_that_cannot_fit_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """--plan (and every GPU run, which plans before it loads) says what does not fit and which flag to change."""
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    # ~10 TB of KV cache: 2 questions x 100k rows x 100k tokens
    assert train.main(FAST + ["--out", str(tmp_path / "x"), "--M", "100000", "--think-budget", "100000", "--plan"]) is None
    message = capsys.readouterr().out.splitlines()[-1]
    assert message.startswith("does not fit") and "--" in message.split("does not fit", 1)[1]


def test_the_gradient_pass_keeps_a_sequence_whose_score_coef_alone_is_zero():
    """When every rationale of a question gives the same w, GARL's score_coef is 0 but its path_coef is not:
    such sequences must still go through the model (their answer tokens carry the pathwise gradient)."""
    model, tokens, groups = two_questions_rolled_out(seed=2)
    score_coef = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, -0.1]], dtype=torch.float64)  # [B, M]
    path_coef = torch.tensor([[0.2, 0.2, 0.2], [0.0, 0.5, 0.0]], dtype=torch.float64)  # [B, M]
    model.zero_grad()
    _, seqs = train.gradient_pass(model, groups, score_coef, path_coef, tokens, 2)
    ours = [p.grad.clone() for p in model.parameters()]
    assert seqs == 6  # every sequence has a nonzero coefficient
    model.zero_grad()
    logp_z, logp_y = sequence_logprobs(model, [s for g in groups for s in g], tokens)  # [6] each
    (-(score_coef.flatten().float() * logp_z + path_coef.flatten().float() * logp_y).sum() / 2).backward()
    for a, b in zip(ours, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_best_is_selected_on_whole_validations_only(tmp_path, monkeypatch):
    """--val-subset: periodic validations on a subset may score higher, but `best` is chosen on the whole set."""
    def scripted(args, model, tokenizer, val, step, generate=None):  # the subset scores 100, the whole set 50
        return {f"val/maj@{args.eval_n}": 100.0 if len(val) == 1 else 50.0}

    monkeypatch.setattr(train, "validate", scripted)
    out, lines = run(tmp_path, "--steps", "2", "--eval-every", "1", "--val-subset", "1", "--no-eval-first")
    assert [line["val/maj@2"] for line in lines] == [100.0, 50.0]
    assert os.path.basename(os.path.realpath(out / "best")) == "best-step-000002"


def test_the_paper_presets_validation_is_at_most_a_quarter_of_decoding(tmp_path):
    """eval.validation_cost weights decoding by rows x context: the paper preset's default validation is <= 25% of
    the run's decoding time; the paper's full protocol (every val question every 25 steps) is most of it."""
    from data import load_examples
    from prompts import user_message
    from scale import memory
    finqa = load_examples("finqa", None, "samples/finqa_dev_sample.json")
    prompt = sum(memory.prompt_tokens_of(user_message(ex, "finqa", "warm")) for ex in finqa) / len(finqa)
    args = train.parse_args(["--preset", "paper", "--out", str(tmp_path / "x")])
    line, share = evaluator.validation_cost(args, args.val_size, prompt, prompt)
    assert share <= 0.25 and "of the run's decoding time" in line
    full = train.parse_args(["--preset", "paper", "--val-size", "0", "--eval-every", "25", "--out", str(tmp_path / "y")])
    assert evaluator.validation_cost(full, 872, prompt, prompt)[1] > 0.6


def test_no_checkpoints_writes_metrics_only(tmp_path):
    out, lines = run(tmp_path, "--steps", "1", "--no-checkpoints")
    assert [line["step"] for line in lines] == [-1, 0]  # the base validation, then the step
    assert not (out / "latest").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("model", ["/nonexistent/checkpoint", "Qwen/Qwen3-0.6B", "nobody/no-such-model"])
def test_a_model_that_cannot_be_loaded_is_one_message_naming_the_flag(tmp_path, model):
    """No such directory, the paper's model without network (tests run offline), an unknown hub id offline:
    train.py and eval.py exit with one line naming --model, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(FAST + ["--out", str(tmp_path / "x"), "--model", model])
    message = str(exit_info.value.code)
    assert message.startswith(f"train.py: --model {model}:") and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        evaluator.main(["--model", model, "--task", "hotpotqa", "--data", HOTPOT, "--split", "val", "-n", "2",
                        "--limit", "1", "--out", str(tmp_path / "eval")])
    assert str(exit_info.value.code).startswith(f"eval.py: --model {model}:")


def test_the_reference_and_the_fast_paths_train_alike(tmp_path):
    """--decode generate --logprobs plain (Hugging Face generate, plain log-probs: the reference) and
    --decode fast --logprobs fast draw the same rollouts and compute the same numbers, step after step."""
    runs = {}
    for decode, logprobs in [("generate", "plain"), ("fast", "fast")]:
        _, runs[decode] = run(tmp_path, "--steps", "3", "--estimator", "garl", "--decode", decode, "--logprobs", logprobs,
                              "--no-checkpoints", name=decode)
    for ref, fast in zip(runs["generate"], runs["fast"]):
        assert ref["step"] == fast["step"]
        if ref["step"] == -1:  # the untrained model's validation: the same sampled answers, the same scores
            assert {k: v for k, v in ref.items() if k.startswith("val/")} == {k: v for k, v in fast.items() if k.startswith("val/")}
            continue
        assert ref["tokens_generated"] == fast["tokens_generated"] and ref["think_tokens_mean"] == fast["think_tokens_mean"]
        for key in ["w_bar_mean", "j_q", "loss", "grad_norm"]:
            assert fast[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-12), key


def test_the_two_switches_pick_the_reference_or_its_fast_twin():
    """train.implementations: --decode generate / --logprobs plain are rollout.generate and logprobs.py; fast picks
    fast/decode.py's generate (with the run's buffer shape) and fast/logprobs.py."""
    import logprobs
    import rollout
    from fast import decode as fast_decode, logprobs as fast_logprobs
    assert train.implementations("generate", "plain") == (rollout.generate, logprobs)
    generate, scoring = train.implementations("fast", "fast", (8, 64))
    assert generate.func is fast_decode.generate and generate.keywords == {"buffer_shape": (8, 64)}
    assert scoring is fast_logprobs


def test_the_heldout_preset_trains_on_fresh_questions_and_validates_on_held_out_ones():
    """--preset cpu-heldout: the shipped fictional training questions, each seen once in 10 steps of 8, and the
    first 32 questions of the held-out file (experiments/heldout.py's test set), none of them trained on."""
    args = train.parse_args(["--preset", "cpu-heldout", "--q", "0.75", "--estimator", "paft", "--out", "unused"])
    assert (args.steps, args.B, args.M) == (10, 8, 2)
    assert (args.task, Path(args.data), Path(args.val_data)) == ("musique", data.SYNTH_FILES["train"],
                                                                  data.SYNTH_FILES["test"])
    train_examples, val_examples = train.load_data(args)
    assert val_examples == data.load_examples("musique", path=data.SYNTH_FILES["test"])[:32]  # whatever the seed
    relative = os.path.relpath(data.SYNTH_FILES["test"])  # the same file named another way: the same questions
    assert data.load_train_val("musique", args.data, relative, 32, seed=5)[1] == val_examples
    assert args.steps * args.B <= len(train_examples)  # no question seen twice
    assert not {e["question"] + e["context"] for e in val_examples} & {e["question"] + e["context"] for e in train_examples}
    assert train.parse_args(["--preset", "cpu-heldout", "--val-data", str(data.SAMPLE_FILES["musique"]),
                             "--out", "unused"]).val_data == str(data.SAMPLE_FILES["musique"])  # a flag given wins
