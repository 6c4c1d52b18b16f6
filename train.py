"""Train a reasoning model with GARL, PAFT or GRPO: one GPU (or a CPU), gradient accumulation.

    python train.py --q 0.75 --estimator paft          # CPU: embedded SmolLM2 on the shipped FinQA sample
    python train.py --estimator garl --q 0.75 --task hotpotqa --start cold     # GPU: the paper's setup

One step, on-policy with one update per rollout batch (paper Sec. 6, Algorithms 1 and 2):
  1. rollouts   B questions x M rationales, "</think>" forced at the thinking budget (rollout.generate)
  2. weights    GARL/PAFT: teacher-force the gold answer after each rationale: log w [B, M], no gradient
                GRPO: the model writes its own answer; reward = exact match with the gold [B, M]
  3. estimator  two coefficients per sequence: one for its rationale tokens, one for its answer tokens
  4. gradient   micro-batches of sequences; loss = -sum(coef_z * logp_z + coef_y * logp_y) / B, accumulated
  5. update     clip the gradient norm, AdamW (or SGD) step
Everything is logged to DIR/metrics.jsonl under stable names (see the README), checkpoints go to
DIR/checkpoints with DIR/latest and DIR/best pointing at the newest and the best (validation maj@n).
"""
import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import rewards
from data import TASKS, load_examples
from eval import evaluate, extracted_answers
from checkpoint import rng_state, save_checkpoint, set_rng_state
from garl import garl_coefficients, garl_stats
from grpo import grpo_coefficients
from paft import paft_coefficients
from models import describe, load_model
from prompts import gold_ids, prompt_ids
from qlog import check_q, log_mean_exp, q_loss_of_log
from logprobs import log_weights, sequence_logprobs
from rollout import PAPER_THINK_BUDGETS, Tokens, generate

SAMPLE_FILES = {"finqa": "samples/finqa_dev_sample.json", "hotpotqa": "samples/hotpotqa_dev_distractor_sample.json",
                "musique": "samples/musique_ans_dev_sample.jsonl"}
# Defaults that follow the hardware. CUDA: the paper's setup (Sec. 7; what it leaves out is our choice).
# CPU: small enough that the README's command finishes in minutes on 2 cores with a real 135M model.
GPU_DEFAULTS = dict(model="Qwen/Qwen3-0.6B", M=32, think_budget=None, answer_budget=128, steps=200,
                    prompts_per_step=4, micro_batch=4, gen_batch=1, eval_every=25, eval_n=16, val_size=0,
                    context_chars=0, precision="bf16", grad_ckpt=True)
CPU_DEFAULTS = dict(model="smollm2", M=4, think_budget=24, answer_budget=24, steps=8, prompts_per_step=2,
                    micro_batch=4, gen_batch=0, eval_every=0, eval_n=4, val_size=4, context_chars=1200,
                    precision="fp32", grad_ckpt=False)
# Changing these on --resume is fine; anything else must match the run being resumed.
RESUMABLE_CHANGES = {"steps", "eval_every", "save_every", "resume"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--estimator", choices=["garl", "paft", "grpo"], default="garl",
      help="gradient estimator (garl.py, paft.py, grpo.py)")
    a("--q", type=float, default=0.75,
      help="Tsallis q in [0, 1]: 0 = RLVR-like, 1 = marginal likelihood (ignored by grpo)")
    a("--q-schedule", choices=["constant", "switch", "linear"], default="constant",
      help="constant q; 'switch': --q for --q-steps steps, then --q-final (q=1 then 0 is SFT-then-RLVR); "
      "'linear': a ramp from --q to --q-final")
    a("--q-final", type=float, default=0.0, help="q after the switch, or at the end of the linear ramp")
    a("--q-steps", type=int, default=50, help="steps before the switch, or length of the linear ramp")
    a("--task", choices=TASKS, default="finqa", help="dataset")
    a("--start", choices=["warm", "cold"], default="warm",
      help="warm: instructions in the prompt; cold: the linearized input only (prompts.py)")
    a("--model", default=None, help="hub id, local checkpoint, 'smollm2' (embedded, CPU default) or 'tiny' "
      "(default: Qwen/Qwen3-0.6B on CUDA, smollm2 on CPU)")
    a("--data", default=None, help="training file in the dataset's original format (default: the hub on CUDA, "
      "the shipped sample on CPU)")
    a("--val-data", default=None,
      help="validation file (default: the hub's val subset, or --val-size rows held out of --data)")
    a("--val-size", type=int, default=None, help="validation questions (0: the whole val subset; CPU default 4)")
    a("--M", type=int, default=None, help="rationales sampled per question (paper: 32; CPU default 4)")
    a("--K", type=int, default=None, help="PAFT: indices resampled per question (default M, as in the paper)")
    a("--think-budget", type=int, default=None, help="thinking tokens before '</think>' is forced "
      "(default: the paper's, 3968/2944/1920 for finqa/hotpotqa/musique; CPU 24)")
    a("--answer-budget", type=int, default=None,
      help="answer tokens GRPO and evaluation may write (paper 128; CPU 24)")
    a("--context-chars", type=int, default=None, help="cut each context to this many characters (0: never; the CPU "
      "default 1200 keeps a step short, a deviation from the paper)")
    a("--steps", type=int, default=None, help="optimizer steps (one rollout batch each)")
    a("--prompts-per-step", type=int, default=None, help="questions B per step (the paper does not publish it)")
    a("--micro-batch", type=int, default=None,
      help="sequences per forward/backward; the gradient does not depend on it")
    a("--gen-batch", type=int, default=None, help="questions per generate call, x M rows (0: all B at once; "
      "CUDA default 1: 32 rows of 5k tokens already hold ~20 GB of KV cache at the paper's budgets)")
    a("--optimizer", choices=["adamw", "sgd"], default="adamw",
      help="AdamW, or plain SGD (the gradient-flow setting of the theory)")
    a("--lr", type=float, default=1e-6, help="learning rate (not published; 1e-6 is common for RL on LLMs)")
    a("--warmup-steps", type=int, default=0, help="linear learning-rate warmup, then constant")
    a("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    a("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    a("--temperature", type=float, default=1.0,
      help="rollout temperature; 1 keeps the score-function term on-policy")
    a("--top-p", type=float, default=1.0, help="rollout nucleus threshold; 1 keeps it on-policy")
    a("--no-pathwise", action="store_true",
      help="GARL: drop the pathwise (answer) term, keep the score-function term")
    a("--eval-every", type=int, default=None,
      help="validate every N steps, and after the last (0: only after the last)")
    a("--eval-n", type=int, default=None, help="samples per validation question (paper 16; CPU 4)")
    a("--precision", choices=["bf16", "fp32"], default=None,
      help="bf16 autocast (CUDA default) or fp32 (CPU default)")
    a("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
      help="gradient checkpointing (CUDA default on)")
    a("--save-every", type=int, default=1, help="checkpoint every N steps (and after the last)")
    a("--seed", type=int, default=0, help="seed for data order, sampling and resampling")
    a("--out", default=None, help="run directory (default runs/<task>-<estimator>-q<q>-<start>)")
    a("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    args = p.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for key, value in (GPU_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data is None and args.device == "cpu":
        args.data = SAMPLE_FILES[args.task]
    if args.think_budget is None:
        args.think_budget = PAPER_THINK_BUDGETS[args.task]
    args.out = args.out or f"runs/{args.task}-{args.estimator}-q{args.q}-{args.start}"
    check_args(p, args)
    return args


def check_args(p, args):
    """Bad flags fail here, with the flag's name, before any model or data is loaded."""
    for name in ["q", "q_final"]:
        try:
            check_q(getattr(args, name))
        except ValueError as e:
            p.error(f"--{name.replace('_', '-')}: {e}")
    if args.M < 2:
        p.error(f"--M must be >= 2 (GARL's leave-one-out baseline and GRPO's group std need two samples), "
                f"got {args.M}")
    if args.temperature != 1.0 or args.top_p != 1.0:
        print(f"warning: --temperature {args.temperature} --top-p {args.top_p}: rollouts are not drawn from the model "
              "itself, so the score-function term is off-policy (biased)", file=sys.stderr)
    for name in ["steps", "prompts_per_step", "micro_batch", "think_budget", "answer_budget", "eval_n", "save_every"]:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.K is not None and args.K < 1:
        p.error(f"--K must be >= 1, got {args.K}")
    for name in ["data", "val_data"]:
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            p.error(f"--{name.replace('_', '-')} {path}: no such file")
    out = Path(args.out)
    if args.resume and not (out / "latest").exists():
        p.error(f"--resume: {out} has no checkpoint to resume (no {out / 'latest'})")
    if not args.resume and (out / "run_config.json").exists():
        p.error(f"--out {out} already holds a run; pass --resume to continue it, or choose another --out")
    if args.resume:
        saved = json.loads((out / "run_config.json").read_text())
        mine = {k: v for k, v in vars(args).items() if k not in RESUMABLE_CHANGES}
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            given = ", ".join(f"--{k} {a} vs {b}" for k, (a, b) in diff.items())
            p.error(f"--resume with different settings (saved vs given): {given}")


def q_at(step: int, args) -> float:
    """The q schedule: constant, a switch after --q-steps steps, or a linear ramp over --q-steps."""
    if args.q_schedule == "constant":
        return args.q
    if args.q_schedule == "switch":
        return args.q if step < args.q_steps else args.q_final
    return args.q + (args.q_final - args.q) * min(step / args.q_steps, 1.0)


# ------------------------------------------------------------------------------------------------ the algorithm
def sequence_coefficients(args, q, groups, examples, tokenizer, model, tokens, stats):
    """Steps 2-3: per-sequence coefficients (coef_z, coef_y), each [B, M], for the estimator.

    GARL/PAFT fill each sample's y with the gold answer and need log w = log p(y*|x, z_m) first;
    GRPO's samples already hold the model's own answers, scored by exact match.
    """
    B, M = len(groups), args.M
    if args.estimator == "grpo":
        answers = [extracted_answers(tokenizer, g) for g in groups]
        reward = torch.tensor([[rewards.exact_match(a, [ex["answer"]] + ex["aliases"]) for a in row]
                               for row, ex in zip(answers, examples)])  # [B, M]
        lengths = torch.tensor([[len(s.z_ids) + len(s.y_ids) for s in g] for g in groups])  # [B, M] counted tokens
        t = time.perf_counter()
        coef = grpo_coefficients(reward, lengths)  # [B, M]  A / (|o| M)
        stats["time_estimator"] = time.perf_counter() - t
        stats["time_weights"] = 0.0  # no weight pass: the verifier reads the generated answers
        stats["reward_mean"] = reward.mean().item()  # train accuracy (exact match)
        return coef, coef

    for g, y in zip(groups, [gold_ids(tokenizer, ex["answer"]) for ex in examples]):
        for s in g:
            s.y_ids = y  # teacher-force y* after every rationale (EOS included)
    t = time.perf_counter()
    log_w = log_weights(model, [s for g in groups for s in g], tokens, args.micro_batch).view(B, M).double()  # [B, M]
    sync(args)
    stats["time_weights"] = time.perf_counter() - t

    t = time.perf_counter()
    if args.estimator == "garl":
        coef_z, coef_y = garl_coefficients(log_w, q)  # [B, M] each: c_m / (M^q M), (w_m / w_bar^q) / (M^q M)
        if args.no_pathwise:
            coef_y = torch.zeros_like(coef_y)
    else:
        coef_z = coef_y = paft_coefficients(log_w, q, k=args.K)  # [B, M]: (n_m / K) w_bar^(1-q) / M^q
    stats["time_estimator"] = time.perf_counter() - t
    monitor = garl_stats(log_w, q)  # w_bar (the estimate of P) and GARL's max amplified advantage
    if args.estimator == "paft":
        del monitor["max_amplified_advantage"]  # a GARL quantity; PAFT's weights are resampling counts
    stats.update(monitor)
    stats["j_q"] = q_loss_of_log(log_mean_exp(log_w), q).mean().item()  # the J_Q loss, estimated
    return coef_z.float(), coef_y.float()


def gradient_pass(args, model, groups, coef_z, coef_y, tokens, stats):
    """Step 4: loss = -(1/B) sum over sequences of (coef_z logp_z + coef_y logp_y), in micro-batches.

    The loss is a plain sum over sequences divided by the fixed B, so accumulating micro-batch
    gradients gives exactly the full-batch gradient, whatever --micro-batch is. Sequences whose two
    coefficients are 0 (a GRPO group with equal rewards, a PAFT sample never resampled, a GARL
    question with w = 0 everywhere) contribute nothing: we skip their forward and backward passes.
    """
    B = len(groups)
    # One question's sequences stay together, so that a micro-batch shares its prompt (sequence_logprobs
    # runs it once), and go longest first, so that a micro-batch pads little. The loss is a sum: order is free.
    items = [(s, coef_z[b, m], coef_y[b, m]) for b, g in enumerate(groups)
             for m, s in sorted(enumerate(g), key=lambda ms: -len(ms[1].ids))
             if coef_z[b, m] != 0 or coef_y[b, m] != 0]
    loss_total = 0.0
    model.train()  # gradient checkpointing in transformers is active in train mode only
    for i in range(0, len(items), args.micro_batch):
        mb = items[i:i + args.micro_batch]
        with autocast(args):
            logp_z, logp_y = sequence_logprobs(model, [s for s, _, _ in mb], tokens)  # [mb] each
        cz = torch.stack([c for _, c, _ in mb]).to(logp_z.device)
        cy = torch.stack([c for _, _, c in mb]).to(logp_z.device)
        loss = -(cz * logp_z + cy * logp_y).sum() / B
        loss.backward()  # gradients accumulate in .grad across micro-batches
        loss_total += loss.item()
    model.eval()
    stats["loss"] = loss_total
    stats["seqs_in_grad_pass"] = len(items)


# ------------------------------------------------------------------------------------------------ plumbing
def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()  # so that the phase timings measure the GPU work, not its launch


def autocast(args):
    return torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")


class Batches:
    """Questions in a seeded random order, reshuffled every epoch; its position is part of a checkpoint."""

    def __init__(self, examples, seed):
        self.examples, self.seed, self.epoch, self.pos = examples, seed, 0, 0
        self.order = self._order()

    def _order(self):
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        return order

    def next(self, n):
        batch = []
        while len(batch) < n:
            if self.pos == len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order()
            batch.append(self.examples[self.order[self.pos]])
            self.pos += 1
        return batch

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = self._order()


def load_data(args):
    """Training and validation questions, contexts cut to --context-chars if set."""
    train = load_examples(args.task, "train", args.data, args.seed)
    if args.val_data:
        val = load_examples(args.task, "val", args.val_data, args.seed)
    elif args.data:  # hold out --val-size questions of the local file
        if not 0 < args.val_size < len(train):
            raise SystemExit(f"--val-size {args.val_size}: hold out between 1 and {len(train) - 1} of the {len(train)} "
                             f"questions in --data {args.data}, or pass --val-data")
        held = set(random.Random(args.seed).sample(range(len(train)), args.val_size))
        val = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
    else:
        val = load_examples(args.task, "val", None, args.seed)
    if args.val_size:
        val = val[:args.val_size]
    if args.context_chars:
        cut = sum(len(ex["context"]) > args.context_chars for ex in train + val)
        train = [dict(ex, context=ex["context"][:args.context_chars]) for ex in train]
        val = [dict(ex, context=ex["context"][:args.context_chars]) for ex in val]
        print(f"data: cut {cut} of {len(train) + len(val)} contexts to --context-chars {args.context_chars}")
    return train, val


def validate(args, model, tokenizer, val, step):
    """Validation p@1 / p@n / maj@n, under its own fixed seed so that it never shifts training's RNG."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if args.device == "cuda" else []):
        torch.manual_seed(args.seed + 7919 * (step + 1))
        with autocast(args):
            metrics, _ = evaluate(model, tokenizer, val, args.task, args.start, args.eval_n, args.think_budget,
                                  args.answer_budget, progress=False,
                                  prompts_per_call=args.gen_batch or args.prompts_per_step)
    return {f"val/{k}": v for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------------ main loop
def main(argv=None):
    args = parse_args(argv)
    print("config:", json.dumps(vars(args)))
    train_examples, val_examples = load_data(args)  # data errors surface before the (slow) model load
    print(f"data: {len(train_examples)} training and {len(val_examples)} validation questions "
          f"({args.task}, {args.start} start)")
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(os.path.realpath(Path(args.out) / "latest") if args.resume else args.model,
                                  device=args.device)
    return train(args, model, tokenizer, train_examples, val_examples)


def train(args, model, tokenizer, train_examples, val_examples) -> Path:
    """The training loop. Any model/tokenizer pair and list of {question, context, answer, aliases} will do."""
    out = Path(args.out)
    random.seed(args.seed)
    torch.manual_seed(args.seed)  # rollout sampling and PAFT resampling, also when train() is called directly
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    tokens = Tokens.of(tokenizer, model.generation_config)
    print(f"model: {args.model} -> {describe(model)} on {args.device}; '</think>' is {len(tokens.close_ids)} token(s)")
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=args.lr)
    batches = Batches(train_examples, args.seed)
    start_step, best = 0, -math.inf
    if args.resume:
        resume_dir = os.path.realpath(out / "latest")
        state = torch.load(Path(resume_dir) / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        start_step, best = state["step"], state["best"]
        # Lines logged after that checkpoint (a run killed mid-step) are dropped: they will be redone.
        lines = (out / "metrics.jsonl").read_text().splitlines()
        (out / "metrics.jsonl").write_text("".join(l + "\n" for l in lines if json.loads(l)["step"] < start_step))
        print(f"resumed from {resume_dir} at step {start_step}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(vars(args), indent=2))

    bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc="train", file=sys.stdout)
    for step in bar:
        q = q_at(step, args)
        # Learning rate: linear warmup, then constant (the paper publishes no schedule).
        lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps else args.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = {"step": step, "q": q, "lr": lr}
        examples = batches.next(args.prompts_per_step)

        # 1. rollouts: M rationales per question (and, for GRPO, the model's own answers)
        t = time.perf_counter()
        prompts = [prompt_ids(tokenizer, ex, args.task, args.start) for ex in examples]
        gen_batch = args.gen_batch or len(examples)
        groups = []
        with autocast(args):
            for i in range(0, len(prompts), gen_batch):
                groups += generate(model, prompts[i:i + gen_batch], args.M, tokens, args.think_budget,
                                   args.answer_budget if args.estimator == "grpo" else None,
                                   args.temperature, args.top_p)
        sync(args)
        stats["time_generate"] = time.perf_counter() - t
        flat = [s for g in groups for s in g]
        answers_generated = args.estimator == "grpo"  # GARL/PAFT's y is the gold answer, not sampled
        stats["tokens_generated"] = sum(len(s.z_ids) + len(s.forced_ids) + (len(s.y_ids) if answers_generated else 0)
                                        for s in flat)
        stats["think_tokens_mean"] = sum(len(s.z_ids) for s in flat) / len(flat)
        stats["forced_frac"] = sum(s.forced for s in flat) / len(flat)

        # 2-3. weights or rewards, then the estimator's coefficients
        with autocast(args):
            coef_z, coef_y = sequence_coefficients(args, q, groups, examples, tokenizer, model, tokens, stats)

        # 4. gradient pass, accumulated over micro-batches
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        gradient_pass(args, model, groups, coef_z, coef_y, tokens, stats)
        sync(args)
        stats["time_backward"] = time.perf_counter() - t

        # 5. update. The norm is measured before clipping (clip_grad_norm_ returns it): a diagnostic.
        t = time.perf_counter()
        max_norm = args.grad_clip if args.grad_clip > 0 else math.inf
        has_grad = any(p.grad is not None for p in params)  # none when every coefficient was zero
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm).item() if has_grad else 0.0
        optimizer.step()
        sync(args)
        stats["time_optimizer"] = time.perf_counter() - t

        last = step + 1 == args.steps
        if last or (args.eval_every and (step + 1) % args.eval_every == 0):
            t = time.perf_counter()
            stats.update(validate(args, model, tokenizer, val_examples, step))
            stats["time_eval"] = time.perf_counter() - t
            maj = stats[f"val/maj@{args.eval_n}"]
            if maj > best:  # the paper reports the checkpoint with the best validation maj@16
                best = maj
                save_checkpoint(out, f"best-step-{step + 1:06d}", model, tokenizer, None, "best")
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(stats) + "\n")
        shown = ["loss", "w_bar_mean", "reward_mean", "grad_norm"]
        bar.set_postfix({k: f"{stats[k]:.3g}" for k in shown if k in stats})

        if last or (step + 1) % args.save_every == 0:
            state = {"optimizer": optimizer.state_dict(), "data": batches.state_dict(), "rng": rng_state(),
                     "step": step + 1, "best": best, "args": vars(args)}
            save_checkpoint(out, f"step-{step + 1:06d}", model, tokenizer, state, "latest")
    print(f"done: {out}/metrics.jsonl, checkpoints {out}/latest and {out}/best (val maj@{args.eval_n} {best:.1f})")
    return out


if __name__ == "__main__":
    main()
