r"""Does a real language model get better on questions it never saw, trained from question/answer pairs alone?

    python experiments/heldout.py                 # the reported experiment (see docs/heldout.md for its time)
    python experiments/heldout.py --quick         # 1 seed, 2 methods, a few steps: a look in minutes, not the numbers
    python experiments/heldout.py --replot        # the table and the figure again from OUT/heldout.json

The task: experiments/synth_musique.py's questions about fictional people ("Where was Dovamir born?"),
four people per question, each born in a different town, so that the answer is in the context but
pretraining cannot know it. The model: SmolLM2-135M-Instruct (--model smollm2). Every run trains on
FRESH generated questions (one step's questions are never seen again, the test rows never) and is
measured on a fixed test set (samples/synth_musique_test.jsonl, the generator's test split) that it
never trains on: held-out p@1 and maj@n (eval.py's number-safe match), before training (each run's own
validation at step 0: train.py --eval-first) and every --eval-every steps. Every sampled answer is kept
(train.py writes DIR/predictions/), so that wrong answers can be sorted by kind (answer_kind).

Methods (all through train.train, the trainer every other run uses; every setting the same except the
estimator and q): GRPO (the RLVR baseline: reward = exact match of the model's own answer), GARL q = 0
(VeriFree's estimator), GARL q = 0.75, PAFT q = 0.75, PAFT q = 1. Starts: cold (the linearized prompt:
no instruction, so P = p(y*|x) is tiny) and warm (task description and answer format). Seeds change
the training questions' order and the sampling; the base model is the same.

    job           what it does                                                              result
    run(m, s, k)  train.train(method m, start s, seed k), validating on the test set        p@1, maj@n at step 0
                  before the first step and every --eval-every steps (train.py's own        and every --eval-every
                  validation, logged to metrics)                                            steps; wrong answers

Per run (defined before the reported runs, docs/heldout.md): the best held-out p@1 and its step, the last
p@1, the ESCAPE step (the first whose training batch has w_bar >= ESCAPE_W; GRPO: reward > 0) and a
COLLAPSE (a later step whose batch has w_bar < COLLAPSE_W, after it had passed ESCAPE_W; not defined for
GRPO, whose reward is 0 or a multiple of 1/(B M)).

Jobs run in --workers processes, 1 torch thread each (as experiments/tradeoff.py); each process loads
the model once and restores its base weights before every job. CPU time is measured per job
(time.process_time) and for the whole experiment (resource.getrusage of this process and its workers),
next to the wall time: on a shared machine only the CPU time says what the experiment costs alone.
"""
import argparse
import contextlib
import io
import json
import multiprocessing
import re
import resource
import shutil
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the library is the top-level folder

import torch

import data
import models
import prompts
import related
import rewards
import train
from experiments import synth_musique

TEST_FILE = REPO / "samples" / "synth_musique_test.jsonl"
# (name, estimator, q). Project choice for "q = 1": PAFT, the cheaper of the two (SFT on resampled rationales).
METHODS = [("GRPO", "grpo", 0.0), ("GARL q=0", "garl", 0.0), ("GARL q=0.75", "garl", 0.75),
           ("PAFT q=0.75", "paft", 0.75), ("PAFT q=1", "paft", 1.0)]
# The related methods (related.py, docs/related.md), run with --methods NAME,...; "all" is the five above.
RELATED = [("LaTRO", "latro", 0.0), ("MaxRL", "maxrl", 0.0), ("GRPO-soft", "grpo-soft", 0.0), ("RLPR", "rlpr", 0.0)]
STARTS = ("cold", "warm")
# The generator's settings for the shipped test file and the training questions (docs/heldout.md: the pilots
# that chose them). Changing them changes the test file: tests/test_heldout.py checks it is reproducible.
# --quick: the defaults it changes (a look at the pipeline in a few minutes, not the reported numbers).
QUICK = {"seeds": 1, "steps": 2, "B": 2, "eval_every": 1, "test_questions": 4, "methods": "GRPO,PAFT q=0.75"}
# A run "rises" when its last held-out p@1 is at least RISE points above the base model's: with 12 questions x 4
# samples one seed's p@1 moves by several points between two evaluations of the same model (GRPO's unchanged
# model, docs/heldout.md), so smaller gains are not read as learning. An ordering of two methods is stated only
# when it holds in every one of at least MIN_SEEDS shared seeds.
RISE, MIN_SEEDS = 10.0, 3
GENERATOR = {"seed": 0, "two_hop": 0.0, "people": 4, "val": 64, "test": 64}
# Escape and collapse, on the training batch's w_bar (fresh questions every step): escaped once w_bar passes
# ESCAPE_W; collapsed when, after that, a step's w_bar falls below COLLAPSE_W (a hundred times lower).
ESCAPE_W, COLLAPSE_W = 1e-2, 1e-4
PANELS_PER_ROW = 5  # the figure: the five methods in a row; the related ones (docs/related.md) on the next


# ------------------------------------------------------------------------------------------------ data
def make_data(out: Path, train_rows: int) -> dict:
    """Generate train/val/test with GENERATOR's settings into out; return {split: path}.

    The test split is the shipped samples/synth_musique_test.jsonl (checked byte for byte: a generator
    change that moved the test set would silently change what the experiment measures).
    Example: make_data(Path("runs/heldout/data"), 2000) -> {"train": .../train.jsonl, "val": ..., "test": ...}
    """
    g = GENERATOR
    rows = synth_musique.generate({"train": train_rows, "val": g["val"], "test": g["test"]}, g["seed"],
                                  g["two_hop"], g["people"])
    paths = synth_musique.write(rows, out)
    if TEST_FILE.exists() and paths["test"].read_bytes() != TEST_FILE.read_bytes():
        raise SystemExit(f"the generator no longer reproduces {TEST_FILE}: regenerate it (and say so in SOURCES.md)")
    return paths


# ------------------------------------------------------------------------------------------------ one job
WORKER = {}  # per process: the model, its tokenizer and the base weights (set by init_worker)


def init_worker(model_name: str, threads: int = 1):
    """Load the model once per process; every job restores its base weights from WORKER["base"]."""
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)  # the tiny model is built from a seed
    model, tok = models.load_model(model_name)
    WORKER.update(model=model, tokenizer=tok, base={k: v.clone() for k, v in model.state_dict().items()})


def flags(job: dict) -> list[str]:
    """train.py's command line for one run: the shared settings, then the method and the seed."""
    cfg = job["cfg"]
    return ["--task", "musique", "--data", job["train_file"], "--model", cfg["model"], "--start", job["start"],
            "--estimator", job["estimator"], "--q", str(job["q"]), "--M", str(cfg["M"]), "--B", str(cfg["B"]),
            "--micro-batch", str(cfg["B"] * cfg["M"]), "--gen-batch", "0", "--think-budget", str(cfg["think_budget"]),
            "--answer-budget", str(cfg["answer_budget"]), "--lr", str(cfg["lr"]), "--steps", str(cfg["steps"]),
            "--eval-every", str(cfg["eval_every"]), "--eval-n", str(cfg["eval_n"]),
            "--eval-batch", str(cfg["eval_batch"]), "--context-chars", "0", "--precision", "fp32",
            "--no-grad-ckpt", "--no-checkpoints", "--seed", str(job["seed"]), "--out", job["out"]]


def run_job(job: dict) -> dict:
    """One training run; returns its trace, its training curve, its wrong answers and its cost.

    trace: [{"step", "p@1", "maj@n", "forced_frac"}] on the test set, from step 0 (the untrained model,
    train.py's --eval-first validation under this run's seed) to the last step.
    answers: {step: {kind: count}} over every sampled test answer at step 0 and at the last step (answer_kind).
    """
    model, tok, cfg = WORKER["model"], WORKER["tokenizer"], job["cfg"]
    model.load_state_dict(WORKER["base"])  # every job starts from the untrained model
    test = job["test"]
    wall, cpu = time.perf_counter(), time.process_time()
    n = cfg["eval_n"]
    out = Path(job["out"])
    shutil.rmtree(out, ignore_errors=True)  # train.py refuses to overwrite a run
    train_examples = data.load_examples("musique", path=job["train_file"])
    args = train.parse_args(flags(job))
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's progress bars are noise here
        train.train(args, model, tok, train_examples, test)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trace = [{"step": r["step"] + 1, "p@1": r["val/p@1"], "maj@n": r[f"val/maj@{n}"],
              "forced_frac": r["val/forced_frac"]} for r in rows if "val/p@1" in r]
    steps = [r for r in rows if r["step"] >= 0]  # the training steps (step -1: the base validation)
    key = "reward_mean" if related.verified(job["estimator"]) else "w_bar_mean"
    by_id = {ex["id"]: ex for ex in test}
    answers = {}
    for point in (trace[0], trace[-1]):
        predictions = [json.loads(line) for line in
                       (out / "predictions" / f"step-{point['step']:06d}.jsonl").read_text().splitlines()]
        answers[str(point["step"])] = answer_kinds(predictions, by_id, job["start"])  # str: a JSON key
    return {"kind": "run", "method": job["method"], "estimator": job["estimator"], "q": job["q"],
            "start": job["start"], "seed": job["seed"], "trace": trace, "answers": answers,
            "train_curve": {key: [r[key] for r in steps]}, "think_tokens": [r["think_tokens_mean"] for r in steps],
            "seqs_in_grad_pass": [r["seqs_in_grad_pass"] for r in steps],
            "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


# ------------------------------------------------------------------------------------------------ wrong answers
ANSWER_KINDS = ("correct", "distractor town", "echo", "a person", "other context words", "made up", "empty")


def answer_kind(answer: str, example: dict, start: str = "warm") -> str:
    """What a sampled answer to a fictional one-hop question is, checked in ANSWER_KINDS' order:
    empty, correct (eval.py's match), another town of the same context (a distractor), an echo of the
    prompt (3 words in a row from the instruction or the question), a person of the context, other words
    of the context (e.g. "a teacher"), made up (nothing of the above).

    >>> ex = {"answer": "Dozadale", "aliases": [], "question": "Where was Tanno born?",
    ...       "context": "Tanno: Tanno was born in Dozadale. Tanno works as a teacher.\\n\\nRado: Rado was born in Batorvik."}
    >>> [answer_kind(a, ex) for a in ["Dozadale.", "Batorvik", "Tanno", "Where was Tanno born", "teacher", "Kelsa", " "]]
    ['correct', 'distractor town', 'a person', 'echo', 'other context words', 'made up', 'empty']
    """
    words = re.findall(r"\w+", answer.lower())
    if not words:
        return "empty"
    if rewards.substring_match(answer, [example["answer"]] + example["aliases"]):
        return "correct"
    context = example["context"]
    towns = set(re.findall(r"born in (\w+)", context)) - {example["answer"]}
    if rewards.substring_match(answer, sorted(towns)):
        return "distractor town"
    prompt = re.findall(r"\w+", prompts.user_message(example, "musique", start).replace(context, " ").lower())
    if {tuple(words[i:i + 3]) for i in range(len(words) - 2)} & {tuple(prompt[i:i + 3]) for i in range(len(prompt) - 2)}:
        return "echo"
    people = set(re.findall(r"(\w+) was born in", context))
    if rewards.substring_match(answer, sorted(people)):
        return "a person"
    if set(words) & set(re.findall(r"\w+", context.lower())):
        return "other context words"
    return "made up"


def answer_kinds(predictions: list[dict], by_id: dict, start: str) -> dict:
    """{kind: count} over every sampled answer of one validation's predictions (eval.py's rows)."""
    counts = dict.fromkeys(ANSWER_KINDS, 0)
    for row in predictions:
        for answer in row["answers"]:
            counts[answer_kind(answer, by_id[row["id"]], start)] += 1
    return counts


def escape_and_collapse(curve: list[float], grpo: bool) -> tuple[int | None, int | None]:
    """(escape step, collapse step), steps counted from 1, from a run's training-batch curve (w_bar; GRPO: reward).

    >>> escape_and_collapse([1e-8, 3e-3, 0.05, 0.2, 5e-5, 0.1], grpo=False)
    (3, 5)
    >>> escape_and_collapse([0.0, 0.0, 0.0625, 0.0], grpo=True)
    (3, None)
    """
    if grpo:
        return next((i + 1 for i, r in enumerate(curve) if r > 0), None), None
    escape = next((i for i, w in enumerate(curve) if w >= ESCAPE_W), None)
    if escape is None:
        return None, None
    collapse = next((i + 1 for i, w in enumerate(curve[escape:], escape) if w < COLLAPSE_W), None)
    return escape + 1, collapse


def make_pool(workers: int, model_name: str):
    """`workers` spawned processes, 1 torch thread each (None for 1 worker: jobs run in this process)."""
    if workers == 1:
        init_worker(model_name)
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                               initargs=(model_name,))


def run_jobs(pool, jobs: list[dict], t0: float, save=None) -> list[dict]:
    """run_job for every job, on the pool (or here), printing each as it ends (and passing the results so
    far to save); returns the results in job order."""
    done = []

    def report(r):
        done.append(r)
        if save is not None:
            save(done)
        pts = " ".join(f"{p['step']}:{p['p@1']:.1f}" for p in r["trace"])
        print(f"  {r['start']:4s} {r['method']:12s} seed {r['seed']}: p@1 by step {pts}  "
              f"({r['wall_seconds']:.0f}s wall, {r['cpu_seconds']:.0f}s cpu)  [{time.perf_counter() - t0:.0f}s]",
              flush=True)
        return r

    if pool is None:
        return [report(run_job(job)) for job in jobs]
    results = [None] * len(jobs)
    futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
    for f in as_completed(futures):
        results[futures[f]] = report(f.result())
    return results


# ------------------------------------------------------------------------------------------------ summaries
def summarize(runs: list[dict], methods: list[str], starts: list[str]) -> list[dict]:
    """Per (start, method): every seed's base (step 0), best (and its step) and last p@1 / maj@n, their mean
    and range, how many seeds end at least RISE points above their own base, and escapes and collapses.

    >>> runs = [{"kind": "run", "start": "cold", "method": "X", "seed": s, "estimator": "garl",
    ...          "trace": [{"step": 0, "p@1": 1.0, "maj@n": 0.0}, {"step": 5, "p@1": v, "maj@n": v},
    ...                    {"step": 10, "p@1": v / 2, "maj@n": v}], "train_curve": {"w_bar_mean": [1e-3, 0.1]}}
    ...         for s, v in enumerate([28.0, 1.0, 32.0])]
    >>> row = summarize(runs, ["X"], ["cold"])[0]
    >>> row["p@1"], row["p@1_best"], row["p@1_best_step"], row["above_base"], row["escape_step"]
    ([14.0, 0.5, 16.0], [28.0, 1.0, 32.0], [5, 0, 5], 2, [2, 2, 2])
    """
    rows = []
    for start in starts:
        for method in methods:
            mine = sorted((r for r in runs if r["kind"] == "run" and r["start"] == start and r["method"] == method),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            row = {"start": start, "method": method, "seeds": [r["seed"] for r in mine],
                   "step": mine[0]["trace"][-1]["step"]}
            for key in ("p@1", "maj@n"):
                last = [r["trace"][-1][key] for r in mine]
                row[key], row[f"{key}_mean"], row[f"{key}_range"] = last, statistics.mean(last), [min(last), max(last)]
                row[f"base_{key}"] = [r["trace"][0][key] for r in mine]
                best = [max(r["trace"], key=lambda p: p[key]) for r in mine]  # the first step at the maximum
                row[f"{key}_best"], row[f"{key}_best_step"] = [p[key] for p in best], [p["step"] for p in best]
                row[f"{key}_by_step"] = [[[p["step"], p[key]] for p in r["trace"]] for r in mine]
            row["above_base"] = sum(v >= b + RISE for v, b in zip(row["p@1"], row["base_p@1"]))
            marks = [escape_and_collapse(curve, key == "reward_mean") for r in mine for key, curve in r["train_curve"].items()]
            row["escape_step"], row["collapse_step"] = [m[0] for m in marks], [m[1] for m in marks]
            rows.append(row)
    return rows


def orderings(runs: list[dict], methods: list[str], starts: list[str], min_seeds: int = MIN_SEEDS) -> list[dict]:
    """Pairs of methods whose last p@1 is ordered the same way in EVERY seed, given at least min_seeds shared
    seeds (seeds share the questions' order across methods, so seed k of one method meets seed k of the other).

    >>> runs = [{"kind": "run", "start": "cold", "method": m, "seed": s, "trace": [{"p@1": v}]}
    ...         for m, vals in (("A", [5, 6, 9]), ("B", [1, 7, 2]), ("C", [0, 0, 1])) for s, v in enumerate(vals)]
    >>> [(o["above"], o["below"], o["separated"]) for o in orderings(runs, ["A", "B", "C"], ["cold"])]
    [('A', 'C', True), ('B', 'C', False)]
    """
    out = []
    for start in starts:
        last = {m: {r["seed"]: r["trace"][-1]["p@1"] for r in runs
                    if r["kind"] == "run" and r["start"] == start and r["method"] == m} for m in methods}
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                seeds = sorted(set(last[a]) & set(last[b]))
                if len(seeds) < min_seeds:
                    continue
                wins = sum(last[a][s] > last[b][s] for s in seeds)
                if wins in (0, len(seeds)):
                    hi, lo = (a, b) if wins else (b, a)
                    if all(last[hi][s] > last[lo][s] for s in seeds):  # strict in every seed (no ties)
                        out.append({"start": start, "above": hi, "below": lo, "seeds": len(seeds),
                                    "separated": min(last[hi].values()) > max(last[lo].values())})
    return out


ADAM_EPS = 1e-8  # torch.optim.AdamW's default eps, which train.py keeps


def run_dir(out: Path, run: dict) -> Path:
    """Where a run's train.py output lives: OUT/runs/<start>/<method>/seed<k> (e.g. runs/cold/GARL_q0.75/seed0)."""
    return out / "runs" / run["start"] / run["method"].replace(" ", "_").replace("=", "") / f"seed{run['seed']}"


def gradient_scale(runs: list[dict], dirs: list[Path], n_params: int, steps: int = 3) -> list[dict]:
    """Per run, from its metrics.jsonl: the batch's w_bar and the gradient's RMS per parameter coordinate,
    grad_norm / sqrt(n_params) (before clipping), over the first `steps` steps, next to Adam's eps.

    Why: AdamW divides each coordinate's gradient by sqrt(v_hat) + eps, so a gradient far above eps gets a
    full-size step whatever its scale (P^(1-q) included), and only one at or below eps is damped. Example row:
    {"start": "cold", "method": "GARL q=0", "seed": 0, "w_bar": [6e-06, ...], "rms": [2.3e-07, ...]}.
    """
    rows = []
    for r in runs:
        if r["kind"] != "run":
            continue
        path = next((run_dir(d, r) / "metrics.jsonl" for d in dirs if (run_dir(d, r) / "metrics.jsonl").exists()), None)
        if path is None:
            continue
        m = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] >= 0][:steps]  # -1: no update
        key = "reward_mean" if related.verified(r["estimator"]) else "w_bar_mean"
        rows.append({"start": r["start"], "method": r["method"], "seed": r["seed"], key: [x[key] for x in m],
                     "rms": [x["grad_norm"] / n_params**0.5 for x in m]})
    order = [m[0] for m in METHODS + RELATED]
    return sorted(rows, key=lambda r: (STARTS.index(r["start"]), order.index(r["method"]), r["seed"]))


def gradient_table(rows: list[dict]) -> str:
    """The markdown table of gradient_scale's rows."""
    lines = [f"| start | method | seed | w_bar (GRPO: reward) at steps 1, 2, 3 | gradient RMS per coordinate at steps 1, 2, 3 "
             f"(Adam's eps: {ADAM_EPS:g}) |", "|---|---|---|---|---|"]
    for r in rows:
        first = r.get("w_bar_mean", r.get("reward_mean"))
        lines.append(f"| {r['start']} | {r['method']} | {r['seed']} | " + ", ".join(f"{v:.2g}" for v in first) + " | "
                     + ", ".join(f"{v:.1e}" for v in r["rms"]) + " |")
    return "\n".join(lines)


def table(summary: list[dict], eval_n: int) -> str:
    """The markdown table of docs/heldout.md, from the summary (no number written by hand)."""
    lines = [f"| start | method | seeds | p@1 at step 0 (base), per seed | best p@1 (step), per seed "
             f"| last p@1, per seed | last p@1: mean [min, max] | last maj@{eval_n}, per seed "
             f"| seeds >= {RISE:g} points above their base at the end | escape step (w_bar >= {ESCAPE_W:g}; "
             f"GRPO: reward > 0) | collapse step (w_bar < {COLLAPSE_W:g} after) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def each(values, fmt="{:.1f}"):
        return ", ".join("-" if v is None else fmt.format(v) for v in values)

    for r in summary:
        best = ", ".join(f"{v:.1f} ({s})" for v, s in zip(r["p@1_best"], r["p@1_best_step"]))
        lines.append(f"| {r['start']} | {r['method']} | {', '.join(map(str, r['seeds']))} | {each(r['base_p@1'])} "
                     f"| {best} | {each(r['p@1'])} | {r['p@1_mean']:.1f} [{r['p@1_range'][0]:.1f}, "
                     f"{r['p@1_range'][1]:.1f}] | {each(r['maj@n'])} | {r['above_base']}/{len(r['seeds'])} "
                     f"| {each(r['escape_step'], '{}')} | {each(r['collapse_step'], '{}')} |")
    return "\n".join(lines)


def kinds_table(runs: list[dict], methods: list[str], starts: list[str], seed: int = 0) -> str:
    """Wrong answers by kind (answer_kind), shares of every sampled test answer, before and after training,
    for one seed of every method."""
    lines = ["| start | method | seed | when | " + " | ".join(ANSWER_KINDS) + " |",
             "|---|---|---|---|" + "---|" * len(ANSWER_KINDS)]
    for start in starts:
        for method in methods:
            run = next((r for r in runs if r["kind"] == "run" and r["start"] == start and r["method"] == method
                        and r["seed"] == seed and "answers" in r), None)
            if run is None:
                continue
            for step, counts in run["answers"].items():
                total = sum(counts.values())
                when = "before" if int(step) == 0 else f"step {step}"
                lines.append(f"| {start} | {method} | {seed} | {when} | "
                             + " | ".join(f"{100 * counts[k] / total:.0f}%" for k in ANSWER_KINDS) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figure
def plot(result: dict, path: Path) -> bool:
    """Held-out p@1 against the step: one panel per start and method (PANELS_PER_ROW to a row), one thin line per
    seed (every seed visible), their mean thick, step 0 each run's untrained model. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install matplotlib)")
        return False
    runs, methods = result["runs"], [m[0] for m in result["settings"]["methods"]]
    starts = result["settings"]["starts"]
    panels = [(start, col, method) for start in starts for col, method in enumerate(methods)]  # one per start x method
    ncols = min(PANELS_PER_ROW, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows + 0.6), squeeze=False, sharex=True,
                             sharey=True)
    for i, (start, col, method) in enumerate(panels):
        ax, color = axes.flat[i], plt.cm.tab10(col % 10)
        mine = [r for r in runs if r["kind"] == "run" and r["start"] == start and r["method"] == method]
        for r in mine:
            ax.plot([p["step"] for p in r["trace"]], [p["p@1"] for p in r["trace"]], color=color, lw=1.0,
                    alpha=0.55, marker="o", ms=2.5)
        if len(mine) > 1 and len({len(r["trace"]) for r in mine}) == 1:
            steps = [p["step"] for p in mine[0]["trace"]]
            mean = [statistics.mean(r["trace"][i]["p@1"] for r in mine) for i in range(len(steps))]
            ax.plot(steps, mean, color=color, lw=2.5)
        ax.set_title(f"{method}, {start} ({len(mine)} seed{'' if len(mine) == 1 else 's'})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("training step")
        if i % ncols == 0:
            ax.set_ylabel(f"held-out p@1 (%), {result['settings']['test_questions']} questions")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    axes[0][0].set_ylim(-2, max(20, max(ax.get_ylim()[1] for ax in axes.flat)))  # shared: one scale for all
    fig.suptitle("SmolLM2-135M on fictional one-hop questions it never trains on: held-out p@1 "
                 "(thin: one seed; thick: the mean over seeds; step 0: the untrained model)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/heldout", help="output folder: heldout.json, heldout.png, the data, one folder per run")
    p.add_argument("--model", default="smollm2", help="model for train.py's --model ('tiny' for the tests)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per method and start")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ... (to add seeds "
                   "to an experiment in another process, then --replot --merge)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--B", type=int, default=4, help="fresh questions per step")
    p.add_argument("--M", type=int, default=4, help="rationales (GRPO: rollouts) per question")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (the CPU preset's)")
    p.add_argument("--think-budget", type=int, default=16, help="thinking tokens before '</think>' is forced")
    p.add_argument("--answer-budget", type=int, default=10, help="answer tokens (GRPO's rollouts and evaluation)")
    p.add_argument("--eval-every", type=int, default=5, help="held-out evaluation every N steps (and after the last)")
    p.add_argument("--eval-n", type=int, default=4, help="samples per test question (p@1 and maj@n)")
    p.add_argument("--eval-batch", type=int, default=8, help="test questions per generate call (x --eval-n rows)")
    p.add_argument("--test-questions", type=int, default=32, help="test questions used (the first N of the test file)")
    p.add_argument("--train-rows", type=int, default=2000, help="generated training questions (fresh: steps x B <= this)")
    p.add_argument("--methods", default="all", help="comma-separated method names (default all: "
                   + ", ".join(m[0] for m in METHODS) + "; or any of " + ", ".join(m[0] for m in RELATED) + ")")
    p.add_argument("--starts", default="cold,warm", help="comma-separated starts")
    p.add_argument("--workers", type=int, default=2, help="processes running jobs (1 torch thread each; 1: in this one)")
    p.add_argument("--quick", action="store_true", help="1 seed, GRPO and PAFT q=0.75, 2 steps of 2, 4 test questions: "
                   "a look in a few minutes, not the reported numbers")
    p.add_argument("--no-figure-copy", action="store_true", help="do not copy the PNG to docs/figures/heldout.png")
    p.add_argument("--replot", action="store_true", help="only reprint the table and redraw the PNG from OUT/heldout.json")
    p.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                   help="with --replot: add the runs of these experiments (same settings) to OUT's, and save them in OUT")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**QUICK)  # flags given on the command line still win
    args = p.parse_args(argv)
    known = [m[0] for m in METHODS + RELATED]
    args.methods = [m[0] for m in METHODS] if args.methods == "all" else args.methods.split(",")
    if set(args.methods) - set(known):
        p.error(f"--methods: unknown {sorted(set(args.methods) - set(known))}; known: {', '.join(known)}")
    args.starts = args.starts.split(",")
    if set(args.starts) - set(STARTS):
        p.error(f"--starts: each of {', '.join(STARTS)}, got {args.starts}")
    if args.first_seed < 0:
        p.error(f"--first-seed must be >= 0, got {args.first_seed}")
    for name in ("seeds", "steps", "B", "M", "think_budget", "answer_budget", "eval_every", "eval_n", "eval_batch",
                 "test_questions", "train_rows", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.M < 2:
        p.error(f"--M must be >= 2, got {args.M}")
    if args.steps * args.B > args.train_rows:
        p.error(f"--steps x --B = {args.steps * args.B} questions: more than --train-rows {args.train_rows} "
                "(every step must see fresh questions)")
    if args.test_questions > GENERATOR["test"]:
        p.error(f"--test-questions: at most {GENERATOR['test']} (the test file's rows), got {args.test_questions}")
    return args


def report(result: dict, out: Path, copy: bool):
    """Print the table, write the JSON and the PNG (and copy the PNG to docs/figures)."""
    print(result["table"])
    print(result["kinds_table"])
    for o in result["orderings"]:
        print(f"  {o['start']}: {o['above']} > {o['below']} in all {o['seeds']} seeds"
              + (" (ranges separated)" if o["separated"] else ""))
    (out / "heldout.json").write_text(json.dumps(result, indent=1))
    if plot(result, out / "heldout.png") and copy:
        (REPO / "docs" / "figures").mkdir(exist_ok=True)
        shutil.copy(out / "heldout.png", REPO / "docs" / "figures" / "heldout.png")
    print(f"wrote {out / 'heldout.json'} and {out / 'heldout.png'}")


SHARED = ("model", "M", "B", "steps", "lr", "think_budget", "answer_budget", "eval_every", "eval_n", "eval_batch",
          "test_questions", "generator", "train_rows")  # what two experiments must share to be merged


def merge(result: dict, other: dict, name: str) -> dict:
    """result with other's runs (and methods) added (a run already in result, same start, method and seed, must
    have the same numbers: it is kept once).

    The settings that decide a run's numbers (SHARED) must be equal; timings are kept side by side.
    """
    diff = [k for k in SHARED if result["settings"][k] != other["settings"][k]]
    if diff:
        raise SystemExit(f"--merge {name}: different settings, not comparable: "
                         + ", ".join(f"{k} {result['settings'][k]} vs {other['settings'][k]}" for k in diff))
    key = lambda r: (r["kind"], r["start"], r["method"], r["seed"])  # noqa: E731
    have = {key(r): r for r in result["runs"]}
    # The same run done twice (same method, start and seed) must give the same numbers: the runs are
    # deterministic. Such a repeat is kept once (and counted); one that differs is an error.
    clash = [key(r) for r in other["runs"] if key(r) in have and have[key(r)]["trace"] != r["trace"]]
    if clash:
        raise SystemExit(f"--merge {name}: runs already in the experiment, with other numbers: {clash}")
    repeats = [key(r) for r in other["runs"] if key(r) in have]
    new = [r for r in other["runs"] if key(r) not in have]
    merged = dict(result, runs=result["runs"] + new, partial=result["partial"] or other["partial"])
    # Methods run only in other (e.g. the related ones, docs/related.md) join the tables and the figure.
    methods = result["settings"]["methods"] + [m for m in other["settings"]["methods"]
                                               if m not in result["settings"]["methods"]]
    merged["settings"] = dict(result["settings"], methods=methods)
    merged["merged_from"] = result.get("merged_from", []) + [{"dir": name, "jobs": len(new), "identical_repeats": repeats,
                                                              "timing": other.get("timing"), "partial": other["partial"]}]
    return merged


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        result = json.loads((out / "heldout.json").read_text())
        if result["partial"]:
            print(f"{out / 'heldout.json'} holds a partial experiment: {len(result['runs'])} finished jobs")
            result.setdefault("timing", None)
        for other in args.merge:
            result = merge(result, json.loads((Path(other) / "heldout.json").read_text()), other)
        from scale import memory  # the parameter count from the model's config alone (no weights loaded)
        n_params = memory.parameter_count(memory.shape_of(memory.config_for(result["settings"]["model"])))["total"]
        result["gradients"] = gradient_scale(result["runs"], [out] + [Path(d) for d in args.merge], n_params)
        print(gradient_table(result["gradients"]))
        methods, starts = [m[0] for m in result["settings"]["methods"]], result["settings"]["starts"]
        result["summary"] = summarize(result["runs"], methods, starts)
        result["orderings"] = orderings(result["runs"], methods, starts)
        result["table"] = table(result["summary"], result["settings"]["eval_n"])
        result["kinds_table"] = kinds_table(result["runs"], methods, starts)
        report(result, out, not args.no_figure_copy)
        return result
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    out.mkdir(parents=True, exist_ok=True)
    paths = make_data(out / "data", args.train_rows)
    test = data.load_examples("musique", path=paths["test"])[:args.test_questions]
    cfg = {"model": args.model, "M": args.M, "B": args.B, "steps": args.steps, "lr": args.lr,
           "think_budget": args.think_budget, "answer_budget": args.answer_budget, "eval_every": args.eval_every,
           "eval_n": args.eval_n, "eval_batch": args.eval_batch}
    methods = [m for m in METHODS + RELATED if m[0] in args.methods]
    jobs = []
    # Seed-major order: if the experiment is stopped early, what has finished is whole seeds of every method.
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for start in args.starts:
            for method, estimator, q in methods:
                job = {"kind": "run", "method": method, "estimator": estimator, "q": q, "start": start, "seed": seed,
                       "test": test, "cfg": cfg, "train_file": str(paths["train"])}
                jobs.append({**job, "out": str(run_dir(out, job))})
    print(f"{len(jobs)} jobs ({sum(j['kind'] == 'run' for j in jobs)} training runs of {args.steps} steps x {args.B} questions x "
          f"M = {args.M}; {len(test)} test questions x {args.eval_n} samples) on {args.workers} worker(s)", flush=True)
    settings = {**cfg, "methods": methods, "starts": args.starts, "seeds": args.seeds, "first_seed": args.first_seed,
                "test_questions": len(test), "test_file": str(TEST_FILE.relative_to(REPO)),
                "generator": GENERATOR, "train_rows": args.train_rows, "workers": args.workers, "quick": args.quick}

    def save_partial(done: list[dict]):  # after every job: a stopped experiment leaves what it measured
        (out / "heldout.json").write_text(json.dumps({"settings": settings, "runs": done, "partial": True}, indent=1))

    pool = make_pool(args.workers, args.model)
    runs = run_jobs(pool, jobs, t0, save_partial)
    if pool is not None:
        pool.shutdown()  # joins the workers, so that their CPU time is in RUSAGE_CHILDREN below
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (me.ru_utime - cpu0.ru_utime) + (me.ru_stime - cpu0.ru_stime) + kids.ru_utime + kids.ru_stime
    names = [m[0] for m in methods]
    result = {"settings": settings, "runs": runs, "partial": False, "summary": summarize(runs, names, args.starts),
              "orderings": orderings(runs, names, args.starts),
              "timing": {"wall_seconds": time.perf_counter() - t0, "cpu_seconds": cpu,
                         "job_cpu_seconds": sum(r["cpu_seconds"] for r in runs),
                         "alone_estimate_seconds": cpu / min(args.workers, 2)}}
    result["table"] = table(result["summary"], args.eval_n)
    result["kinds_table"] = kinds_table(runs, names, args.starts)
    from scale import memory
    result["gradients"] = gradient_scale(runs, [out], memory.parameter_count(memory.shape_of(memory.config_for(args.model)))["total"])
    print(gradient_table(result["gradients"]))
    report(result, out, not args.no_figure_copy and not args.quick)
    tm = result["timing"]
    print(f"total {tm['wall_seconds']:.0f}s wall, {tm['cpu_seconds']:.0f}s CPU (parent + workers); alone on 2 cores "
          f"~{tm['alone_estimate_seconds']:.0f}s (estimated from the CPU time)")
    return result


if __name__ == "__main__":
    main()
