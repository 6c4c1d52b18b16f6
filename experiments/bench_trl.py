"""Per-step cost of the TRL path (train_trl.py / GARLTrainer) against train.py, same run, same process.

    python experiments/bench_trl.py --model tiny                      # CPU, a couple of minutes
    python experiments/bench_trl.py --model tiny --estimator paft

Both trainers take the same flags (train.py's CPU defaults unless given: M=4, thinking budget 24, B=2
questions per step, micro-batch 4, contexts cut to 1200 characters) and start from the same weights.
Rounds alternate: train.py for 1 + --steps steps, then GARLTrainer for 1 + --steps steps; the first step of
each run is a warm-up and is not counted. Medians over all counted steps of all --rounds rounds.

What a step is, in both: rollouts, the weight pass, the coefficients, forward + backward over the rows, the
optimizer step. train.py: the sum of its time_generate, time_weights, time_estimator, time_backward and
time_optimizer; GARLTrainer: from TRL's on_step_begin to on_step_end callbacks (the same work, plus the
trainer's own bookkeeping). Phases: time_generate and time_weights, logged by both.
Timings on a shared CPU are noisy: read the ratio, and run it again.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library is the top-level folder

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import train  # noqa: E402
from scale import train_trl  # noqa: E402
from models import load_model  # noqa: E402
from prompts import build_prompt  # noqa: E402
from scale.trl_garl import GARLTrainer  # noqa: E402


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step: on_step_begin (before its first micro-batch) to on_step_end (after the
    update)."""

    def __init__(self):
        self.times, self.start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def run_ours(flags, out):
    args = train.parse_args(flags + ["--out", str(out), "--save-every", "1000", "--eval-n", "1", "--no-eval-first"])
    train_examples, val_examples = train.load_data(args)
    torch.manual_seed(args.seed)
    model, tok = load_model(args.model)
    train.train(args, model, tok, train_examples, val_examples)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # warm-up dropped
    parts = ["time_generate", "time_weights", "time_estimator", "time_backward", "time_optimizer"]
    return ([sum(line[k] for k in parts) for line in lines], [line["time_generate"] for line in lines],
            [line["time_weights"] for line in lines])


def run_trl(flags, out):
    args = train_trl.parse_args(flags + ["--out", str(out), "--save-every", "1000"])
    config = train_trl.garl_config(args)
    config.save_strategy = "no"
    train_examples, _ = train.load_data(args)
    model, tok = load_model(args.model)
    dataset = Dataset.from_list([{"prompt": build_prompt(tok, ex, args.task, args.start), "answer": ex["answer"]}
                                 for ex in train_examples])
    timer = StepTimer()
    trainer = GARLTrainer(model, args=config, train_dataset=dataset, processing_class=tok, callbacks=[timer])
    trainer.train()
    logs = [line for line in trainer.state.log_history if "time_generate" in line][1:]
    return timer.times[1:], [line["time_generate"] for line in logs], [line["time_weights"] for line in logs]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="model for both trainers ('tiny', 'smollm2', a path)")
    p.add_argument("--task", default="hotpotqa", help="task (its shipped sample on CPU)")
    p.add_argument("--estimator", choices=["garl", "paft"], default="garl", help="estimator for both trainers")
    p.add_argument("--steps", type=int, default=3, help="counted steps per run (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of (train.py, GARLTrainer)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared CPU)")
    p.add_argument("--flags", default="", help="more flags for both trainers, e.g. \"--M 8 --think-budget 48\"")
    p.add_argument("--out", default=None, help="write the numbers to this JSON file too")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    flags = ["--model", a.model, "--task", a.task, "--estimator", a.estimator, "--steps", str(a.steps + 1)]
    flags += a.flags.split()
    times = {"train.py": ([], [], []), "train_trl.py": ([], [], [])}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, run in [("train.py", run_ours), ("train_trl.py", run_trl)]:
                for kept, new in zip(times[name], run(flags, Path(tmp) / f"{name}-{r}")):
                    kept.extend(new)
    rows = {name: {"step_s": statistics.median(t[0]), "generate_s": statistics.median(t[1]),
                   "weights_s": statistics.median(t[2]), "steps_counted": len(t[0]), "all_step_s": t[0]}
            for name, t in times.items()}
    print(f"\nper-step medians, {a.estimator}, {' '.join(flags)} (threads {a.threads}):")
    print(f"{'':14s} {'step s':>8s} {'generate s':>11s} {'weights s':>10s} {'steps':>6s}")
    for name, row in rows.items():
        print(f"{name:14s} {row['step_s']:8.3f} {row['generate_s']:11.3f} {row['weights_s']:10.3f} "
              f"{row['steps_counted']:6d}")
    ratio = rows["train_trl.py"]["step_s"] / rows["train.py"]["step_s"]
    print(f"train_trl.py / train.py, median step time: {ratio:.2f}x")
    if a.out:
        result = {"flags": flags, "threads": a.threads, "rows": rows, "ratio": ratio}
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
