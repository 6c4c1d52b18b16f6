"""Tests for experiments/synth_musique.py (the generator) and experiments/heldout.py (a shrunken end-to-end run)."""
import doctest
import json

import pytest
import torch

import data
import rewards
from experiments import heldout, synth_musique


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One small generation with two-hop rows, written as files: {split: path}."""
    rows = synth_musique.generate({"train": 40, "val": 10, "test": 10}, seed=3, two_hop=0.5)
    return rows, synth_musique.write(rows, tmp_path_factory.mktemp("synth"))


def test_doctests():
    assert doctest.testmod(synth_musique).failed == 0
    assert doctest.testmod(heldout).failed == 0


def test_rows_load_through_the_musique_loader_and_answers_are_spans_of_the_context(generated):
    rows, paths = generated
    for split, path in paths.items():
        examples = data.load_examples("musique", path=path)
        assert len(examples) == len(rows[split])
        for ex, row in zip(examples, rows[split]):
            assert ex["answer"] == row["answer"] and ex["question"] == row["question"] and ex["aliases"] == []
            assert ex["answer"] in ex["context"]
            # the verifier finds the gold in a context that states it, as whole tokens (not inside another name)
            assert rewards.substring_match(ex["answer"], [ex["answer"]])
            names = [p["title"] for p in row["paragraphs"]]
            assert sum(ex["answer"] in n or n in ex["answer"] for n in names if n != ex["answer"]) == 0


def test_supporting_paragraphs_and_decomposition_lead_to_the_answer(generated):
    rows, _ = generated
    hops = {1: 0, 2: 0}
    for row in [r for split in rows.values() for r in split]:
        h = len(row["question_decomposition"])
        hops[h] += 1
        support = [p for p in row["paragraphs"] if p["is_supporting"]]
        assert len(support) == h and row["answerable"] is True
        assert [p["idx"] for p in row["paragraphs"]] == list(range(len(row["paragraphs"])))
        last = row["question_decomposition"][-1]
        assert last["answer"] == row["answer"]
        assert row["answer"] in row["paragraphs"][last["paragraph_support_idx"]]["paragraph_text"]
        assert row["id"].startswith(f"synth{h}hop__")
    assert hops[1] > 0 and hops[2] > 0


def test_seeded_generation_is_reproducible_and_the_seed_matters():
    sizes = {"train": 20, "val": 5, "test": 5}
    a, b = synth_musique.generate(sizes, seed=7), synth_musique.generate(sizes, seed=7)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(synth_musique.generate(sizes, seed=8))


def test_splits_are_disjoint(generated):
    rows, _ = generated
    keys = {split: {synth_musique.row_key(r) for r in split_rows} for split, split_rows in rows.items()}
    assert all(len(keys[s]) == len(rows[s]) for s in rows)  # no duplicate inside a split either
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    ids = [r["id"] for split_rows in rows.values() for r in split_rows]
    assert len(set(ids)) == len(ids)


def test_the_shipped_test_file_is_the_generators_test_split(tmp_path):
    paths = heldout.make_data(tmp_path, 2000)  # raises SystemExit if it differs from samples/
    assert paths["test"].read_bytes() == heldout.TEST_FILE.read_bytes()
    test = data.load_examples("musique", path=heldout.TEST_FILE)
    train = data.load_examples("musique", path=paths["train"])
    assert len(test) == heldout.GENERATOR["test"]
    assert not {(e["question"], e["context"]) for e in test} & {(e["question"], e["context"]) for e in train}
    # the CPU preset's training file (train.py --data synth) is the first 400 rows of the same train split
    shipped = data.SYNTH_FILES["train"].read_text().splitlines(keepends=True)
    assert len(shipped) == 400 and shipped == paths["train"].read_text().splitlines(keepends=True)[:400]
    assert data.SYNTH_FILES["test"] == heldout.TEST_FILE


def test_bad_flags_fail_with_the_flag_named():
    with pytest.raises(SystemExit):
        heldout.parse_args(["--methods", "PPO"])
    with pytest.raises(SystemExit):
        heldout.parse_args(["--steps", "100", "--B", "30", "--train-rows", "50"])  # not enough fresh questions
    args = heldout.parse_args(["--quick", "--steps", "3"])
    assert args.steps == 3 and args.seeds == 1 and args.methods == ["GRPO", "PAFT q=0.75"]  # given flags win
    assert heldout.parse_args(["--methods", "LaTRO,MaxRL,GRPO-soft"]).methods == ["LaTRO", "MaxRL", "GRPO-soft"]
    assert heldout.parse_args([]).methods == [m[0] for m in heldout.METHODS]  # "all": the paper's five


def test_shrunken_end_to_end_run_on_the_tiny_model(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = heldout.main(["--model", "tiny", "--quick", "--workers", "1", "--out", str(tmp_path),
                               "--starts", "cold", "--steps", "2", "--eval-every", "1", "--test-questions", "2",
                               "--eval-n", "2", "--think-budget", "2", "--answer-budget", "2", "--train-rows", "20",
                               "--no-figure-copy"])
    finally:
        torch.set_num_threads(threads)
    runs = result["runs"]
    assert [r["method"] for r in runs] == ["GRPO", "PAFT q=0.75"]
    assert all([p["step"] for p in r["trace"]] == [0, 1, 2] for r in runs)  # 0: each run's untrained model
    assert all(0 <= p["p@1"] <= 100 for r in runs for p in r["trace"])
    for r in runs:  # every sampled test answer sorted by kind, before and after training: 2 questions x 2 samples
        assert sorted(r["answers"]) == ["0", "2"] and all(sum(c.values()) == 4 for c in r["answers"].values())
        assert len(r["train_curve"][next(iter(r["train_curve"]))]) == 2  # the two training steps, no base row
    assert len(result["summary"]) == 2 and "| cold | GRPO |" in result["table"]
    assert "| cold | PAFT q=0.75 | 0 | before |" in result["kinds_table"]
    assert result["timing"]["cpu_seconds"] > 0 and not result["partial"]
    saved = json.loads((tmp_path / "heldout.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert (tmp_path / "heldout.png").exists() or "matplotlib" not in str(saved)
    replot = heldout.main(["--replot", "--out", str(tmp_path), "--no-figure-copy"])
    assert replot["table"] == result["table"] and replot["kinds_table"] == result["kinds_table"]


def test_merge_adds_seeds_and_refuses_other_settings_or_duplicate_runs():
    settings = {**{k: 1 for k in heldout.SHARED}, "methods": [["PAFT q=0.75", "paft", 0.75]]}
    run = lambda seed, method="PAFT q=0.75": {"kind": "run", "start": "cold", "method": method, "seed": seed,  # noqa: E731
                                              "trace": [{"step": 6, "p@1": 10.0, "maj@n": 10.0}]}
    a = {"settings": settings, "runs": [run(0)], "partial": False}
    b = {"settings": dict(settings), "runs": [run(1)], "partial": True, "timing": None}
    merged = heldout.merge(a, b, "b")
    assert [r["seed"] for r in merged["runs"]] == [0, 1] and merged["partial"] and merged["merged_from"][0]["jobs"] == 1
    # another experiment's methods (the related ones) join the tables
    c = {"settings": dict(settings, methods=[["LaTRO", "latro", 0.0]]), "runs": [run(0, "LaTRO")], "partial": False}
    assert heldout.merge(a, c, "c")["settings"]["methods"] == [["PAFT q=0.75", "paft", 0.75], ["LaTRO", "latro", 0.0]]
    again = heldout.merge(merged, b, "b")  # the same run twice, same numbers: kept once
    assert len(again["runs"]) == 2 and again["merged_from"][-1]["identical_repeats"] == [("run", "cold", "PAFT q=0.75", 1)]
    other = dict(b, runs=[dict(run(1), trace=[{"step": 6, "p@1": 0.0, "maj@n": 0.0}])])
    with pytest.raises(SystemExit, match="other numbers"):
        heldout.merge(merged, other, "b")
    with pytest.raises(SystemExit, match="different settings"):
        heldout.merge(a, dict(b, settings=dict(settings, lr=2)), "c")
