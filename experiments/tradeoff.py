r"""The trade-off, end to end on a CPU: escape speed against noise memorization, and amplification under AdamW.

    python experiments/tradeoff.py            # everything, ~12 minutes on 2 cores (2 worker processes, 1 thread each)
    python experiments/tradeoff.py --quick    # 1 seed, short runs: a look in ~2 minutes, not the reported numbers
    python experiments/tradeoff.py --replot   # tables and figure again from OUT/tradeoff.json

Choosing q trades two things the paper proves (Sec. 5, App. C; experiments/theory.py computes both):
  speed         from P = p0 gradient flow on l_q escapes in T_q ~ p0^-(1-q) / (1-q), T_1 ~ log(1/p0) (Thm 5.1/5.2)
  memorization  if a fraction eps of the labels is wrong, the minimizer of E[l_q] puts odds
                (eps/(1-eps))^(1/q) on the noise label (Prop. C.2): q = 1 fits the noise (contamination eps),
                lower q suppresses it, q = 0 has no interior minimum and drives it to 0.
Both are measured here on demo.py's secret-code task (a key -> a 2-character code, tiny model, CPU), every run
through train.train, the trainer every other run uses. Three parts, one command:

1. Noise (warm start). Four keys; the base model already answers, so nothing has to escape. Two bases,
   to approach the minimizer from both sides: one pretrained on every key's TRUE code (contamination
   ~1e-9: from below), one on the true and the noise code half and half (~0.5: from above). Training data: per key a fraction eps of the questions carries that
   key's NOISE code, a fixed wrong code (a consistent wrong label can be memorized; a random one could
   not). The prompts of a key are identical, so no model can tell a noisy question from a clean one and
   the expected loss is Prop. C.2's  (1-eps) l_q(P(c|x)) + eps l_q(P(c'|x)).  GARL q in {0, 0.25, 0.5,
   0.75, 1}, eps in {0.1, 0.25}, AdamW. Measured: P(true code) and P(noise code) per key (Monte Carlo over
   the model's own rationales) at several steps; contamination = P(c') / (P(c) + P(c')), next to
   (eps/(1-eps))^(1/q) / (1 + (eps/(1-eps))^(1/q)).
2. Mixed difficulty (cold start). Two keys in one run: an EASY key, whose code the base model already
   thinks (pretraining wrote its code as the rationale EASY_BIAS of the time), p0 ~ 0.1, and a HARD key
   it does not know, p0 ~ 1/35^2 ~ 8e-4 (demo.py's situation). GARL q in {0, 0.25, 0.5, 0.75, 1} and PAFT
   q in {0.75, 1}, under AdamW and SGD (demo.py's learning rates), 6 seeds. Measured per key: P every
   few steps (the escape step: first P >= 0.5), and under AdamW how large a step Adam gives each key's
   gradient (adam_probe): what the second-moment estimate holds while the easy key dominates.
3. The trade-off figure: per q, the hard key's steps to escape against the contamination.
Predictions written before the runs, the measurements, and what differs: docs/tradeoff.md.

How the per-key measurements are taken without touching the trainer. train.train logs only batch means,
so a run is trained in chunks: train.train up to step s1, then `--resume` up to s2, ... --resume restores
the optimizer (Adam's moments), the data order and every RNG, so the chunked run IS the uninterrupted one
(tests/test_tradeoff.py checks the metrics are identical). Between chunks the model is measured under a
forked RNG. Each run is a job; jobs run in --workers processes (1 torch thread each, as demo.py).
"""
import argparse
import contextlib
import io
import json
import math
import multiprocessing
import random
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

import logprobs
import models
import rollout
import train
from experiments import demo, theory
from prompts import gold_ids
from qlog import log_mean_exp, q_loss_of_log

ESCAPE = demo.ESCAPE  # a key has escaped at the first measured step with P >= 0.5
outcome = demo.outcome  # a key at the end: solved, stall or collapse (P < demo.COLLAPSE * p0)
# Project choices (the paper runs no such experiment): the task's size and the noise levels.
NOISE_KEYS = demo.KEYS[:4]
NOISE_EPS = (0.1, 0.25)
NOISE_QS = (0.0, 0.25, 0.5, 0.75, 1.0)
PER_KEY = 40  # training questions per key in the noise task: eps * 40 is a whole number for both eps
EASY, HARD = demo.KEYS[:2]  # the mixed-difficulty task's two keys, codes from demo.make_task (red z1, blue dr)
EASY_BIAS = 0.1  # pretraining of the mixed base: the easy key's rationale is its code this often (p0 ~ 0.1)
# (name, estimator, q): GARL at every q of the noise experiment (so that the trade-off figure has both
# coordinates for each q) and PAFT at the two q where it escaped in demo.py.
MIXED_METHODS = [("GARL q=0", "garl", 0.0), ("GARL q=0.25", "garl", 0.25), ("GARL q=0.5", "garl", 0.5),
                 ("GARL q=0.75", "garl", 0.75), ("GARL q=1", "garl", 1.0), ("PAFT q=0.75", "paft", 0.75),
                 ("PAFT q=1", "paft", 1.0)]
# train.train needs --data to name an existing file (its flag check); it trains on the examples we pass.
# Project choice: --task hotpotqa: cold-start prompts ignore the task, and its answer scoring is plain
# string matching (finqa's is numeric); a flag value is needed because --resume compares every flag.
DATA_FLAG = str(REPO / "samples" / "hotpotqa_dev_distractor_sample.json")


# ------------------------------------------------------------------------------------------------ tasks
def noise_codes(seed: int = 0) -> tuple[dict, dict]:
    """({key: true code}, {key: noise code}) for NOISE_KEYS, all distinct. Deterministic in seed."""
    rng, used = random.Random(seed), set()
    pick = []
    while len(pick) < 2 * len(NOISE_KEYS):
        code = demo.random_rationale(rng)
        if code not in used:
            used.add(code)
            pick.append(code)
    return dict(zip(NOISE_KEYS, pick[::2])), dict(zip(NOISE_KEYS, pick[1::2]))


def noise_examples(true: dict, noise: dict, eps: float, per_key: int = PER_KEY) -> list[dict]:
    """per_key questions per key, exactly round(eps * per_key) of them with the noise code as gold.

    >>> ex = noise_examples({"red": "z1"}, {"red": "k4"}, 0.25, per_key=4)
    >>> [e["answer"] for e in ex]
    ['k4', 'z1', 'z1', 'z1']
    """
    n_noisy = round(eps * per_key)
    if abs(n_noisy - eps * per_key) > 1e-9:
        raise ValueError(f"eps {eps} x {per_key} questions per key is not a whole number of noisy questions")
    return [{"id": f"{key}-{i}", "question": "code?", "context": key, "aliases": [],
             "answer": noise[key] if i < n_noisy else true[key]} for key in true for i in range(per_key)]


def predicted_contamination(eps: float, q: float) -> float:
    """Prop. C.2: the minimizer's odds on the noise label are (eps/(1-eps))^(1/q); contamination = odds/(1+odds).

    q = 0: no interior minimum, the loss is linear in P and gradient descent drives the contamination to 0.
    >>> round(predicted_contamination(0.2, 0.5), 4)   # odds 1/16
    0.0588
    """
    if q == 0:
        return 0.0
    odds = (eps / (1 - eps)) ** (1 / q)
    return odds / (1 + odds)


# ------------------------------------------------------------------------------------------------ base models
def noise_base(tokenizer, true: dict, steps: int, noise: dict | None = None):
    """Warm start: pretrained on "<prompt(key)>r</think>\\n\\n<code>", r random, the answer independent of r.

    noise None: the code is always the true one; the model answers it (P ~ 0.97) and gives the noise code
    ~1e-9: training must raise the contamination TO the minimizer (from below). With noise: the true or the
    noise code with probability 1/2 each; the model starts undecided (P ~ 0.5 each) and training must lower
    the contamination to the minimizer (from above).
    """
    def draw(rng):
        key = rng.choice(NOISE_KEYS)
        r = demo.random_rationale(rng)
        return key, r, true[key] if noise is None or rng.random() < 0.5 else noise[key]

    return demo.pretrain(tokenizer, draw, steps)


def mixed_base(tokenizer, codes: dict, steps: int):
    """Cold start with two difficulties: demo.py's guess-then-copy model, except that for the easy key
    the rationale in pretraining is its code EASY_BIAS of the time. So p0(easy) ~ EASY_BIAS * p(copy),
    p0(hard) ~ 1/35^2, and the model still knows no key -> code map in its answer (it copies)."""
    def draw(rng):
        key = rng.choice([EASY, HARD])
        r = codes[EASY] if key == EASY and rng.random() < EASY_BIAS else demo.random_rationale(rng)
        return key, r, r

    return demo.pretrain(tokenizer, draw, steps)


# ------------------------------------------------------------------------------------------------ measurements
@torch.no_grad()
def answer_probs(model, tokenizer, answers: dict, think_budget: int, samples: int, seed: int) -> dict:
    """{key: [P(a | x_key) for a in answers[key]]}: P = mean over `samples` rationales z ~ p(z|x) of p(a|x, z).

    Monte Carlo over the model's own rationales, the same z for every answer of a key (so ratios such as
    the contamination share their noise). Unbiased for P; its relative error is small wherever the answer
    depends little on the rationale (every trained model here; demo.measure computes the exact sum when it
    does not). Under a forked RNG seeded with `seed`: training's random streams are untouched.
    Example: answers = {"red": ["z1", "k4"]} -> {"red": [0.93, 0.07]}.
    """
    tokens = rollout.SpecialTokens.of(tokenizer, model.generation_config)
    out = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for key, options in answers.items():
            prompt = tokenizer(demo.prompt_text(tokenizer, key), add_special_tokens=False).input_ids
            drawn = rollout.generate(model, [prompt], samples, tokens, think_budget)[0]
            rows = [rollout.Sample(prompt, s.z_ids, s.forced_ids, gold_ids(tokenizer, a)) for a in options for s in drawn]
            w = logprobs.log_weights(model, rows, tokens, len(rows)).double().exp().view(len(options), samples)  # [A, S]
            out[key] = w.mean(1).tolist()
    return out


def adam_probe(model, tokenizer, codes: dict, q: float, args, think_budget: int, samples: int, seed: int) -> dict:
    """How big a step AdamW gives each key's gradient, given the second moments the run has accumulated.

    For key k, g_k = the expected contribution of one key-k question to the trainer's batch gradient:
    grad of l_q(P_k) / (B M^q) (GARL's 1/M^q; the pathwise term, with P_k the Monte Carlo mean of w over
    `samples` fixed rationales). AdamW divides each coordinate by sqrt(v_hat) + eps, with v_hat the
    bias-corrected running mean of squared (clipped) gradients from the checkpoint. Returns per key
    rms(g_k / (sqrt(v_hat) + eps)): ~1 for a gradient as large as those that built v_hat, << 1 for a key
    whose gradient is small next to what v_hat remembers (another key's, or its own earlier ones).
    Also rms(g_k) itself (the size SGD would see). Example: {"red": {"adam": 0.8, "sgd": 0.01}, ...}.
    """
    state = torch.load(Path(args.out) / "latest" / "trainer_state.pt", weights_only=False)["optimizer"]
    group = state["param_groups"][0]
    params = [p for p in model.parameters() if p.requires_grad]
    tokens = rollout.SpecialTokens.of(tokenizer, model.generation_config)
    out = {}
    for key, code in codes.items():
        prompt = tokenizer(demo.prompt_text(tokenizer, key), add_special_tokens=False).input_ids
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            drawn = rollout.generate(model, [prompt], samples, tokens, think_budget)[0]
        rows = [rollout.Sample(prompt, s.z_ids, s.forced_ids, gold_ids(tokenizer, code)) for s in drawn]
        _, logp_y = logprobs.sequence_logprobs(model, rows, tokens)  # [S], with gradient (logp_z unused)
        # float64: at q = 0, l_0 = -expm1(log P), whose backward (result + 1) is exactly 0 in float32 for P < 6e-8
        loss = q_loss_of_log(log_mean_exp(logp_y.double()), q) / (args.B * args.M**q)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        num, sq, n = 0.0, 0.0, 0
        for i, (p, g) in enumerate(zip(params, grads)):
            g = torch.zeros_like(p) if g is None else g
            s = state["state"][i]
            v_hat = s["exp_avg_sq"] / (1 - group["betas"][1] ** float(s["step"]))
            num += ((g / (v_hat.sqrt() + group["eps"])) ** 2).sum().item()
            sq += (g**2).sum().item()
            n += g.numel()
        out[key] = {"adam": math.sqrt(num / n), "sgd": math.sqrt(sq / n)}
    return out


# ------------------------------------------------------------------------------------------------ one run
WORKER = {}  # per process: the tokenizer (set by init_worker)


def init_worker(threads: int):
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's per-checkpoint bar
    WORKER["tokenizer"] = models.build_tiny_tokenizer()


def pretrain_job(job: dict) -> dict:
    """A base model's weights: job = {"base": "mixed" | "noise_below" | "noise_above", "steps", codes...}."""
    tok, t = WORKER["tokenizer"], time.perf_counter()
    if job["base"] == "mixed":
        model = mixed_base(tok, job["codes"], job["steps"])
    else:
        model = noise_base(tok, job["true"], job["steps"], noise=job["noise"] if job["base"] == "noise_above" else None)
    return {"base": job["base"], "state": model.state_dict(), "seconds": time.perf_counter() - t}


def run_job(job: dict) -> dict:
    """One train.train run, in chunks ending at job["stops"]; measures answer_probs (and adam_probe) at each stop.

    job: method (name, estimator, q), optimizer, lr, grad_clip, seed, base (its name) and base_state,
    train/val examples, answers {key: [codes]} to measure, stops, samples, probe (bool), cfg, out.
    """
    tok, cfg = WORKER["tokenizer"], job["cfg"]
    name, estimator, q = job["method"]
    out = Path(job["out"])
    shutil.rmtree(out, ignore_errors=True)  # train.py refuses to overwrite a run
    flags = ["--task", "hotpotqa", "--data", DATA_FLAG, "--model", "tiny", "--start", "cold",
             "--estimator", estimator, "--q", str(q), "--optimizer", job["optimizer"], "--lr", str(job["lr"]),
             "--grad-clip", str(job["grad_clip"]), "--M", str(cfg["M"]), "--B", str(cfg["B"]),
             "--micro-batch", str(cfg["B"] * cfg["M"]), "--think-budget", str(cfg["think_budget"]),
             "--answer-budget", str(cfg["answer_budget"]), "--eval-every", "0", "--eval-n", "1",
             "--save-every", str(10**9), "--seed", str(job["seed"]), "--out", str(out), "--no-eval-first"]
    model = models.build_tiny_model(tok, hidden=cfg["hidden"], layers=cfg["layers"])
    model.load_state_dict(job["base_state"])  # every run of an experiment starts from the same base model
    trace, t = [], time.perf_counter()
    for i, stop in enumerate(job["stops"]):
        args = train.parse_args(flags + ["--steps", str(stop)] + (["--resume"] if i else []))
        with contextlib.redirect_stdout(io.StringIO()):  # the trainer's progress bar is noise here
            train.train(args, model, tok, job["train"], job["val"])
        seed = 10**6 + 1000 * job["seed"] + stop  # measurement rationales: fixed per (seed, step)
        point = {"step": stop, "P": answer_probs(model, tok, job["answers"], cfg["think_budget"], job["samples"], seed)}
        if job["probe"]:
            point["adam_probe"] = adam_probe(model, tok, {k: v[0] for k, v in job["answers"].items()}, q, args,
                                             cfg["think_budget"], job["samples"], seed)
        trace.append(point)
    seconds = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # ~1 MB per run; metrics.jsonl and run_config.json stay
    for link in ("latest", "best"):
        (out / link).unlink(missing_ok=True)
    return {"experiment": job["experiment"], "base": job["base"], "method": name, "q": q, "optimizer": job["optimizer"],
            "seed": job["seed"], "eps": job.get("eps"), "trace": trace, "curve": [r["w_bar_mean"] for r in rows],
            "grad_norm": [r["grad_norm"] for r in rows], "seconds": seconds, "steps": job["stops"][-1]}


def make_pool(workers: int):
    """`workers` spawned processes, 1 torch thread each (None for 1 worker: jobs run in this process)."""
    if workers == 1:
        init_worker(1)  # 1 thread: two make this tiny model ~10x slower (demo.py)
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                               initargs=(1,))


def run_jobs(pool, fn, jobs: list[dict], t0: float) -> list[dict]:
    """fn(job) for every job, on the pool (or here), printing each training run as it ends; results in job order."""
    def report(r):
        if "trace" in r:  # a training run
            eps = "" if r["eps"] is None else f"eps {r['eps']:g} "
            print(f"  {r['base']:11s} {r['optimizer']:5s} {r['method']:12s} {eps}seed {r['seed']}: "
                  f"{summary_line(r)}  ({r['seconds']:.1f}s)  [{time.perf_counter() - t0:.0f}s]", flush=True)
        return r

    if pool is None:
        return [report(fn(job)) for job in jobs]
    results = [None] * len(jobs)
    futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
    for f in as_completed(futures):
        results[futures[f]] = report(f.result())
    return results


def summary_line(r: dict) -> str:
    end = r["trace"][-1]["P"]
    if r["experiment"] == "noise":
        return "contamination " + ", ".join(f"{contamination(p):.2g}" for p in end.values())
    esc = escape_steps(r)
    return ", ".join(f"{k} P {p[0]:.2g} (escape {esc[k] if esc[k] is not None else '-'})" for k, p in end.items())


# ------------------------------------------------------------------------------------------------ summaries
def contamination(p: list[float]) -> float:
    """P(noise code) / (P(true code) + P(noise code)): the 2-way share Prop. C.2 predicts."""
    return p[1] / (p[0] + p[1])


def escape_steps(run: dict) -> dict:
    """{key: first measured step with P >= ESCAPE, or None}."""
    return {k: next((pt["step"] for pt in run["trace"] if pt["P"][k][0] >= ESCAPE), None) for k in run["trace"][0]["P"]}


def geo_odds(run: dict, window: int) -> tuple[float, dict]:
    """Contamination of a noise run: odds P(c')/P(c) averaged in log space over the keys and the last `window`
    measured steps (the late window), returned as odds/(1+odds); also per key. Project choice: a log-space
    average, because the prediction is a power of eps/(1-eps) and single measurements scatter over decades."""
    pts = run["trace"][-window:]
    per_key = {k: statistics.mean(math.log(max(pt["P"][k][1], 1e-300) / pt["P"][k][0]) for pt in pts)
               for k in pts[0]["P"]}
    odds = math.exp(statistics.mean(per_key.values()))
    return odds / (1 + odds), {k: math.exp(v) / (1 + math.exp(v)) for k, v in per_key.items()}


def noise_summary(runs: list[dict], window: int) -> list[dict]:
    """Per (start, eps, q): the predicted contamination and the measured one, per seed."""
    rows = []
    for base in ("noise_above", "noise_below"):
        for eps in sorted({r["eps"] for r in runs if r["base"] == base}):
            for q in sorted({r["q"] for r in runs if r["base"] == base and r["eps"] == eps}):
                mine = sorted((r for r in runs if r["base"] == base and r["eps"] == eps and r["q"] == q),
                              key=lambda r: r["seed"])
                measured = [geo_odds(r, window) for r in mine]
                first = [geo_odds({"trace": r["trace"][-window:][:1]}, 1)[0] for r in mine]  # window's first step
                rest = [statistics.mean(1 - sum(p) for p in r["trace"][-1]["P"].values()) for r in mine]
                rows.append({"start": "above" if base == "noise_above" else "below", "eps": eps, "q": q,
                             "predicted": predicted_contamination(eps, q), "seeds": [r["seed"] for r in mine],
                             "measured": [m[0] for m in measured], "measured_per_key": [m[1] for m in measured],
                             "median": statistics.median(m[0] for m in measured),
                             "window_first": first, "rest_mass": statistics.mean(rest)})
    return rows


def mixed_summary(runs: list[dict], p0: dict, methods: list) -> list[dict]:
    """Per (optimizer, method): per key, the escape step per seed, the outcome per seed, the Adam probe."""
    rows = []
    for optimizer in ("adamw", "sgd"):
        for name, *_ in methods:
            mine = sorted((r for r in runs if r["method"] == name and r["optimizer"] == optimizer),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            row = {"method": name, "optimizer": optimizer, "seeds": [r["seed"] for r in mine], "steps": mine[0]["steps"]}
            for group, key in (("easy", EASY), ("hard", HARD)):
                esc = [escape_steps(r)[key] for r in mine]
                ends = [r["trace"][-1]["P"][key][0] for r in mine]
                lows = [min(pt["P"][key][0] for pt in r["trace"]) for r in mine]
                srt = sorted(math.inf if e is None else e for e in esc)
                med = statistics.median(srt)
                row[group] = {"key": key, "p0": p0[key], "escape_steps": esc, "escaped": sum(e is not None for e in esc),
                              "median_escape_step": None if math.isinf(med) else med, "final_P": ends, "lowest_P": lows,
                              "outcomes": [outcome(e, p0[key]) for e in ends]}
                if "adam_probe" in mine[0]["trace"][0]:
                    row[group]["adam_probe"] = [[pt["adam_probe"][key]["adam"] for pt in r["trace"]] for r in mine]
                    row[group]["probe_steps"] = [pt["step"] for pt in mine[0]["trace"]]
            rows.append(row)
    return rows


def fmt_steps(esc: list) -> str:
    return ", ".join("-" if e is None else str(e) for e in esc)


def tables(noise_rows: list[dict], mixed_rows: list[dict], window_steps: list) -> str:
    """The markdown tables docs/tradeoff.md quotes."""
    lines = [f"Noise: contamination P(c')/(P(c)+P(c')), log-mean over 4 keys and steps {window_steps}",
             "", "| start | eps | q | predicted (Prop. C.2) | measured, per seed | median | first step of the window, "
             "per seed | mass on other answers |", "|---|---|---|---|---|---|---|---|"]
    for r in noise_rows:
        lines.append(f"| {r['start']} | {r['eps']:g} | {r['q']:g} | {r['predicted']:.2g} | "
                     f"{', '.join(f'{m:.2g}' for m in r['measured'])} | {r['median']:.2g} | "
                     f"{', '.join(f'{m:.2g}' for m in r['window_first'])} | {r['rest_mass']:.1g} |")
    lines += ["", "Mixed difficulty: steps to escape (first measured step with P >= 0.5) per seed; '-': not within "
              f"the run; outcome at the end: s = solved, t = stall, c = collapse (P < {demo.COLLAPSE:g} p0)", "",
              "| optimizer | method | easy: escape per seed | easy escaped | hard: escape per seed | hard escaped | "
              "hard median | hard outcomes | easy outcomes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in mixed_rows:
        e, h = r["easy"], r["hard"]
        med = "never" if h["median_escape_step"] is None else f"{h['median_escape_step']:g}"
        oc = lambda g: "".join({"solved": "s", "stall": "t", "collapse": "c"}[o] for o in g["outcomes"])  # noqa: E731
        lines.append(f"| {r['optimizer']} ({r['steps']} steps) | {r['method']} | {fmt_steps(e['escape_steps'])} | "
                     f"{e['escaped']}/{len(r['seeds'])} | {fmt_steps(h['escape_steps'])} | "
                     f"{h['escaped']}/{len(r['seeds'])} | {med} | {oc(h)} | {oc(e)} |")
    probe = [r for r in mixed_rows if "adam_probe" in r["hard"]]
    if probe:
        steps = probe[0]["hard"]["probe_steps"]
        show = [s for s in (2, 4, 10, 20) if s in steps]
        lines += ["", "AdamW: rms of g_key / (sqrt(v_hat) + eps), one question's gradient over Adam's second moment "
                  "(adam_probe), median over seeds, hard / easy", "",
                  "| method | " + " | ".join(f"step {s}" for s in show) + " |", "|---|" + "---|" * len(show)]
        for r in probe:
            cells = []
            for s in show:
                i = steps.index(s)
                hv = statistics.median(p[i] for p in r["hard"]["adam_probe"])
                ev = statistics.median(p[i] for p in r["easy"]["adam_probe"])
                cells.append(f"{hv:.2g} / {ev:.2g}")
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figure
def plot(result: dict, path: Path) -> bool:
    """Three panels: contamination vs q (noise), the hard key's escape step per method (mixed), the trade-off."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"tradeoff.png skipped: matplotlib could not be imported ({e}); pip install matplotlib to get it")
        return False
    noise, mixed = result["noise_summary"], result["mixed_summary"]
    floor = 1e-13  # log axes: a contamination of 0 (q = 0 predicted) is drawn at the floor
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))

    ax = axes[0]
    grid = [i / 100 for i in range(5, 101)]
    for j, eps in enumerate(sorted({r["eps"] for r in noise})):
        c = plt.cm.tab10(j)
        ax.plot(grid, [max(predicted_contamination(eps, q), floor) for q in grid], color=c, lw=1,
                label=f"eps {eps:g}: Prop. C.2")
        for r in (r for r in noise if r["eps"] == eps):
            above = r["start"] == "above"
            dx = 0.012 * (1 if above else -1)
            ax.scatter([r["q"] + dx] * len(r["measured"]), [max(m, floor) for m in r["measured"]], s=22, color=c,
                       marker="o" if above else "x", facecolors=c if above else None,
                       label=f"eps {eps:g}: measured, from {'above' if above else 'below'}"
                       if r["q"] == max(x["q"] for x in noise) else None)
    ax.set(yscale="log", ylim=(floor / 3, 1), xlabel="q", ylabel="contamination P(c') / (P(c) + P(c'))",
           title="Noise memorization (warm start, AdamW): each point a seed")
    ax.legend(fontsize=7)

    ax = axes[1]
    names = [r["method"] for r in mixed if r["optimizer"] == "adamw"] or [r["method"] for r in mixed]
    top = max(r["steps"] for r in mixed) * 1.3  # "never" row
    for k, optimizer in enumerate(("adamw", "sgd")):
        for r in (r for r in mixed if r["optimizer"] == optimizer):
            x = names.index(r["method"]) + (k - 0.5) * 0.3
            for group, size in (("hard", 26), ("easy", 8)):
                ys = [top if e is None else e for e in r[group]["escape_steps"]]
                ax.scatter([x] * len(ys), ys, s=size, color=plt.cm.tab10(k), alpha=0.8 if group == "hard" else 0.5,
                           label=f"{optimizer}, {group} key" if r["method"] == names[0] else None)
    ax.axhline(top / 1.15, color="gray", lw=0.6, ls=":")
    ax.set(yscale="log", xticks=range(len(names)), ylabel="steps to escape (P >= 0.5); top row: never",
           title=f"Mixed difficulty: p0 easy {result['p0'][EASY]:.1g}, hard {result['p0'][HARD]:.1g}")
    ax.set_xticklabels(names, rotation=30, fontsize=7)
    ax.legend(fontsize=7)

    ax = axes[2]
    qs = sorted({r["q"] for r in noise if r["start"] == "above"})
    for k, optimizer in enumerate(("adamw", "sgd")):
        for j, eps in enumerate(sorted({r["eps"] for r in noise if r["start"] == "above"})):
            xs, ys, labels = [], [], []
            for q in qs:
                m = next((r for r in mixed if r["optimizer"] == optimizer and r["method"] == f"GARL q={q:g}"), None)
                n = next((r for r in noise if r["start"] == "above" and r["eps"] == eps and r["q"] == q), None)
                if m is None or n is None:
                    continue
                med = m["hard"]["median_escape_step"]
                xs.append(top if med is None else med)
                ys.append(max(n["median"], floor))
                labels.append(f"q={q:g}")
            ax.plot(xs, ys, marker="os"[k], ls="-" if j else "--", color=plt.cm.tab10(k), mfc="white" if j else None,
                    label=f"escape under {optimizer}; contamination at eps {eps:g}")
            for x, y, lab in zip(xs, ys, labels):
                ax.annotate(lab, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    # Theory: Prop. C.2's contamination against App. C.1's escape time for p0_hard, scaled so that q = 1 sits at
    # the measured SGD median (gradient flow fixes ratios between q, not the step size).
    sgd_q1 = next((r["hard"]["median_escape_step"] for r in mixed if r["optimizer"] == "sgd"
                   and r["method"] == "GARL q=1"), None)
    if sgd_q1 is not None:
        ratio = result["theory"]["sgd_escape_time_ratio_hard"]
        for j, eps in enumerate(sorted({r["eps"] for r in noise if r["start"] == "above"})):
            shown = [q for q in qs if q > 0]  # q = 0: contamination 0, off a log axis
            ax.plot([sgd_q1 * ratio[f"{q:g}"] for q in shown], [predicted_contamination(eps, q) for q in shown],
                    color="gray", lw=0.8, ls="-" if j else "--", marker=".",
                    label=f"theory (SGD scale), eps {eps:g}")
    ax.axvline(top / 1.15, color="gray", lw=0.6, ls=":")
    if ax.lines[:-1]:  # log axes need data: --methods/--noise-qs may leave no q measured in both experiments
        ax.set(xscale="log", yscale="log")
    ax.set(xlabel="hard key: median steps to escape (dotted line: never)",
           ylabel="contamination (AdamW, from above; median over seeds)",
           title="The trade-off (GARL, one point per q)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------ main
def stops_every(steps: int, every: int, dense_until: int = 0, dense_every: int = 1) -> list[int]:
    """Measurement steps: every dense_every up to dense_until, then every `every`, and always the last step.

    >>> stops_every(30, 10, dense_until=6, dense_every=2)
    [2, 4, 6, 10, 20, 30]
    """
    dense = set(range(dense_every, min(dense_until, steps) + 1, dense_every))
    return sorted(dense | set(range(every, steps + 1, every)) | {steps})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tradeoff", help="output folder: tradeoff.json, tradeoff.png, one folder per run")
    p.add_argument("--seeds", type=int, default=6, help="mixed difficulty: training seeds per method and optimizer")
    p.add_argument("--noise-seeds", type=int, default=3, help="noise: training seeds per (start, eps, q)")
    p.add_argument("--adamw-steps", type=int, default=60, help="mixed difficulty: steps of an AdamW run")
    p.add_argument("--sgd-steps", type=int, default=120, help="mixed difficulty: steps of an SGD run")
    p.add_argument("--noise-steps", type=int, default=120, help="noise: steps of a run")
    p.add_argument("--pretrain-steps", type=int, default=600, help="language-modelling steps of the mixed base model")
    p.add_argument("--noise-pretrain-steps", type=int, default=300, help="language-modelling steps of the noise bases")
    p.add_argument("--methods", default="all", help="mixed difficulty: comma-separated method names (default all)")
    p.add_argument("--optimizers", default="sgd,adamw", help="mixed difficulty: comma-separated optimizers to run")
    p.add_argument("--noise-qs", default=",".join(f"{q:g}" for q in NOISE_QS), help="noise: comma-separated q values")
    p.add_argument("--workers", type=int, default=2, help="processes running jobs (1 torch thread each; 1: in this one)")
    p.add_argument("--quick", action="store_true", help="1 seed, short runs: a look, not the reported numbers")
    p.add_argument("--no-figure-copy", action="store_true", help="do not copy the PNG to docs/figures/tradeoff.png")
    p.add_argument("--replot", action="store_true", help="only reprint the tables and redraw the PNG from OUT/tradeoff.json")
    args = p.parse_args(argv)
    known = {m[0] for m in MIXED_METHODS}
    unknown = set(args.methods.split(",")) - known - {"all"}
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; known: {', '.join(m[0] for m in MIXED_METHODS)}")
    try:
        args.noise_qs = [float(q) for q in args.noise_qs.split(",")]
    except ValueError:
        p.error(f"--noise-qs: comma-separated numbers in [0, 1], got {args.noise_qs!r}")
    if not all(0 <= q <= 1 for q in args.noise_qs):
        p.error(f"--noise-qs: every q must be in [0, 1], got {args.noise_qs}")
    for name in ("seeds", "noise_seeds", "adamw_steps", "sgd_steps", "noise_steps", "pretrain_steps",
                 "noise_pretrain_steps", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.seeds, args.noise_seeds, args.adamw_steps, args.sgd_steps, args.noise_steps = 1, 1, 20, 40, 40
    return args


def report(result: dict, out: Path, copy: bool):
    """Print the tables, write the JSON and the PNG (and copy the PNG to docs/figures)."""
    print(result["tables"])
    (out / "tradeoff.json").write_text(json.dumps(result, indent=1))
    if plot(result, out / "tradeoff.png") and copy:
        figures = REPO / "docs" / "figures"
        figures.mkdir(exist_ok=True)
        shutil.copy(out / "tradeoff.png", figures / "tradeoff.png")
    print(f"wrote {out / 'tradeoff.json'} and {out / 'tradeoff.png'}")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        result = json.loads((out / "tradeoff.json").read_text())
        result["tables"] = tables(result["noise_summary"], result["mixed_summary"], result["settings"]["noise"]["window"])
        report(result, out, not args.no_figure_copy)
        return result
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # Project choices, all in one place.
    # Mixed: demo.py's settings (B = 4 questions x M = 8 rationales, a 2-token thinking budget, an answer of
    #   "\n\n" + code + EOS, demo.LR per optimizer, AdamW clipped at 1.0, SGD unclipped), so that demo.py's
    #   two equally hard keys are this experiment's uniform-p0 reference. P measured every 2 steps up to step 20
    #   (AdamW escapes there), then every 5.
    # Noise: B = 8 x M = 4 (two questions per key per step: half the batch-composition noise of B = 4 at the
    #   same 32 sequences; M matters little when the answer ignores the rationale), AdamW lr 1e-3 without
    #   clipping (clipping is nonlinear in the batch gradient and would shift the stationary point off the
    #   minimizer; lr 3e-3 in a pilot knocked P(c) + P(c') to ~0 for some keys in the first 15 steps), 16
    #   measurement rationales per key, contamination averaged over the last `window` measured steps.
    mixed_cfg = {"M": 8, "B": 4, "think_budget": 2, "answer_budget": demo.CODE_LEN + 3, "hidden": 64, "layers": 2,
                 "steps": {"adamw": args.adamw_steps, "sgd": args.sgd_steps}, "lr": dict(demo.LR),
                 "grad_clip": {"adamw": 1.0, "sgd": 0.0}, "samples": 16, "pretrain_steps": args.pretrain_steps,
                 "easy_bias": EASY_BIAS, "seeds": args.seeds, "p0_samples": 256}
    noise_cfg = {"M": 4, "B": 8, "think_budget": 2, "answer_budget": demo.CODE_LEN + 3, "hidden": 64, "layers": 2,
                 "steps": args.noise_steps, "every": 20, "lr": 1e-3, "grad_clip": 0.0, "samples": 16,
                 "pretrain_steps": args.noise_pretrain_steps, "eps": list(NOISE_EPS), "below_eps": [max(NOISE_EPS)],
                 "qs": args.noise_qs, "seeds": args.noise_seeds, "per_key": PER_KEY}
    stops = {"adamw": stops_every(args.adamw_steps, 5, dense_until=20, dense_every=2),
             "sgd": stops_every(args.sgd_steps, 5, dense_until=20, dense_every=2),
             "noise": stops_every(args.noise_steps, noise_cfg["every"])}
    noise_cfg["window"] = stops["noise"][-3:]
    codes, train_ex, val_ex = demo.make_task(0, 2)
    true, noise = noise_codes(0)
    print(f"mixed: easy key {EASY} -> {codes[EASY]}, hard key {HARD} -> {codes[HARD]}; noise: true {true}, noise {noise}")

    pool = make_pool(args.workers)  # also sets this process up when --workers 1
    tok = models.build_tiny_tokenizer()
    bases = {b["base"]: b for b in run_jobs(pool, pretrain_job, [
        {"base": "mixed", "steps": args.pretrain_steps, "codes": codes},
        {"base": "noise_below", "steps": args.noise_pretrain_steps, "true": true, "noise": noise},
        {"base": "noise_above", "steps": args.noise_pretrain_steps, "true": true, "noise": noise}], t0)}
    pretrain_s = {k: round(v["seconds"]) for k, v in bases.items()}
    torch.set_num_threads(1)
    mixed_model = models.build_tiny_model(tok)
    mixed_model.load_state_dict(bases["mixed"]["state"])
    torch.manual_seed(0)
    base_mixed = demo.measure(mixed_model, tok, codes, mixed_cfg["think_budget"], mixed_cfg["p0_samples"])
    p0 = {k: v["P"] for k, v in base_mixed["per_key"].items()}
    base_noise = {}
    for name in ("noise_below", "noise_above"):
        model = models.build_tiny_model(tok)
        model.load_state_dict(bases[name]["state"])
        base_noise[name] = answer_probs(model, tok, {k: [true[k], noise[k]] for k in true}, 2, 64, seed=0)
    print(f"bases: mixed p0 {EASY} {p0[EASY]:.2e}, {HARD} {p0[HARD]:.2e} (p(copy) {base_mixed['copy']:.3f}); noise "
          + "; ".join(f"{n}: P(c), P(c') " + ", ".join(f"{a:.2g}/{b:.2g}" for a, b in v.values())
                      for n, v in base_noise.items())
          + f"  [pretraining {', '.join(f'{k} {v}s' for k, v in pretrain_s.items())}; {time.perf_counter() - t0:.0f}s]")

    methods = MIXED_METHODS if args.methods == "all" else [m for m in MIXED_METHODS if m[0] in args.methods.split(",")]
    jobs = []
    for optimizer in [o for o in ("sgd", "adamw") if o in args.optimizers.split(",")]:  # longest first
        for method in methods:
            for seed in range(args.seeds):
                jobs.append({"experiment": "mixed", "method": method, "optimizer": optimizer, "seed": seed,
                             "lr": mixed_cfg["lr"][optimizer], "grad_clip": mixed_cfg["grad_clip"][optimizer],
                             "base": "mixed", "base_state": bases["mixed"]["state"], "train": train_ex, "val": val_ex[:1],
                             "answers": {k: [c] for k, c in codes.items()}, "stops": stops[optimizer],
                             "samples": mixed_cfg["samples"], "probe": optimizer == "adamw", "cfg": mixed_cfg,
                             "out": str(out / "runs" / "mixed" / optimizer / method[0].replace(" ", "_").replace("=", "")
                                        / f"seed{seed}")})
    for base, eps_list in (("noise_above", noise_cfg["eps"]), ("noise_below", noise_cfg["below_eps"])):
        for eps in eps_list:
            for q in noise_cfg["qs"]:
                for seed in range(args.noise_seeds):
                    jobs.append({"experiment": "noise", "method": (f"GARL q={q:g}", "garl", q), "optimizer": "adamw",
                                 "seed": seed, "eps": eps, "lr": noise_cfg["lr"], "grad_clip": noise_cfg["grad_clip"],
                                 "base": base, "base_state": bases[base]["state"],
                                 "train": noise_examples(true, noise, eps), "val": noise_examples(true, noise, 0, 1)[:1],
                                 "answers": {k: [true[k], noise[k]] for k in true}, "stops": stops["noise"],
                                 "samples": noise_cfg["samples"], "probe": False, "cfg": noise_cfg,
                                 "out": str(out / "runs" / base / f"eps{eps:g}" / f"q{q:g}" / f"seed{seed}")})
    print(f"{len(jobs)} runs on {args.workers} worker(s)")
    runs = run_jobs(pool, run_job, jobs, t0)
    if pool is not None:
        pool.shutdown()

    mixed_runs = [r for r in runs if r["experiment"] == "mixed"]
    noise_runs = [r for r in runs if r["experiment"] == "noise"]
    result = {"settings": {"mixed": mixed_cfg, "noise": noise_cfg, "stops": stops, "workers": args.workers,
                           "escape_threshold": ESCAPE, "collapse_factor": demo.COLLAPSE},
              "codes": codes, "noise_codes": {"true": true, "noise": noise}, "p0": p0,
              "base_mixed": {k: v for k, v in base_mixed.items()}, "base_noise": base_noise,
              "pretrain_seconds": {k: v["seconds"] for k, v in bases.items()},
              "theory": {"sgd_escape_time_ratio_hard": {f"{q:g}": theory.sigmoid_escape_time_integral(p0[HARD], q)
                                                        / theory.sigmoid_escape_time_integral(p0[HARD], 1.0)
                                                        for q in NOISE_QS},
                         "contamination": {f"{eps:g}": {f"{q:g}": predicted_contamination(eps, q) for q in NOISE_QS}
                                           for eps in NOISE_EPS}},
              "runs": runs, "mixed_summary": mixed_summary(mixed_runs, p0, methods),
              "noise_summary": noise_summary(noise_runs, len(noise_cfg["window"]))}
    result["tables"] = tables(result["noise_summary"], result["mixed_summary"], noise_cfg["window"])
    result["settings"]["wall_seconds"] = time.perf_counter() - t0
    result["settings"]["run_seconds"] = sum(r["seconds"] for r in runs)
    report(result, out, not args.no_figure_copy)
    print(f"total {result['settings']['wall_seconds']:.0f}s ({result['settings']['run_seconds']:.0f}s in runs)")
    return result


if __name__ == "__main__":
    main()
