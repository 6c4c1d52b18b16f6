"""Tests for experiments/tradeoff.py: the noise task, Prop. C.2's prediction, chunked training, the probes, a smoke run."""
import argparse
import json
import math

import pytest
import torch

import models
from experiments import demo, theory, tradeoff


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The experiment runs on one thread per process; two make this tiny model ~10x slower."""
    before = torch.get_num_threads()
    tradeoff.init_worker(1)
    yield
    torch.set_num_threads(before)


def test_noise_task_has_exactly_eps_noisy_questions_per_key_and_distinct_codes():
    true, noise = tradeoff.noise_codes(0)
    assert tradeoff.noise_codes(0) == (true, noise) and set(true) == set(noise) == set(tradeoff.NOISE_KEYS)
    assert len(set(true.values()) | set(noise.values())) == 2 * len(true)  # every code distinct
    for eps in tradeoff.NOISE_EPS:
        ex = tradeoff.noise_examples(true, noise, eps)
        for key in true:
            golds = [e["answer"] for e in ex if e["context"] == key]
            assert len(golds) == tradeoff.PER_KEY
            assert golds.count(noise[key]) == round(eps * tradeoff.PER_KEY) and set(golds) == {true[key], noise[key]}
        assert len({e["id"] for e in ex}) == len(ex)
    with pytest.raises(ValueError, match="whole number"):
        tradeoff.noise_examples(true, noise, 0.1, per_key=4)


@pytest.mark.parametrize("eps", [0.1, 0.25])
@pytest.mark.parametrize("q", [0.25, 0.5, 0.75, 1.0])
def test_predicted_contamination_is_the_minimizer_of_the_expected_loss(eps, q):
    """The formula the docs compare against is the numerical minimizer of (1-eps) l_q(pi) + eps l_q(1-pi)."""
    odds, formula = theory.noise_equilibrium(eps, q)
    assert odds == pytest.approx(formula, rel=1e-6)
    assert tradeoff.predicted_contamination(eps, q) == pytest.approx(odds / (1 + odds), rel=1e-6)
    assert tradeoff.predicted_contamination(eps, 0.0) == 0.0


def test_stops_and_summaries_of_synthetic_runs():
    assert tradeoff.stops_every(12, 5, dense_until=4, dense_every=2) == [2, 4, 5, 10, 12]
    assert tradeoff.stops_every(3, 20) == [3]
    # Noise: contamination = odds averaged in log space over keys and the window, as odds/(1+odds).
    pts = [{"step": s, "P": {"red": [0.9, 0.9 * o], "blue": [0.5, 0.5 * o * 100]}} for s, o in ((10, 1e-2), (20, 1e-4))]
    c, per_key = tradeoff.geo_odds({"trace": pts}, window=2)
    assert c == pytest.approx(1e-2 / (1 + 1e-2), rel=1e-9)  # log-mean of 1e-2, 1e-4, 1, 1e-2
    assert per_key["red"] == pytest.approx(1e-3 / (1 + 1e-3), rel=1e-9)
    # Mixed: escape = first measured step with P >= 0.5; a non-escape counts as infinity in the median.
    def run(seed, easy, hard):
        trace = [{"step": s, "P": {tradeoff.EASY: [e], tradeoff.HARD: [h]}} for s, e, h in zip((2, 4, 6), easy, hard)]
        return {"method": "GARL q=1", "optimizer": "sgd", "seed": seed, "steps": 6, "trace": trace}
    p0 = {tradeoff.EASY: 0.1, tradeoff.HARD: 1e-3}
    runs = [run(0, [0.2, 0.6, 0.9], [1e-3, 0.1, 0.7]), run(1, [0.7, 0.9, 0.4], [1e-3, 1e-6, 1e-6]),
            run(2, [0.1, 0.1, 0.9], [1e-3, 2e-3, 3e-4])]
    row = tradeoff.mixed_summary(runs, p0, [("GARL q=1", "garl", 1.0)])[0]
    assert row["easy"]["escape_steps"] == [4, 2, 6] and row["easy"]["median_escape_step"] == 4
    assert row["hard"]["escape_steps"] == [6, None, None] and row["hard"]["median_escape_step"] is None
    assert row["hard"]["outcomes"] == ["solved", "collapse", "stall"]  # 1e-6 < 1e-2 * p0; 3e-4 is not
    assert row["easy"]["outcomes"] == ["solved", "stall", "solved"]  # ended at 0.4 after escaping: not solved


@pytest.fixture(scope="module")
def noise_base():
    """A noise base model pretrained briefly (the experiment uses 300 steps)."""
    true, noise = tradeoff.noise_codes(0)
    tok = models.build_tiny_tokenizer()
    return tok, tradeoff.noise_base(tok, true, 40), true, noise


def test_answer_probs_is_seeded_leaves_the_rng_alone_and_matches_a_direct_estimate(noise_base):
    tok, model, true, noise = noise_base
    answers = {"red": [true["red"], noise["red"]]}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = tradeoff.answer_probs(model, tok, answers, 2, 8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is untouched
    assert a == tradeoff.answer_probs(model, tok, answers, 2, 8, seed=5)
    # Direct: the same 8 rationales (same seed), each full sequence scored by a plain forward pass.
    tokens = tradeoff.rollout.SpecialTokens.of(tok, model.generation_config)
    prompt = tok(demo.prompt_text(tok, "red"), add_special_tokens=False).input_ids
    with torch.random.fork_rng():
        torch.manual_seed(5)
        drawn = tradeoff.rollout.generate(model, [prompt], 8, tokens, 2)[0]
    for j, code in enumerate(answers["red"]):
        w = []
        for s in drawn:
            y = tradeoff.gold_ids(tok, code)
            ids = torch.tensor([s.ids + y])  # [1, T]
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # [T-1, V]
            start = len(s.ids) - 1
            w.append(sum(logp[start + i, t].item() for i, t in enumerate(y)))
        assert a["red"][j] == pytest.approx(sum(math.exp(v) for v in w) / len(w), rel=1e-4)


def test_adam_probe_divides_by_the_bias_corrected_second_moment(noise_base, tmp_path):
    tok, model, true, _ = noise_base
    params = [p for p in model.parameters() if p.requires_grad]
    v, step, betas, eps = 4.0, 3, (0.9, 0.999), 1e-8
    state = {"optimizer": {"state": {i: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(p),
                                         "exp_avg_sq": torch.full_like(p, v)} for i, p in enumerate(params)},
                           "param_groups": [{"betas": betas, "eps": eps}]}}
    (tmp_path / "latest").mkdir()
    torch.save(state, tmp_path / "latest" / "trainer_state.pt")
    args = argparse.Namespace(out=str(tmp_path), B=4, M=8)
    for q in (0.0, 1.0):
        probe = tradeoff.adam_probe(model, tok, {"red": true["red"]}, q, args, 2, 8, seed=0)["red"]
        v_hat = v / (1 - betas[1] ** step)
        assert probe["sgd"] > 0  # also at q = 0, where float32 would give an exactly-zero gradient at small P
        assert probe["adam"] == pytest.approx(probe["sgd"] / (math.sqrt(v_hat) + eps), rel=1e-6)


def test_chunked_training_is_the_uninterrupted_run(tmp_path):
    """--resume between chunks restores Adam's moments, the data order and the RNG: same metrics, same model."""
    tok = tradeoff.WORKER["tokenizer"]
    codes, train_ex, val_ex = demo.make_task(0, 2)
    base = demo.pretrain_base(tok, 2, 30)
    cfg = {"M": 4, "B": 2, "think_budget": 2, "answer_budget": 5, "hidden": 64, "layers": 2}
    job = {"experiment": "mixed", "method": ("GARL q=0.5", "garl", 0.5), "optimizer": "adamw", "lr": 3e-3,
           "grad_clip": 1.0, "seed": 0, "base": "mixed", "base_state": base.state_dict(), "train": train_ex,
           "val": val_ex[:1], "answers": {k: [c] for k, c in codes.items()}, "samples": 4, "probe": False, "cfg": cfg}
    whole = tradeoff.run_job(dict(job, stops=[4], out=str(tmp_path / "whole")))
    chunked = tradeoff.run_job(dict(job, stops=[1, 2, 4], out=str(tmp_path / "chunked")))
    assert chunked["curve"] == whole["curve"] and chunked["grad_norm"] == whole["grad_norm"]
    assert len(whole["curve"]) == 4 and chunked["trace"][-1]["P"] == whole["trace"][-1]["P"]
    assert [pt["step"] for pt in chunked["trace"]] == [1, 2, 4]


def test_pretraining_in_worker_processes_gives_the_same_weights():
    """--workers 2 runs jobs in spawned processes: the results are those of --workers 1, in job order."""
    true, noise = tradeoff.noise_codes(0)
    jobs = [{"base": "noise_below", "steps": 2, "true": true, "noise": noise},
            {"base": "noise_above", "steps": 3, "true": true, "noise": noise}]
    here = tradeoff.run_jobs(None, tradeoff.pretrain_job, jobs, 0.0)
    pool = tradeoff.make_pool(2)
    try:
        there = tradeoff.run_jobs(pool, tradeoff.pretrain_job, jobs, 0.0)
    finally:
        pool.shutdown()
    for a, b in zip(here, there):
        assert a["base"] == b["base"] and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def test_smoke_run_writes_the_json_tables_and_figure(tmp_path, capsys):
    methods = "GARL q=0,PAFT q=1"
    result = tradeoff.main(["--out", str(tmp_path), "--seeds", "2", "--noise-seeds", "1", "--adamw-steps", "2",
                            "--sgd-steps", "2", "--noise-steps", "2", "--pretrain-steps", "5",
                            "--noise-pretrain-steps", "5", "--methods", methods, "--noise-qs", "0,1",
                            "--workers", "1", "--no-figure-copy"])
    saved = json.loads((tmp_path / "tradeoff.json").read_text())
    assert saved["tables"] == result["tables"]
    assert len(saved["runs"]) == 2 * 2 * 2 + 2 * 3  # mixed: 2 methods x 2 optimizers x 2 seeds; noise: 2 q x 3 (start, eps)
    assert [(r["optimizer"], r["method"]) for r in saved["mixed_summary"]] == [
        (o, m) for o in ("adamw", "sgd") for m in methods.split(",")]
    for row in saved["mixed_summary"]:
        for group in ("easy", "hard"):
            assert len(row[group]["escape_steps"]) == len(row[group]["outcomes"]) == 2
        assert ("adam_probe" in row["hard"]) == (row["optimizer"] == "adamw")
    starts = {(r["start"], r["eps"]) for r in saved["noise_summary"]}
    assert starts == {("above", 0.1), ("above", 0.25), ("below", 0.25)}
    for r in saved["noise_summary"]:
        assert r["predicted"] == tradeoff.predicted_contamination(r["eps"], r["q"]) and len(r["measured"]) == 1
    assert set(saved["p0"]) == {tradeoff.EASY, tradeoff.HARD} and saved["settings"]["noise"]["window"] == [2]
    assert "| above | 0.25 | 1 | 0.25 |" in saved["tables"] and "| PAFT q=1 |" in saved["tables"]
    replot = tradeoff.main(["--out", str(tmp_path), "--replot", "--no-figure-copy"])
    assert replot["tables"] == saved["tables"]
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "tradeoff.png").is_file()
    except ImportError:
        assert "tradeoff.png skipped" in capsys.readouterr().out


def test_bad_flags_fail_with_the_flag_name(capsys):
    for argv, flag in ((["--methods", "GARL q=2"], "--methods"), (["--noise-qs", "0.5,x"], "--noise-qs"),
                       (["--noise-qs", "1.5"], "--noise-qs"), (["--seeds", "0"], "--seeds")):
        with pytest.raises(SystemExit):
            tradeoff.parse_args(argv)
        assert flag in capsys.readouterr().err
