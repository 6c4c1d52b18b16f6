"""Evaluate a model: p@1, p@n and maj@n with the relaxed match, plus the official EM/F1.

    python eval.py --model runs/my-run/best --task hotpotqa --split test -n 16
    python eval.py --model smollm2 --task finqa --data samples/finqa_dev_sample.json -n 4 --limit 8

For each question, sample n completions (thinking block, forced "</think>" at the budget, then up to
128 answer tokens), extract each answer, and score (paper Sec. 7):
    p@1     mean over the n samples of rewards.substring_match (the gold appears in the answer as a
            whole run of tokens; numbers keep their sign, decimals and %, and compare as numbers)
    p@n     1 if any of the n samples is correct
    maj@n   substring_match of the majority-vote answer (rewards.majority_vote)
and, beside them, em@1 and f1@1 (the official HotPotQA/MuSiQue metrics, mean over samples) and, for
FinQA, numeric@1 (numeric equivalence). Writes DIR/results.json and DIR/predictions.jsonl.
Project choice: the paper states a plain character substring; it would accept gold "7" in "2017" and
gold "no" in "know" (docs/answer_checking.md), so the tables use the token-boundary, number-safe match.
The paper reports the test number of the checkpoint with the best validation maj@16.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import rewards
import rollout
from data import TASKS, load_examples
from presets import PAPER_THINK_BUDGETS
from prompts import prompt_ids
from related import verified
from rollout import SpecialTokens

# Project choice: the paper publishes no sampling settings; these are Qwen3's recommended settings for
# thinking mode (temperature 0.6, top-p 0.95, top-k 20), applied as Hugging Face applies them: temperature,
# then top-k, then top-p. Training samples at temperature 1 without truncation instead (on-policy, train.py).
EVAL_TEMPERATURE, EVAL_TOP_P, EVAL_TOP_K = 0.6, 0.95, 20
ANSWER_BUDGET = 128  # tokens kept for the answer after "</think>" (paper Sec. 7)


def extracted_answers(tokenizer, group) -> list[str]:
    """The answer each sample of a group wrote after "</think>", unwrapped (rewards.extract_answer)."""
    return [rewards.extract_answer(tokenizer.decode(s.y_ids, skip_special_tokens=True)) for s in group]


def score_question(answers: list[str], example: dict, task: str) -> tuple[dict, str]:
    """Metrics of one question's n extracted answers (each a mean over samples or a 0/1), and the majority answer.

    p@1 / p@n / maj@n use the number-safe, token-boundary relaxed match; em@1 / f1@1 stay official
    (they merge "2.5" and "25", as the published numbers they are compared with do): below, p@1
    counts "2.5" and "2.50", official em@1 counts "25" and "2.5".

    >>> scores, majority = score_question(["25", "2.5", "2.50"], {"answer": "2.5", "aliases": []}, "finqa")
    >>> majority, round(scores["p@1"], 3), scores["maj@n"], round(scores["em@1"], 3), round(scores["numeric@1"], 3)
    ('2.5', 0.667, 1.0, 0.667, 0.667)
    """
    golds = [example["answer"]] + example["aliases"]
    correct = [rewards.substring_match(a, golds) for a in answers]
    majority = rewards.majority_vote(answers)
    scores = {"p@1": sum(correct) / len(answers), "p@n": max(correct),
              "maj@n": rewards.substring_match(majority, golds),
              "em@1": sum(rewards.exact_match(a, golds) for a in answers) / len(answers),
              "f1@1": sum(rewards.f1_score(a, golds) for a in answers) / len(answers)}
    if task == "finqa":
        scores["numeric@1"] = sum(rewards.numeric_match(a, golds) for a in answers) / len(answers)
    return scores, majority


@torch.no_grad()
def evaluate(model, tokenizer, examples: list[dict], task: str, start: str, n: int, think_budget: int,
             answer_budget: int = ANSWER_BUDGET, temperature: float = EVAL_TEMPERATURE, top_p: float = EVAL_TOP_P,
             top_k: int = EVAL_TOP_K, prompts_per_call: int = 1, progress: bool = True,
             generate=rollout.generate) -> tuple[dict, list[dict]]:
    """Sample n answers per question and score them. Returns (metrics, per-question predictions).

    Metric names use n: with n = 16, "p@16" and "maj@16", as in the paper. prompts_per_call questions
    (x n rows) share one generate call. generate: rollout.generate (the reference) or fast.decode.generate
    (the same tokens), the caller's choice.
    """
    special = SpecialTokens.of(tokenizer, model.generation_config)
    totals, predictions, forced = {}, [], 0
    bar = tqdm(total=len(examples), desc="eval", disable=not progress, leave=False, file=sys.stdout)
    for i in range(0, len(examples), prompts_per_call):
        batch = examples[i:i + prompts_per_call]
        prompts = [prompt_ids(tokenizer, ex, task, start) for ex in batch]
        samples = generate(model, prompts, n, special, think_budget, answer_budget, temperature, top_p, top_k)
        for ex, group in zip(batch, samples):
            answers = extracted_answers(tokenizer, group)
            scores, majority = score_question(answers, ex, task)
            for key, value in scores.items():
                totals[key] = totals.get(key, 0.0) + value
            forced += sum(s.forced for s in group)
            predictions.append({"id": ex["id"], "question": ex["question"], "gold": ex["answer"],
                                "aliases": ex["aliases"], "answers": answers, "majority": majority, **scores})
        bar.update(len(batch))
    bar.close()
    metrics = {key.replace("@n", f"@{n}"): 100.0 * value / len(examples) for key, value in totals.items()}
    metrics["forced_frac"] = forced / (n * len(examples))  # share of rationales cut by the thinking budget
    metrics["questions"] = len(examples)
    return metrics, predictions


def decoding_work(rows: int, prompt_tokens: float, new_tokens: int) -> float:
    """The work of one generate call, in row-positions read: sum over its steps of rows x context.

    At long contexts a decoding step is bound by reading the KV cache, rows x (prompt + tokens so far)
    positions; the weights (read once per step, whatever the rows) are left out: at the paper's scale
    they are ~10% of a step. So time is not proportional to steps, nor to tokens alone.

    >>> decoding_work(rows=2, prompt_tokens=10, new_tokens=3)   # 2 x (11 + 12 + 13)
    72.0
    """
    return float(rows * (new_tokens * prompt_tokens + new_tokens * (new_tokens + 1) / 2))


def validation_cost(args, n_val: int, train_prompt_tokens: float, val_prompt_tokens: float) -> tuple[str, float]:
    """What validation costs next to training, in decoding time (decoding_work) and in generated tokens.

    args: train.py's (steps, B, M, gen_batch, think_budget, answer_budget, estimator, eval_every, eval_n,
    eval_batch, val_subset). Every row is assumed to run its whole budget (Qwen3's thinking mostly does).
    Returns (one line to print, validation's share of the decoding time).
    """
    periodic = sum(1 for s in range(args.steps - 1) if args.eval_every and (s + 1) % args.eval_every == 0)
    n_periodic = min(args.val_subset or n_val, n_val)
    val_new = args.think_budget + args.answer_budget
    train_new = args.think_budget + (args.answer_budget if verified(args.estimator) else 0)  # GRPO's own answers
    gen = args.gen_batch or args.B
    train_work = args.steps * math.ceil(args.B / gen) * decoding_work(gen * args.M, train_prompt_tokens, train_new)
    val_work = sum(math.ceil(n / args.eval_batch) * decoding_work(args.eval_batch * args.eval_n, val_prompt_tokens,
                                                                  val_new)
                   for n in [n_periodic] * periodic + [n_val])
    val_tokens = (periodic * n_periodic + n_val) * args.eval_n * val_new
    train_tokens = args.steps * args.B * args.M * train_new
    share = val_work / (val_work + train_work)
    line = (f"validation: {periodic} periodic on {n_periodic} and 1 final on {n_val} questions x {args.eval_n} "
            f"samples: ~{share:.0%} of the run's decoding time (rows x context), "
            f"{val_tokens / (val_tokens + train_tokens):.0%} of its generated tokens")
    return line, share


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory, hub id, 'smollm2' or 'tiny'")
    p.add_argument("--task", choices=TASKS, required=True, help="which dataset")
    p.add_argument("--split", choices=["train", "val", "test"], default="test",
                   help="the paper's subset to evaluate (carved from --data if given, else from the hub)")
    p.add_argument("--data", default=None, help="local file in the dataset's original format (default: the hub)")
    p.add_argument("--start", choices=["warm", "cold"], default="warm", help="prompt style (see prompts.py)")
    p.add_argument("-n", type=int, default=16, help="samples per question (the paper: 16)")
    p.add_argument("--think-budget", type=int, default=None,
                   help="thinking tokens before '</think>' is forced (default: the paper's budget for the task)")
    p.add_argument("--answer-budget", type=int, default=ANSWER_BUDGET, help="tokens for the answer")
    p.add_argument("--temperature", type=float, default=EVAL_TEMPERATURE, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=EVAL_TOP_P, help="nucleus sampling threshold (1: off)")
    p.add_argument("--top-k", type=int, default=EVAL_TOP_K, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--decode", choices=["generate", "fast"], default="generate",
                   help="decoding path: Hugging Face generate (the reference) or fast/decode.py (same tokens, faster)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N questions (0: all)")
    p.add_argument("--prompts-per-call", type=int, default=4, help="questions per generate call (x n rows)")
    p.add_argument("--seed", type=int, default=0, help="subset carving and sampling seed")
    p.add_argument("--out", default=None, help="output directory (default: eval-<task>-<split> in the run directory of "
                   "a checkpoint, e.g. runs/x/eval-hotpotqa-test for --model runs/x/best; else under runs/)")
    args = p.parse_args(argv)
    for name, value in [("-n", args.n), ("--prompts-per-call", args.prompts_per_call)]:
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if args.top_k < 0:
        p.error(f"--top-k must be >= 0, got {args.top_k}")
    if not (args.temperature > 0 and 0 < args.top_p <= 1):
        p.error(f"--temperature must be > 0 and --top-p in (0, 1], got {args.temperature} and {args.top_p}")
    if args.data is not None and not os.path.isfile(args.data):
        p.error(f"--data {args.data}: no such file")
    return args


def main(argv=None):
    args = parse_args(argv)
    from models import ModelLoadError, load_model  # after argument checks: bad flags fail before any model loads

    think_budget = args.think_budget or PAPER_THINK_BUDGETS[args.task]
    try:  # data before the model: a bad file or an unreachable hub fails in seconds, not after the model load
        examples = load_examples(args.task, args.split, args.data, args.seed)
    except (ValueError, FileNotFoundError) as e:  # data.py's messages name the file, row or hub dataset
        raise SystemExit(f"eval.py: {e}") from None
    if args.limit:
        examples = examples[:args.limit]
    if not examples:
        raise SystemExit(f"eval.py: no {args.task} questions to evaluate in {args.data or 'the hub split'}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model, tokenizer = load_model(args.model, device=device)
    except ModelLoadError as e:  # no such directory, a hub id without network: one line, no traceback
        raise SystemExit(f"eval.py: {e}") from None
    generate = rollout.generate  # --decode: the reference, or its fast twin (the same tokens), chosen here only
    if args.decode == "fast":
        from fast import decode
        generate = decode.generate
    torch.manual_seed(args.seed)
    t0 = time.time()
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
        metrics, predictions = evaluate(model, tokenizer, examples, args.task, args.start, args.n, think_budget,
                                        args.answer_budget, args.temperature, args.top_p, args.top_k,
                                        args.prompts_per_call, generate=generate)
    metrics["seconds"] = time.time() - t0
    beside = Path(args.model).parent if os.path.isdir(args.model) else Path("runs")  # runs/x/best -> runs/x/
    out = Path(args.out or beside / f"eval-{args.task}-{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "think_budget": think_budget,
                                                   "metrics": metrics}, indent=2))
    with open(out / "predictions.jsonl", "w") as f:
        for row in predictions:
            f.write(json.dumps(row) + "\n")
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'results.json'} and {out / 'predictions.jsonl'}")
    return metrics


if __name__ == "__main__":
    main()
