r"""Cold start on a CPU: does GARL/PAFT escape where GRPO stalls? A synthetic task, the real trainer.

    python experiments/demo.py                      # the full demo, 6 seeds (~13 minutes on one CPU core, 1 thread)
    python experiments/demo.py --quick              # 1 seed, 30 steps: about 80 seconds

The task ("secret codes"). Each question names a key (a colour word) and the gold answer is that
key's secret code, 2 characters from a 35-character alphabet, fixed by the task seed:

    user:      context: blue\nquestion: code?
    assistant: <think>\n<rationale, sampled></think>\n\n<code><|im_end|>

Nothing in the prompt says what the code is: the model must discover it from the training signal, as
a cold-started model must discover what answer the linearized prompt wants. The thinking block is
sampled and trained exactly as in the paper: the estimators see only w_m = p(y* | x, z_m).

The base model, and why a rationale helps. The project's tiny Qwen3-architecture model
(models.build_tiny_model), pretrained here by plain language modelling on task-format strings whose
rationale is 2 random alphabet characters and whose answer COPIES them: "<think>\nq7</think>\n\nq7".
The characters are drawn independently of the key (never from the gold codes), so the base model
thinks a uniformly random 2-character guess, answers with what it thought, and knows nothing about
which code goes with which key. Copying from a fixed offset (5 tokens back) is a positional pattern
that a 2-layer RoPE model learns in a few hundred steps; copying from a variable offset (rationales
of random length), tried first, needs content-based (induction) attention and was not learned within
the demo's time budget. A 2-token thinking budget keeps the rationale's length, hence the offset,
fixed during training ("</think>" is forced after 2 tokens). Then
    p0 = P(y*|x) = sum_z p(z|x) p(y*|x,z) ~ p(z = code | x) p(copy) ~ 1/35^2 = 8e-4,
while a rationale that names the code makes y* likely: p(y*|x, z = code) ~ p(copy) ~ 0.96.
All of it is measured (measure), not assumed.

Two routes lead to y*. The score-function term moves p(z|x) toward rationales that make y* likely
(think the code, copy it); one right character already multiplies the base model's w by ~1e4, so it
has signal in ~2/35 of the rollouts, not 1/35^2. The pathwise term trains p(y*|x, z_m) on the sampled, mostly
wrong, rationales: it teaches the key -> code map directly and unlearns copying. measure() tells
which route each trained model takes: p(z = code|x), p(y*|x, z) for the code and for wrong codes, and
P with rationales sampled for another key's prompt (~P if the answer ignores the rationale).

Training goes through train.train, the trainer every other run uses (same rollouts, estimators,
accumulation, clipping, evaluation): GRPO, GARL q in {0, 0.5, 0.75, 1}, GARL q=1 with the pathwise
term off, PAFT q in {0.75, 1}; each with AdamW and with plain SGD; 6 seeds. The seed changes the data
order and the sampling; the base model is the same for every run (as the paper starts every run from
one Qwen3-0.6B).

What the theory predicts (paper Sec. 5, Thm 5.1/5.2): under gradient flow the update is P^(1-q) times
the q = 1 update, so from p0 ~ 1e-3 q = 1 escapes in ~log(1/p0), q = 0.75 a few times slower, q <= 0.5
not within a short budget, and GRPO only after its first lucky correct sample (steps*B*M*p0 ~ 3
expected in a whole run). SGD follows that scaling; AdamW divides each parameter's step by its
gradient's running RMS, which removes the global P^(1-q) factor while the gradient is well above eps.
Results, and why they come out as they do: docs/cold_start.md.
"""
import argparse
import contextlib
import io
import json
import math
import random
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library is the top-level folder

import torch

import models
import logprobs
import rollout
import train
from prompts import build_prompt, gold_ids, gold_text

# Project choice: 25 lower-case letters and 10 digits. No 'a' (normalize_answer drops the articles
# "a"/"an", which would make some codes unscoreable) and no upper case or punctuation (normalization
# would merge or drop them): GRPO's exact-match reward and the eval's substring match see the same code.
ALPHABET = "bcdefghijklmnopqrstuvwxyz0123456789"
KEYS = ["red", "blue", "green", "black", "white", "pink", "gray", "gold"]
CODE_LEN = 2  # the gold code's length, and the base model's rationale length (the copy offset is fixed)
RATIONALES = [a + b for a in ALPHABET for b in ALPHABET]  # the 35^2 rationales the base model writes
TASK = "synthetic"  # args.task: cold-start prompts (prompts.build_prompt) do not depend on it

# (name, estimator, q, no_pathwise). Project choice: the score-only ablation runs at q = 1, where the
# score-function coefficient c_m = w_m / w_bar - 1 is self-normalized and does not shrink with P:
# the score term's best chance. If it stalls there, it stalls at every q.
METHODS = [("GRPO", "grpo", 0.0, False), ("GARL q=0", "garl", 0.0, False), ("GARL q=0.5", "garl", 0.5, False),
           ("GARL q=0.75", "garl", 0.75, False), ("GARL q=1", "garl", 1.0, False),
           ("GARL q=1 score-only", "garl", 1.0, True), ("PAFT q=0.75", "paft", 0.75, False),
           ("PAFT q=1", "paft", 1.0, False)]
# Project choice: one learning rate per optimizer, the same for every method, picked by a pilot of
# GARL q=1 (the method the theory says is fastest) with seed 99 (not a demo seed), 80 steps, over
# half-decade grids: the rate with the earliest escape (`python experiments/demo.py --pilot` reruns it, ~80 s).
#   AdamW 3e-4 / 1e-3 / 3e-3 / 1e-2: escape at step 32 / 14 / 8 / 19  (lowest P estimate 4e-7 / 7e-5 / 7e-5 / 1e-11)
#   SGD   0.01 / 0.03 / 0.1  / 0.3:  escape at step 32 / 15 / 28 / 60 (lowest P estimate 5e-6 / 2e-7 / 1e-10 / 2e-17)
LR = {"adamw": 3e-3, "sgd": 0.03}
ESCAPE = 0.5  # escape = the step whose rollouts first estimate P >= 0.5 (w_bar_mean; GRPO: reward_mean)
# Project choice: at the end, a key whose P (measure) is below COLLAPSE * its p0 "collapsed": training pushed it
# two decades below where it started. Not solved (P < 0.5) and not collapsed is a "stall".
COLLAPSE = 1e-2


# ------------------------------------------------------------------------------------------------ task
def make_task(seed: int = 0, n_keys: int = 2, n_train: int = 256, n_val: int = 16):
    """The secret-code task: (codes {key: code}, train examples, val examples). Deterministic in seed."""
    rng = random.Random(seed)
    codes = {}
    for key in KEYS[:n_keys]:
        while (code := "".join(rng.choice(ALPHABET) for _ in range(CODE_LEN))) in codes.values():
            pass  # distinct codes: each key has its own answer
        codes[key] = code

    def example(i):
        key = KEYS[i % n_keys]  # balanced: every key appears equally often
        return {"id": f"code-{i}", "question": "code?", "context": key, "answer": codes[key], "aliases": []}

    train_ex, val_ex = [example(i) for i in range(n_train)], [example(n_train + i) for i in range(n_val)]
    return codes, train_ex, val_ex


def prompt_text(tokenizer, key: str) -> str:
    return build_prompt(tokenizer, {"question": "code?", "context": key}, TASK, "cold")


def format_string(tokenizer, key: str, rationale: str, answer: str) -> str:
    """One full conversation: cold-start prompt, thinking block, answer (the layout train.py scores)."""
    return prompt_text(tokenizer, key) + rationale + "</think>" + gold_text(answer)


# ------------------------------------------------------------------------------------------------ base model
def pretrain(tokenizer, draw, steps: int, seed: int = 0, batch: int = 32, lr: float = 6e-3, warmup: int = 50,
             hidden: int = 64, layers: int = 2):
    """The tiny model, language-modelled on format strings: draw(rng) -> (key, rationale, answer) makes each one.

    AdamW, lr warmed up linearly over `warmup` steps then decayed linearly to 0; a batch of `batch` strings.
    Example: draw = lambda rng: ("red", "q7", "q7") would teach one string; the experiments draw at random.
    """
    rng = random.Random(seed + 12345)
    model = models.build_tiny_model(tokenizer, seed=seed, hidden=hidden, layers=layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:  # linear warmup, then linear decay to 0
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (1 - step / steps)
        seqs = [tokenizer(format_string(tokenizer, *draw(rng)), add_special_tokens=False).input_ids
                + [tokenizer.eos_token_id] for _ in range(batch)]
        T = max(len(s) for s in seqs)
        ids = torch.tensor([s + [tokenizer.pad_token_id] * (T - len(s)) for s in seqs])  # [batch, T]
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])  # [batch, T]
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def random_rationale(rng) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(CODE_LEN))


def pretrain_base(tokenizer, n_keys: int, steps: int, seed: int = 0, **kw):
    """The demo's base model: pretrain() on "<prompt(key)>r</think>\n\nr" with r 2 random characters.

    r is drawn independently of the key (never the gold code on purpose): the model learns to write a
    uniformly random 2-character guess and to copy it into its answer, not which code goes with a key.
    """
    def draw(rng):
        r = random_rationale(rng)  # r first, then the key: the draw order fixes the base model
        return rng.choice(KEYS[:n_keys]), r, r

    return pretrain(tokenizer, draw, steps, seed, **kw)


@torch.no_grad()
def measure(model, tokenizer, codes: dict, think_budget: int, samples: int = 256) -> dict:
    """P = sum_z p(z|x) p(y*|x,z) per key, and what it rests on. Means over keys (questions are balanced).

    The sum over the set C of the 35^2 two-character rationales r is exact; the rest is (1 - p(C|x))
    times the mean w of the sampled rationales (`samples` of them) that fall outside C (0 if none
    does; a ratio estimate, consistent and never above 1 - p(C|x)). Also:
      copy                 mean over r of p(answer = r | x, r): the base model's habit
      p_code_rationale     p(z = code | x): the model thinks the code
      p_y_code_rationale   p(y* | x, z = code);  p_y_wrong_rationale: mean over r != code of p(y* | x, r)
      P_swapped            E p(y* | x, z) with z sampled for ANOTHER key's prompt: ~P if the answer comes
                           from the key, << P if it comes from what the model thought
      p_y_empty_rationale  p(y* | x, "</think>" at once; counted as forced: we condition on it)
    """
    tokens = rollout.SpecialTokens.of(tokenizer, model.generation_config)
    split = think_budget < CODE_LEN + len(tokens.close_ids)  # "</think>" forced right after r, or written by the model
    canonical = [(ids, tokens.close_ids) if split else (ids + tokens.close_ids, [])
                 for ids in (tokenizer(r, add_special_tokens=False).input_ids for r in RATIONALES)]
    prompts = {k: tokenizer(prompt_text(tokenizer, k), add_special_tokens=False).input_ids for k in codes}
    drawn = {k: rollout.generate(model, [p], samples, tokens, think_budget)[0] for k, p in prompts.items()}
    per_key, keys = {}, list(codes)
    for key, code in codes.items():
        prompt, gold, i = prompts[key], gold_ids(tokenizer, code), RATIONALES.index(code)
        rows = [rollout.Sample(prompt, z, f, gold) for z, f in canonical]
        log_pz, log_gold = (t.double() for t in logprobs.sequence_logprobs(model, rows, tokens))  # [35^2] each
        copy_rows = [rollout.Sample(prompt, z, f, gold_ids(tokenizer, r))
                     for (z, f), r in zip(canonical, RATIONALES)]
        log_copy = logprobs.log_weights(model, copy_rows, tokens, len(copy_rows)).double()  # [35^2]
        rest = [s for s in drawn[key] if (s.z_ids, s.forced_ids) not in canonical]  # outside the 35^2
        other = drawn[keys[(keys.index(key) + 1) % len(keys)]]  # rationales written for another key
        extra = [rollout.Sample(prompt, s.z_ids, s.forced_ids, gold) for s in rest + other]
        extra.append(rollout.Sample(prompt, [], list(tokens.close_ids), gold))  # the empty rationale
        w = logprobs.log_weights(model, extra, tokens, len(extra)).exp()  # [len(rest) + samples + 1]
        wrong = torch.cat([log_gold[:i], log_gold[i + 1:]]).exp()
        rest_p = (1 - log_pz.exp().sum().item()) * w[:len(rest)].mean().item() if rest else 0.0
        per_key[key] = {"P": (log_pz + log_gold).exp().sum().item() + rest_p,
                        "P_swapped": w[len(rest):-1].mean().item(), "p_canonical": log_pz.exp().sum().item(),
                        "copy": log_copy.exp().mean().item(), "p_code_rationale": log_pz[i].exp().item(),
                        "p_y_code_rationale": log_gold[i].exp().item(), "p_y_wrong_rationale": wrong.mean().item(),
                        "p_y_empty_rationale": w[-1].item()}
    mean = {k: statistics.mean(v[k] for v in per_key.values()) for k in next(iter(per_key.values()))}
    return {**mean, "per_key": per_key, "samples_per_key": samples}


# ------------------------------------------------------------------------------------------------ training
def train_one(cfg, method, optimizer: str, seed: int, base_state, tokenizer, task, run_dir: Path) -> dict:
    """One run of train.train from the base model. Returns its curve, final numbers and route."""
    name, estimator, q, no_pathwise = method
    shutil.rmtree(run_dir, ignore_errors=True)  # train.py refuses to overwrite a run
    flags = ["--model", "tiny", "--start", "cold", "--estimator", estimator, "--q", str(q), "--optimizer", optimizer,
             "--lr", str(cfg["lr"][optimizer]), "--grad-clip", str(cfg["grad_clip"][optimizer]),
             "--M", str(cfg["M"]), "--B", str(cfg["B"]), "--micro-batch", str(cfg["B"] * cfg["M"]),
             "--think-budget", str(cfg["think_budget"]), "--answer-budget", str(cfg["answer_budget"]),
             "--steps", str(cfg["steps"]), "--eval-every", "0", "--eval-n", str(cfg["eval_n"]),
             "--save-every", str(10**9), "--seed", str(seed), "--out", str(run_dir), "--no-eval-first"]
    args = train.parse_args(flags + (["--no-pathwise"] if no_pathwise else []))
    args.task = TASK
    model = models.build_tiny_model(tokenizer, hidden=cfg["hidden"], layers=cfg["layers"])
    model.load_state_dict(base_state)  # every run starts from the same base model
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's progress bar is noise here
        train.train(args, model, tokenizer, task[1], task[2])  # seeds python and torch with args.seed itself
    seconds = time.perf_counter() - t
    torch.manual_seed(10**6 + seed)
    end = measure(model, tokenizer, task[0], cfg["think_budget"], cfg["end_samples"])  # the trained `model`
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    key = "reward_mean" if estimator == "grpo" else "w_bar_mean"  # both estimate P on the training batch
    curve = [r[key] for r in rows]
    escape = next((r["step"] for r in rows if r[key] >= ESCAPE), None)
    last = rows[-1]
    return {"method": name, "optimizer": optimizer, "seed": seed, "curve": curve, "curve_key": key,
            "grad_norm": [r["grad_norm"] for r in rows], "escape_step": escape,
            "final_p_estimate": sum(curve[-5:]) / len(curve[-5:]),
            "final_val_p@1": last["val/p@1"], "final_val_em@1": last["val/em@1"],
            f"final_val_maj@{cfg['eval_n']}": last[f"val/maj@{cfg['eval_n']}"],
            "end": {k: v for k, v in end.items() if k != "per_key"}, "end_per_key": end["per_key"], "seconds": seconds}


ROUTE = ["P", "P_swapped", "p_code_rationale", "p_y_code_rationale", "p_y_wrong_rationale", "copy"]


def reads_rationale(key_end: dict) -> bool:
    """The answer depends on the rationale: another key's rationales halve P (or worse)."""
    return key_end["P_swapped"] < key_end["P"] / 2


def outcome(p_end: float, p0: float) -> str:
    """A key at the end of a run: solved (P >= ESCAPE), collapse (P < COLLAPSE * p0), or stall (neither).

    >>> outcome(0.9, 7.5e-4), outcome(3e-4, 7.5e-4), outcome(1e-9, 7.5e-4)
    ('solved', 'stall', 'collapse')
    """
    return "solved" if p_end >= ESCAPE else "collapse" if p_end < COLLAPSE * p0 else "stall"


def summarize(runs: list[dict], p0: dict) -> list[dict]:
    """Per method x optimizer: median steps to escape over seeds (a non-escape counts as infinity), means, and
    per (run, key) pair the outcome at the end against that key's p0 ({key: P of the base model})."""
    rows = []
    for optimizer in ("adamw", "sgd"):
        for name, *_ in METHODS:
            mine = [r for r in runs if r["method"] == name and r["optimizer"] == optimizer]
            if not mine:
                continue
            esc = sorted(math.inf if r["escape_step"] is None else r["escape_step"] for r in mine)
            med = statistics.median(esc)
            solved = [k for r in mine for k in r["end_per_key"].values() if k["P"] >= ESCAPE]  # (run, key) pairs
            outcomes = [[outcome(v["P"], p0[key]) for key, v in r["end_per_key"].items()] for r in mine]
            rows.append({"method": name, "optimizer": optimizer, "escape_steps": [r["escape_step"] for r in mine],
                         "median_escape_step": None if math.isinf(med) else med,
                         "escaped": sum(not math.isinf(e) for e in esc), "seeds": len(mine),
                         **{k: statistics.mean(r[k] for r in mine)
                            for k in ("final_val_p@1", "final_val_em@1", "final_p_estimate")},
                         "end": {k: statistics.mean(r["end"][k] for r in mine) for k in ROUTE},
                         "solved_keys": len(solved),
                         "solved_via_rationale": sum(reads_rationale(k) for k in solved),
                         "outcomes": outcomes,  # per seed, per key
                         **{f"{o}_keys": sum(x == o for row in outcomes for x in row)
                            for o in ("solved", "stall", "collapse")}})
    return rows


def print_table(summary: list[dict], steps: int) -> str:
    """Two markdown tables: the escape (training curves, validation), and the route (the trained models)."""
    lines = ["| method | optimizer | steps to escape, median (per seed) | escaped | keys solved / stalled / "
             "collapsed | final val p@1 (%) | final val EM (%) | final P |", "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        med = "no escape" if r["median_escape_step"] is None else f"{r['median_escape_step']:g}"
        per = ", ".join("-" if e is None else str(e) for e in r["escape_steps"])
        lines.append(f"| {r['method']} | {r['optimizer']} | {med} ({per}) | {r['escaped']}/{r['seeds']} | "
                     f"{r['solved_keys']} / {r['stall_keys']} / {r['collapse_keys']} | "
                     f"{r['final_val_p@1']:.1f} | {r['final_val_em@1']:.1f} | {r['end']['P']:.2g} |")
    lines += ["", "| method | optimizer | p(z = code) | p(y* given z = code) | p(y* given a wrong z) | P "
              "| P, other key's rationales | p(copy) | keys solved (P >= 0.5): answer reads the rationale |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        e = r["end"]
        lines.append(f"| {r['method']} | {r['optimizer']} | {e['p_code_rationale']:.2g} | "
                     f"{e['p_y_code_rationale']:.2g} | {e['p_y_wrong_rationale']:.2g} | {e['P']:.2g} | "
                     f"{e['P_swapped']:.2g} | {e['copy']:.2g} | {r['solved_via_rationale']} of {r['solved_keys']} |")
    table = "\n".join(lines)
    print(table + f"\n('-': P estimate never reached {ESCAPE} within {steps} steps. P, p(...): the trained models' "
          f"values (measure), mean over keys and seeds. Keys: (run, key) pairs at the end: solved P >= {ESCAPE}, "
          f"collapsed P < {COLLAPSE:g} x that key's p0, stalled otherwise)")
    return table


def plot(runs: list[dict], cfg: dict, p0: float, path: Path) -> bool:
    """P estimate vs step, mean over seeds, one panel per optimizer. Needs matplotlib (optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"demo.png skipped: matplotlib could not be imported ({e}); pip install matplotlib to get it")
        return False
    floor = 1e-8  # log axis: a 0 (GRPO before any correct sample) is drawn at the floor
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.6), sharey=True)
    for ax, optimizer in zip(axes, ("adamw", "sgd")):
        for i, (name, *_) in enumerate(METHODS):
            curves = [r["curve"] for r in runs if r["method"] == name and r["optimizer"] == optimizer]
            if not curves:
                continue
            mean = [sum(c[s] for c in curves) / len(curves) for s in range(len(curves[0]))]
            smooth = [max(statistics.mean(mean[max(0, s - 4):s + 1]), floor) for s in range(len(mean))]  # 5 steps
            ax.plot(smooth, label=name, color=plt.cm.tab10(i), ls="--" if "score" in name or "PAFT" in name else "-")
        ax.axhline(ESCAPE, color="k", lw=0.8, ls=":")
        ax.axhline(p0, color="gray", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylim(floor, 1.5)
        ax.set_xlabel("training step")
        ax.set_title(f"{'AdamW' if optimizer == 'adamw' else 'SGD'}, lr {cfg['lr'][optimizer]:g}")
    axes[0].set_ylabel("estimate of P = p(y*|x) (w_bar; GRPO: reward)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.suptitle(f"Cold start on the secret-code task (p0 = {p0:.1e}): mean over {cfg['seeds']} seeds, running mean "
                 f"over 5 steps; dotted: p0 and the escape threshold {ESCAPE}")
    fig.tight_layout(rect=(0, 0, 0.86, 1))  # room on the right for the legend
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def pilot_learning_rates(cfg, base_state, tokenizer, task, p0: float, out: Path) -> dict:
    """How LR was chosen: GARL q=1, seed 99, 80 steps; per optimizer the rate that escapes first."""
    grids, rows = {"adamw": [3e-4, 1e-3, 3e-3, 1e-2], "sgd": [0.01, 0.03, 0.1, 0.3]}, []
    garl_q1 = next(m for m in METHODS if m[0] == "GARL q=1")
    for optimizer, grid in grids.items():
        for lr in grid:
            pilot_cfg = dict(cfg, steps=80, lr={optimizer: lr})
            r = train_one(pilot_cfg, garl_q1, optimizer, 99, base_state, tokenizer, task, out / "pilot")
            rows.append({"optimizer": optimizer, "lr": lr, "escape_step": r["escape_step"],
                         "min_p_estimate": min(r["curve"]), "p0": p0})
            print(f"pilot {optimizer} lr {lr:g}: escape step {r['escape_step']}, "
                  f"lowest P estimate {min(r['curve']):.1e}")
    chosen = {opt: min((r for r in rows if r["optimizer"] == opt and r["escape_step"] is not None),
                       key=lambda r: (r["escape_step"], r["lr"]))["lr"] for opt in grids}
    print(f"earliest escape: {chosen} (demo.LR = {LR})")
    (out / "pilot.json").write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=1))
    return {"pilot": rows, "chosen": chosen}


def copy_figure(png: Path, skip: bool):
    if not skip:
        figures = Path(__file__).resolve().parent.parent / "docs" / "figures"  # the README shows docs/figures/demo.png
        figures.mkdir(exist_ok=True)
        shutil.copy(png, figures / "demo.png")


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder: demo.json, demo.png and one folder per run")
    p.add_argument("--seeds", type=int, default=6, help="training seeds per method and optimizer")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps per run (the same for every method)")
    p.add_argument("--quick", action="store_true", help="1 seed, 30 steps: a fast look, not the reported numbers")
    p.add_argument("--methods", default="all", help="comma-separated method names to run (default: all eight)")
    p.add_argument("--optimizers", default="adamw,sgd", help="comma-separated: adamw, sgd")
    p.add_argument("--adamw-lr", type=float, default=LR["adamw"], help="AdamW learning rate (all methods)")
    p.add_argument("--sgd-lr", type=float, default=LR["sgd"], help="SGD learning rate (all methods)")
    p.add_argument("--pretrain-steps", type=int, default=600, help="language-modelling steps for the base model")
    p.add_argument("--p0-samples", type=int, default=256, help="sampled rationales per key for p0's Monte Carlo part")
    p.add_argument("--think-budget", type=int, default=2, help="thinking tokens before '</think>' is forced")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this tiny model)")
    p.add_argument("--no-figure-copy", action="store_true", help="do not copy demo.png to docs/figures/demo.png")
    p.add_argument("--replot", action="store_true",
                   help="no training: recompute the summary and tables from OUT/demo.json's runs, redraw OUT/demo.png")
    p.add_argument("--pilot", action="store_true", help="instead of the demo: the learning-rate pilot behind LR")
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - {m[0] for m in METHODS} - {"all"}
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; known: {', '.join(m[0] for m in METHODS)}")
    if args.quick:
        args.seeds, args.steps = 1, 30
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        saved = json.loads((Path(args.out) / "demo.json").read_text())
        saved["summary"] = summarize(saved["runs"], {k: v["P"] for k, v in saved["base"]["per_key"].items()})
        saved["table_markdown"] = print_table(saved["summary"], saved["settings"]["steps"])
        (Path(args.out) / "demo.json").write_text(json.dumps(saved, indent=1))
        if plot(saved["runs"], saved["settings"], saved["base"]["P"], Path(args.out) / "demo.png"):
            copy_figure(Path(args.out) / "demo.png", args.no_figure_copy)
        return saved
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's per-checkpoint bar
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Project choices, all in one place: B*M = 32 rollouts per step; a 2-token thinking budget (the base
    # model's rationale length; with 4, trained models drifted to 4-token forced rationales, off the copy
    # offset); an answer budget of exactly "\n\n" + code + EOS. grad_clip: AdamW keeps the trainer's
    # default 1.0; SGD runs unclipped, the gradient-flow setting of the theory (clipping would cap q = 1's
    # large early gradients and blur the P^(1-q) scaling the run is meant to show). end_samples: Monte
    # Carlo rationales per key in each run's measure().
    cfg = {"n_keys": 2, "M": 8, "B": 4, "think_budget": args.think_budget, "answer_budget": CODE_LEN + 3, "eval_n": 4,
           "steps": args.steps, "seeds": args.seeds, "lr": {"adamw": args.adamw_lr, "sgd": args.sgd_lr},
           "grad_clip": {"adamw": 1.0, "sgd": 0.0}, "pretrain_steps": args.pretrain_steps, "hidden": 64,
           "layers": 2, "end_samples": 64, "escape_threshold": ESCAPE, "task_seed": 0}
    tokenizer = models.build_tiny_tokenizer()
    task = make_task(cfg["task_seed"], cfg["n_keys"])
    print(f"task: {cfg['n_keys']} keys, codes {task[0]}; {len(task[1])} train / {len(task[2])} val questions")

    base = pretrain_base(tokenizer, cfg["n_keys"], args.pretrain_steps, hidden=cfg["hidden"], layers=cfg["layers"])
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    torch.manual_seed(0)
    b = measure(base, tokenizer, task[0], cfg["think_budget"], args.p0_samples)
    per_key = ", ".join(f"{k} {v['P']:.2e}" for k, v in b["per_key"].items())
    print(f"base model: {models.describe(base)}, pretrained {args.pretrain_steps} steps to copy its 2-character "
          f"rationale: p(copy) = {b['copy']:.3f}, p(z is 2 characters) = {b['p_canonical']:.3f}; "
          f"p0 = {b['P']:.2e} (per key {per_key}; "
          f"1/{len(ALPHABET)}^{CODE_LEN} = {len(ALPHABET) ** -CODE_LEN:.1e}); p(y*|x, z = code) = "
          f"{b['p_y_code_rationale']:.3f}, p(y*|x, wrong z) = {b['p_y_wrong_rationale']:.1e}  "
          f"[{time.perf_counter() - t0:.0f}s]")
    if args.pilot:
        return pilot_learning_rates(cfg, base_state, tokenizer, task, b["P"], out)

    chosen = METHODS if args.methods == "all" else [m for m in METHODS if m[0] in args.methods.split(",")]
    runs = []
    for optimizer in args.optimizers.split(","):
        for method in chosen:
            for seed in range(args.seeds):
                run_dir = out / "runs" / optimizer / method[0].replace(" ", "_").replace("=", "") / f"seed{seed}"
                r = train_one(cfg, method, optimizer, seed, base_state, tokenizer, task, run_dir)
                runs.append(r)
                esc = "no escape" if r["escape_step"] is None else f"escape at step {r['escape_step']}"
                e = r["end"]
                print(f"{optimizer:5s} {method[0]:20s} seed {seed}: {esc:18s} P {e['P']:.2g} (other key's z: "
                      f"{e['P_swapped']:.2g}), p(z=code) {e['p_code_rationale']:.2g}, p(y*|wrong z) "
                      f"{e['p_y_wrong_rationale']:.2g}, val EM {r['final_val_em@1']:5.1f}  ({r['seconds']:.1f}s)  "
                      f"[{time.perf_counter() - t0:.0f}s]")

    summary = summarize(runs, {k: v["P"] for k, v in b["per_key"].items()})
    table = print_table(summary, args.steps)
    cfg["wall_seconds"] = time.perf_counter() - t0
    result = {"settings": cfg, "codes": task[0], "base": b, "methods": [m[0] for m in chosen], "runs": runs,
              "summary": summary, "table_markdown": table}
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    if plot(runs, cfg, b["P"], out / "demo.png"):
        copy_figure(out / "demo.png", args.no_figure_copy)
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}; total {cfg['wall_seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
