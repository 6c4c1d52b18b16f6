"""The evaluator, eval.py: its command line end to end on the tiny model, and its metrics on scripted answers.

    command line  results.json (args, think_budget, metrics) and predictions.jsonl (a row per question);
                  bad flags stop with argparse's error naming the flag before any model loads; a missing
                  --model directory is one line, no traceback
    metrics       p@1, p@n, maj@n as eval.py's docstring defines them, in percent, averaged over questions;
                  forced_frac; metric names carry n ("p@3", "maj@3")

(score_question's matching rules are tests/test_rewards.py's.)
"""
import json

import pytest

import eval as evaluator
import models
from data import load_examples
from prompts import prompt_ids
from rollout import Sample, SpecialTokens

HOTPOT = "samples/hotpotqa_dev_distractor_sample.json"
CLI = ["--model", "tiny", "--task", "hotpotqa", "--data", HOTPOT, "--limit", "2", "-n", "2", "--think-budget", "4",
       "--answer-budget", "4"]


# ------------------------------------------------------------------------------------------------ the API under test
# The evaluator's entry points, called from here only (one place to adapt when they change).
def run_cli(argv):
    """eval.py's command line, in process."""
    return evaluator.main(argv)


def run_evaluate(model, tok, examples, task, n, generate, prompts_per_call=1):
    """eval.evaluate with `generate` (rollout.generate's signature) as its decoding function: (metrics, predictions)."""
    return evaluator.evaluate(model, tok, examples, task, "warm", n, think_budget=4, answer_budget=8,
                              prompts_per_call=prompts_per_call, progress=False, generate=generate)


# ------------------------------------------------------------------------------------------------ 5. the command line
def test_the_cli_writes_results_and_one_prediction_row_per_question(tmp_path):
    """eval.main on the tiny model and the shipped HotPotQA sample: results.json holds the arguments, the thinking
    budget and every metric (names with n = 2); predictions.jsonl one row per question, n answers each, whose
    per-question scores average (in percent) to the metrics."""
    out = tmp_path / "eval"
    metrics = run_cli(CLI + ["--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"args", "think_budget", "metrics"}
    assert results["think_budget"] == 4
    assert results["args"]["n"] == 2 and results["args"]["task"] == "hotpotqa" and results["args"]["data"] == HOTPOT
    assert (results["args"]["temperature"], results["args"]["top_k"], results["args"]["top_p"]) == (0.6, 20, 0.95)
    assert set(results["metrics"]) == {"p@1", "p@2", "maj@2", "em@1", "f1@1", "forced_frac", "questions", "seconds"}
    assert results["metrics"] == metrics
    assert metrics["questions"] == 2 and 0 <= metrics["forced_frac"] <= 1 and metrics["seconds"] >= 0
    assert all(0 <= metrics[k] <= 100 for k in ["p@1", "p@2", "maj@2", "em@1", "f1@1"])

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    expected = load_examples("hotpotqa", "test", HOTPOT, 0)[:2]  # --split test, --seed 0, --limit 2
    assert [r["id"] for r in rows] == [ex["id"] for ex in expected]
    for row, ex in zip(rows, expected):
        assert set(row) == {"id", "question", "gold", "aliases", "answers", "majority", "p@1", "p@n", "maj@n", "em@1",
                            "f1@1"}
        assert (row["question"], row["gold"], row["aliases"]) == (ex["question"], ex["answer"], ex["aliases"])
        assert len(row["answers"]) == 2 and all(isinstance(a, str) for a in row["answers"])
        assert row["majority"] in row["answers"] + [""]
    for key, name in [("p@1", "p@1"), ("p@n", "p@2"), ("maj@n", "maj@2"), ("em@1", "em@1"), ("f1@1", "f1@1")]:
        assert metrics[name] == pytest.approx(100 * sum(r[key] for r in rows) / len(rows))


@pytest.mark.parametrize("flags, message", [
    (["-n", "0"], "-n must be >= 1, got 0"),
    (["--top-k", "-1"], "--top-k must be >= 0, got -1"),
    (["--data", "no/such/file.json"], "--data no/such/file.json: no such file"),
    (["--prompts-per-call", "0"], "--prompts-per-call must be >= 1, got 0"),
])
def test_bad_flags_stop_with_argparses_error_before_any_model_loads(tmp_path, monkeypatch, capsys, flags, message):
    """A bad flag is argparse's usage error (exit status 2) naming the flag; nothing is loaded."""
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(evaluator, "load_examples", lambda *a, **k: pytest.fail("the data was loaded"), raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(CLI + ["--out", str(tmp_path / "eval"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and f"error: {message}" in err
    assert not (tmp_path / "eval").exists()


def test_a_missing_model_directory_is_one_line_naming_the_flag(tmp_path):
    """--model naming a directory that does not exist: SystemExit with one line, "eval.py: --model DIR: ...", not a
    traceback; nothing is written."""
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--model", missing] + CLI[2:] + ["--out", str(tmp_path / "eval")])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith(f"eval.py: --model {missing}: ") and "\n" not in message
    assert "no such directory" in message
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------ 6. the metrics
QUESTIONS = [  # two questions, three scripted answers each: (what the model writes after "</think>", forced?)
    ({"id": "q1", "question": "Which band recorded Counterparts?", "context": "Rush: a band.", "answer": "Rush",
      "aliases": []},
     [("Rush", True), ("Rush", False), ("The answer is Rush.", False)]),
    ({"id": "q2", "question": "What is the capital of France?", "context": "Paris: a city.", "answer": "Paris",
      "aliases": []},
     [("Paris", True), ("Lyon", False), ("Lyon", False)]),
]


def scripted_generate(tok, questions, calls):
    """A stand-in for rollout.generate returning, for each prompt, the scripted answers of its question (y = the
    answer's tokens + EOS); forced rationales get "</think>" as forced_ids. Records (prompts, M, answer budget)."""
    special = SpecialTokens.of(tok)
    by_prompt = {tuple(prompt_ids(tok, ex, "hotpotqa", "warm")): script for ex, script in questions}

    def generate(model, prompts, M, special_tokens, think_budget, answer_budget=None, *args, **kwargs):
        calls.append((len(prompts), M, answer_budget))
        groups = []
        for prompt in prompts:
            script = by_prompt[tuple(prompt)]
            assert M == len(script)
            groups.append([Sample(list(prompt), [10, 11] + ([] if forced else special.close_ids),
                                  special.close_ids if forced else [],
                                  tok("\n\n" + answer, add_special_tokens=False).input_ids + [tok.eos_token_id])
                           for answer, forced in script])
        return groups

    return generate


@pytest.mark.parametrize("prompts_per_call", [1, 2])
def test_metrics_are_eval_docstrings_definitions_in_percent_averaged_over_questions(prompts_per_call):
    """Two questions x n = 3 scripted answers, scored by hand from eval.py's definitions:
        q1 (gold Rush):  Rush, Rush, "The answer is Rush." -> 3 of 3 correct: p@1 1, p@3 1, majority Rush: maj@3 1
        q2 (gold Paris): Paris, Lyon, Lyon                 -> 1 of 3 correct: p@1 1/3, p@3 1, majority Lyon: maj@3 0
    metrics = 100 x the mean over the two questions; 2 of the 6 rationales forced; names carry n = 3."""
    tok = models.build_tiny_tokenizer()
    model = models.build_tiny_model(tok)
    calls = []
    metrics, predictions = run_evaluate(model, tok, [ex for ex, _ in QUESTIONS], "hotpotqa", 3,
                                        scripted_generate(tok, QUESTIONS, calls), prompts_per_call)
    assert calls == [(prompts_per_call, 3, 8)] * (2 // prompts_per_call)  # n rows per question, answers allowed

    per_question = {"p@1": [3 / 3, 1 / 3], "p@3": [1, 1], "maj@3": [1, 0],
                    "em@1": [3 / 3, 1 / 3], "f1@1": [3 / 3, 1 / 3]}  # official EM/F1 agree on these answers
    expected = {name: 100 * sum(values) / 2 for name, values in per_question.items()}
    assert expected["p@1"] == pytest.approx(200 / 3) and expected["p@3"] == 100 and expected["maj@3"] == 50
    assert set(metrics) == {"p@1", "p@3", "maj@3", "em@1", "f1@1", "forced_frac", "questions"}
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert metrics["forced_frac"] == pytest.approx(2 / 6) and metrics["questions"] == 2

    assert [p["id"] for p in predictions] == ["q1", "q2"]
    assert [p["answers"] for p in predictions] == [["Rush", "Rush", "Rush."], ["Paris", "Lyon", "Lyon"]]
    assert [p["majority"] for p in predictions] == ["Rush", "Lyon"]
    assert [p["p@1"] for p in predictions] == pytest.approx([1, 1 / 3])
    assert [(p["p@n"], p["maj@n"]) for p in predictions] == [(1, 1), (1, 0)]


def test_metric_names_follow_n():
    """With n = 1 the names are p@1 and maj@1 (n, not a fixed 16), and p@n = maj@n = p@1 for one sample."""
    tok = models.build_tiny_tokenizer()
    model = models.build_tiny_model(tok)
    one = [(ex, script[:1]) for ex, script in QUESTIONS]  # the first answer of each: Rush, Paris (both forced)
    metrics, _ = run_evaluate(model, tok, [ex for ex, _ in one], "hotpotqa", 1,
                              scripted_generate(tok, one, []))
    assert set(metrics) == {"p@1", "maj@1", "em@1", "f1@1", "forced_frac", "questions"}  # p@1 once: p@n is p@1
    assert metrics["p@1"] == metrics["maj@1"] == 100.0 and metrics["forced_frac"] == 1.0
