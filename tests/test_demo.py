"""Tests for demo.py: the secret-code task, the base model's copy habit, p0, and a 2-step smoke run."""
import builtins
import json

import pytest
import torch

from experiments import demo
import models
import rewards


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The demo runs on one thread (demo.main sets it); two threads make this tiny model 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_task_is_deterministic_and_gold_answers_are_the_keys_codes():
    codes, train, val = demo.make_task(seed=0, n_keys=2)
    assert demo.make_task(seed=0, n_keys=2) == (codes, train, val)
    assert demo.make_task(seed=1, n_keys=2)[0] != codes
    assert len(set(codes.values())) == len(codes) == 2
    for ex in train + val:
        assert ex["answer"] == codes[ex["context"]]  # the gold is a function of the prompt's key
        assert set(ex) == {"id", "question", "context", "answer", "aliases"}
    assert {ex["context"] for ex in train} == set(codes)  # every key is trained on
    for code in codes.values():
        assert len(code) == demo.CODE_LEN and set(code) <= set(demo.ALPHABET) and code in demo.RATIONALES
        assert rewards.normalize_answer(code) == code  # GRPO's exact match and the eval score it as written
    # The layout the trainer teacher-forces: the answer after "</think>" is the code, extracted intact.
    tok = models.build_tiny_tokenizer()
    text = demo.format_string(tok, "red", "qk", codes["red"])
    assert text.endswith("<think>\nqk</think>\n\n" + codes["red"])
    assert rewards.extract_answer(text) == codes["red"]
    assert len(demo.RATIONALES) == len(set(demo.RATIONALES)) == len(demo.ALPHABET) ** 2


@pytest.fixture(scope="module")
def base():
    """A shorter pretraining than the demo's 600 steps (which reaches p(copy) ~ 0.96 in ~25 s), to keep
    this file fast: 250 steps already copy far above chance."""
    tok = models.build_tiny_tokenizer()
    return tok, demo.pretrain_base(tok, n_keys=2, steps=250)


def test_p0_is_measured_and_at_most_1e_3(base):
    tok, model = base
    codes, _, _ = demo.make_task(seed=0, n_keys=2)
    torch.manual_seed(0)
    m = demo.measure(model, tok, codes, think_budget=2, samples=64)
    assert m["P"] <= 1e-3  # a cold start: p0 of 1e-3 or less
    assert set(m["per_key"]) == set(codes) and all(v["P"] <= 1e-3 for v in m["per_key"].values())
    # The rationale is a uniform guess: p(z = code) ~ 1/35^2, and P contains the guess-then-copy term.
    assert 0.5 / 35**2 < m["p_code_rationale"] < 2 / 35**2 and m["p_canonical"] > 0.9
    assert m["P"] >= m["p_code_rationale"] * m["p_y_code_rationale"]
    # The rationale helps: naming the code makes y* >100x likelier than p0, and than a wrong code.
    assert m["p_y_code_rationale"] > 100 * m["P"] and m["p_y_code_rationale"] > 100 * m["p_y_wrong_rationale"]
    untrained = demo.measure(models.build_tiny_model(tok), tok, codes, think_budget=2, samples=8)
    assert untrained["P"] < 1e-6 and untrained["copy"] < 1e-6


@torch.no_grad()
def test_copy_measurement_matches_a_direct_forward(base):
    """p(answer = r | x, r) for all 35^2 rationales r, from plain full-sequence logits."""
    tok, model = base
    codes, _, _ = demo.make_task(seed=0, n_keys=2)
    torch.manual_seed(0)
    m = demo.measure(model, tok, {"red": codes["red"]}, think_budget=2, samples=8)
    prompt = tok(demo.prompt_text(tok, "red"), add_special_tokens=False).input_ids
    seqs = [prompt + tok(r + "</think>\n\n" + r, add_special_tokens=False).input_ids + [tok.eos_token_id]
            for r in demo.RATIONALES]  # all the same length: 2 + 1 + 2 + 2 + 1 tokens after the prompt
    ids = torch.tensor(seqs)  # [35^2, T]
    logp = model(input_ids=ids).logits.float().log_softmax(-1)  # [35^2, T, V]
    answer = slice(len(prompt) + 3, ids.shape[1])  # "\n\n", r, EOS: the teacher-forced y
    tok_logp = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # [35^2, T-1]: log p(token t+1 | ..t)
    copy = tok_logp[:, answer.start - 1:answer.stop - 1].sum(-1).exp()  # [35^2]
    assert m["copy"] == pytest.approx(copy.mean().item(), rel=1e-4)
    assert m["copy"] > 0.1  # learned: chance is 1/35^2
    # p(z = code | x): the rationale's 2 tokens under the sampler's softmax (EOS banned while thinking).
    logits = model(input_ids=torch.tensor([prompt + tok(codes["red"], add_special_tokens=False).input_ids])).logits[0]
    logits[:, tok.eos_token_id] = float("-inf")
    z = tok(codes["red"], add_special_tokens=False).input_ids
    p_z = sum(logits[len(prompt) - 1 + j].log_softmax(-1)[t] for j, t in enumerate(z)).exp().item()
    assert m["p_code_rationale"] == pytest.approx(p_z, rel=1e-4)


def test_summary_median_counts_a_stall_as_infinity_and_classifies_each_key():
    end = {k: 0.5 for k in demo.ROUTE} | {"P": 0.5, "P_swapped": 0.3}
    per_key = {"red": end | {"P": 0.9, "P_swapped": 0.1}, "blue": end | {"P": 0.1, "P_swapped": 0.5}}
    scores = {"final_val_p@1": 50.0, "final_val_em@1": 50.0, "final_p_estimate": 0.5, "end": end,
              "end_per_key": per_key}
    collapsed = {"red": end | {"P": 1e-9}, "blue": end | {"P": 2e-4}}  # 1e-9 < 1e-2 p0; 2e-4 is a stall
    runs = [{"method": "GRPO", "optimizer": "sgd", "escape_step": e, **scores} for e in (10, None, 30)]
    runs += [{"method": "GARL q=1", "optimizer": "sgd", "escape_step": e, **scores} for e in (None, None)]
    runs += [{"method": "GARL q=1", "optimizer": "sgd", "escape_step": 5, **scores, "end_per_key": collapsed}]
    rows = {r["method"]: r for r in demo.summarize(runs, {"red": 7.5e-4, "blue": 7.5e-4})}
    assert rows["GRPO"]["median_escape_step"] == 30 and rows["GRPO"]["escaped"] == 2
    assert rows["GARL q=1"]["median_escape_step"] is None and rows["GARL q=1"]["escaped"] == 1
    # Counted per (run, key): only "red" is solved (P >= 0.5), and its answer reads the rationale.
    assert rows["GRPO"]["solved_keys"] == rows["GRPO"]["solved_via_rationale"] == 3
    assert (rows["GRPO"]["solved_keys"], rows["GRPO"]["stall_keys"], rows["GRPO"]["collapse_keys"]) == (3, 3, 0)
    assert rows["GARL q=1"]["outcomes"][2] == ["collapse", "stall"]
    assert (rows["GARL q=1"]["solved_keys"], rows["GARL q=1"]["stall_keys"], rows["GARL q=1"]["collapse_keys"]) == (2, 3, 1)
    assert [demo.outcome(p, 1e-3) for p in (0.5, 0.49, 1e-5, 0.99e-5)] == ["solved", "stall", "stall", "collapse"]


def test_two_step_smoke_run_writes_the_json(tmp_path, capsys):
    methods = "GRPO,GARL q=1 score-only,PAFT q=1"  # every estimator (GARL via its ablation flag)
    result = demo.main(["--out", str(tmp_path), "--steps", "2", "--seeds", "1", "--pretrain-steps", "5",
                        "--p0-samples", "8", "--methods", methods, "--no-figure-copy"])
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert {"settings", "codes", "base", "methods", "runs", "summary", "table_markdown"} <= set(saved)
    assert saved["methods"] == methods.split(",")
    assert len(saved["runs"]) == 3 * 2  # 3 methods x 2 optimizers x 1 seed
    for run in saved["runs"]:
        assert {"method", "optimizer", "seed", "curve", "curve_key", "escape_step", "final_p_estimate",
                "final_val_p@1", "final_val_em@1", "end", "end_per_key", "seconds"} <= set(run)
        assert set(demo.ROUTE) <= set(run["end"]) and set(run["end_per_key"]) == set(saved["codes"])
        assert len(run["curve"]) == 2
        assert run["curve_key"] == ("reward_mean" if run["method"] == "GRPO" else "w_bar_mean")
        assert (tmp_path / "runs" / run["optimizer"]).is_dir()
    for row in saved["summary"]:
        assert {"method", "optimizer", "escape_steps", "median_escape_step", "escaped", "final_val_p@1", "end",
                "solved_keys", "solved_via_rationale"} <= set(row)
    assert saved["settings"]["lr"] == demo.LR and saved["settings"]["think_budget"] == 2
    assert 0 < saved["base"]["P"] and {"copy", "p_code_rationale", "P_swapped"} <= set(saved["base"])
    assert saved["table_markdown"].count("| GRPO |") == 4  # two tables, two optimizers
    for row in saved["summary"]:
        assert row["solved_keys"] + row["stall_keys"] + row["collapse_keys"] == 2 * row["seeds"]
    # --replot recomputes the summary and the tables from the saved runs, without training
    replot = demo.main(["--out", str(tmp_path), "--replot", "--no-figure-copy"])
    assert replot["summary"] == saved["summary"] and replot["table_markdown"] == saved["table_markdown"]
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "demo.png").is_file()
    except ImportError:
        assert "demo.png skipped" in capsys.readouterr().out


def test_plot_is_skipped_with_one_line_without_matplotlib(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert demo.plot([], {"lr": demo.LR, "seeds": 1}, 1e-4, tmp_path / "demo.png") is False
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("demo.png skipped")
    assert not (tmp_path / "demo.png").exists()
