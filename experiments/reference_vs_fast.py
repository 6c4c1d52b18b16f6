"""One step of the cpu preset (PAFT q = 0.75, SmolLM2, 4 questions x M = 4), the reference paths against the fast
ones, in one process: CPU seconds per phase (time.process_time, one torch thread), so that the ratio holds on a
busy machine.

    python experiments/reference_vs_fast.py            # ~6 minutes of CPU on 2 cores; docs/performance.md
    python experiments/reference_vs_fast.py --repeats 1

reference: --decode generate --logprobs plain (Hugging Face generate; every sequence whole, [N, T, V] logits)
fast:      --decode fast --logprobs fast (fast/decode.py; fast/logprobs.py). Both draw the same tokens from the
           same seed (tests/test_train.py::test_the_reference_and_the_fast_paths_train_alike).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library is the top-level folder

import torch

import train
from models import load_model
from paft import paft_coefficients
from rollout import SpecialTokens


def one_step(model, tok, tokens, args, examples, decode: str, logprobs: str) -> dict:
    """CPU seconds of the three phases of one PAFT step (train.py's own functions), from seed 0."""
    torch.manual_seed(0)
    seconds = {}
    generate, scoring = train.implementations(decode, logprobs)
    t = time.process_time()
    groups = train.rollouts(model, tok, examples, task=args.task, start=args.start, M=args.M, special=tokens,
                            think_budget=args.think_budget, generate=generate)
    seconds["generate"] = time.process_time() - t
    t = time.process_time()
    train.attach_gold_answers(groups, examples, tok)
    log_w = scoring.log_weights(model, [s for g in groups for s in g], tokens, args.micro_batch)
    seconds["weights"] = time.process_time() - t
    coef = paft_coefficients(log_w.view(len(examples), args.M).double(), args.q)  # [B, M]
    t = time.process_time()
    model.zero_grad()
    train.gradient_pass(model, groups, coef, coef, tokens, args.micro_batch, sequence_logprobs=scoring.sequence_logprobs)
    seconds["backward"] = time.process_time() - t
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="steps timed per path (each from seed 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the time alone)")
    cli = p.parse_args(argv)
    torch.set_num_threads(cli.threads)
    args = train.parse_args(["--preset", "cpu", "--q", "0.75", "--estimator", "paft", "--out", "/nonexistent/x"])
    examples, _ = train.load_data(args)
    model, tok = load_model(args.model)
    tokens = SpecialTokens.of(tok, model.generation_config)
    totals = {}
    for _ in range(cli.repeats):
        for decode, logprobs in [("generate", "plain"), ("fast", "fast")]:
            seconds = one_step(model, tok, tokens, args, examples, decode, logprobs)
            totals.setdefault(decode, []).append(sum(seconds.values()))
            print(f"--decode {decode:8s} --logprobs {logprobs:5s}: " +
                  ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) + f"; step {sum(seconds.values()):.1f} s",
                  flush=True)
    ratio = min(totals["generate"]) / min(totals["fast"])
    print(f"reference / fast, CPU time per step (best of {cli.repeats}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
