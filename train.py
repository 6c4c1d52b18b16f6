"""Train a reasoning model with GARL, PAFT or GRPO: one GPU (or a CPU), gradient accumulation.

    python train.py --q 0.75 --estimator paft          # CPU: embedded SmolLM2 on shipped HotPotQA rows
    python train.py --estimator garl --q 0.75 --task hotpotqa --start cold     # GPU: the paper's setup

One step, on-policy with one update per rollout batch (paper Sec. 6, Algorithms 1 and 2):
  1. rollouts    B questions x M rationales z ~ p(z|x), "</think>" forced at the thinking budget
  2. weights     GARL/PAFT: the gold answer y* teacher-forced after each rationale, scored: log w [B, M]
                 GRPO: the model writes its own answer; reward = exact match with the gold [B, M]
                 RLPR: y* scored token by token, after each rationale and after an empty thinking block
  3. estimator   two coefficients per sequence: score_coef for its rationale tokens, path_coef for its
                 answer tokens (garl.py, paft.py, grpo.py)
  4. gradient    loss = -(1/B) sum over sequences of (score_coef logp_z + path_coef logp_y), accumulated
                 over micro-batches
  5. update      clip the gradient norm, AdamW (or SGD) step
Reading order: the stages of a step, the loop (`train`), validation, then the flags and `main`. What a run
writes (metrics.jsonl's names, the run folder): README, "What a run writes".
"""
import argparse
import contextlib
import functools
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.utils import logging as transformers_logging

import logprobs
import rewards
import rollout
from checkpoint import resume, resume_problem, save_checkpoint, start_run, trainer_state
from data import TASKS, Batches, load_train_val, resolve_data
from eval import EVAL_TEMPERATURE, EVAL_TOP_K, EVAL_TOP_P, evaluate, extracted_answers, validation_cost
from garl import garl_coefficients, garl_stats
from grpo import grpo_coefficients
from models import ModelLoadError, describe, load_model
from paft import paft_coefficients
from presets import PAPER_THINK_BUDGETS, PRESETS, q_at
from related import ESTIMATORS, RLPRThreshold, related_coefficients, rlpr_step, verified
from prompts import gold_ids, prompt_ids, user_message
from qlog import check_q, log_mean_exp, q_loss_of_log
from rollout import SpecialTokens


# ------------------------------------------------------------------------------------------------ a step's stages
def rollouts(model, tokenizer, examples, *, task, start, M, special, think_budget, answer_budget=None, gen_batch=0,
             temperature=1.0, top_p=1.0, generate=rollout.generate):
    """Step 1: M rationales per question, groups[b][m] (rollout.Sample), gen_batch questions per call (0: all).

    answer_budget=None stops a row at its "</think>" (GARL, PAFT: the gold answer goes after it); an int lets it
    write its own answer (GRPO). Sampling is the model's own (T 1, no top-k, no top-p) unless temperature / top_p
    say otherwise. generate: rollout.generate or fast.decode.generate (the same tokens), the caller's choice."""
    prompts = [prompt_ids(tokenizer, ex, task, start) for ex in examples]
    per_call = gen_batch or len(prompts)
    groups = []
    for i in range(0, len(prompts), per_call):
        groups += generate(model, prompts[i:i + per_call], M, special, think_budget, answer_budget,
                           temperature=temperature, top_p=top_p, top_k=0)  # top_k 0: no truncation (on-policy)
    return groups


def attach_gold_answers(groups, examples, tokenizer):
    """Step 2 of GARL/PAFT: y* teacher-forced after every rationale, y = "\\n\\n" + gold + EOS (prompts.gold_ids).
    The paper's central move: no verifier, no sampled answer; rationale z_m weighs w_m = p(y*|x, z_m)."""
    for group, ex in zip(groups, examples):
        y = gold_ids(tokenizer, ex["answer"])
        for sample in group:
            sample.y_ids = y


def rationale_free_samples(groups, special) -> list[rollout.Sample]:
    """Step 2 of RLPR, for its baseline r_base: per question, the gold answer right after an empty thinking block,
    prompt | "</think>" | y*, with y* as attach_gold_answers put it (call that first). One Sample per question.

    Project choice: RLPR's r' scores the reference answer decoded "directly, without reasoning"; in a thinking
    model's format that is an empty thinking block. The prompt opened it (prompts.py: "<think>\\n"), and
    "</think>" goes in forced_ids, as in a rollout whose budget ran out: it counts in neither logp_z nor logp_y.
    Another: r_base is scored with the current model, at every step, in the pass that scores the rollouts' y*
    (RLPR's code scores it once, with the initial model: related.rlpr_coefficients).
    """
    return [rollout.Sample(prompt_ids=g[0].prompt_ids, z_ids=[], forced_ids=list(special.close_ids), y_ids=g[0].y_ids)
            for g in groups]


def rlpr_token_logprobs(model, groups, special, micro_batch, scoring=logprobs):
    """Step 2 of RLPR: y*'s log-probs token by token, after every rationale and after none (call
    attach_gold_answers first). scoring: logprobs or fast.logprobs (answer_token_logprobs, the same numbers).

    Returns (token_logp [B, M, T], y_mask [B, M, T], base_token_logp [B, T'], base_mask [B, T']), fp64 log-probs,
    zero-padded on the right: related.rlpr_step's inputs. token_logp's row sums are log w [B, M].
    """
    B, M = len(groups), len(groups[0])
    flat = [s for g in groups for s in g]
    token_logp, y_mask = scoring.answer_token_logprobs(model, flat, special, micro_batch)  # [B * M, T] each
    base_logp, base_mask = scoring.answer_token_logprobs(model, rationale_free_samples(groups, special), special,
                                                         micro_batch)  # [B, T'] each
    return token_logp.view(B, M, -1).double(), y_mask.view(B, M, -1), base_logp.double(), base_mask


def grpo_rewards(groups, examples, tokenizer) -> torch.Tensor:
    """Step 2 of GRPO: reward [B, M] = 1 when the answer the model wrote matches the gold (the paper: exact match).
    Project choice: numbers kept intact ("2.5" is not "25"), FinQA's rounding tolerance (docs/answer_checking.md)."""
    return torch.tensor([[rewards.number_safe_exact_match(answer, [ex["answer"]] + ex["aliases"])
                          for answer in extracted_answers(tokenizer, group)]
                         for group, ex in zip(groups, examples)], dtype=torch.float64)  # [B, M]


def gradient_pass(model, groups, score_coef, path_coef, special, micro_batch, precision="fp32",
                  sequence_logprobs=logprobs.sequence_logprobs):
    """Step 4: loss = -(1/B) sum over sequences of (score_coef logp_z + path_coef logp_y), in micro-batches.

    score_coef, path_coef: [B, M]. A plain sum over sequences divided by the fixed B: the micro-batch gradients
    accumulated in .grad are exactly the full-batch gradient. A sequence whose two coefficients are both 0 (GRPO
    with equal rewards, a PAFT sample never resampled) is skipped; one 0 is not enough (equal w: GARL's score_coef
    is 0, its path_coef is not). sequence_logprobs: logprobs.py's or fast/logprobs.py's (the same numbers).
    Returns (loss, sequences that went through the model)."""
    B = len(groups)
    # One question's sequences stay together (the fast path runs their shared prompt once) and go longest
    # first, so that a micro-batch pads little. The loss is a sum: the order is free.
    items = [(s, score_coef[b, m], path_coef[b, m]) for b, g in enumerate(groups)
             for m, s in sorted(enumerate(g), key=lambda ms: -len(ms[1].ids))
             if score_coef[b, m] != 0 or path_coef[b, m] != 0]
    device = next(model.parameters()).device
    loss_total = 0.0
    model.train()  # gradient checkpointing in transformers is active in train mode only
    for i in range(0, len(items), micro_batch):
        mb = items[i:i + micro_batch]
        with precision_context(device.type, precision):
            logp_z, logp_y = sequence_logprobs(model, [s for s, _, _ in mb], special)  # [mb] each
        score = torch.stack([c for _, c, _ in mb]).to(device, torch.float32)  # [mb]
        path = torch.stack([c for _, _, c in mb]).to(device, torch.float32)  # [mb]
        loss = -(score * logp_z + path * logp_y).sum() / B
        loss.backward()  # gradients accumulate in .grad across micro-batches
        loss_total += loss.item()
    model.eval()
    return loss_total, len(items)


# ------------------------------------------------------------------------------------------------ the loop
def train(args, model, tokenizer, train_examples, val_examples) -> Path:
    """The training loop: `args` from parse_args, any model/tokenizer pair, lists of
    {question, context, answer, aliases} (data.load_examples)."""
    out = Path(args.out)
    random.seed(args.seed)
    torch.manual_seed(args.seed)  # rollout sampling and PAFT resampling, also when train() is called directly
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    special = SpecialTokens.of(tokenizer, model.generation_config)
    print(f"model: {args.model} -> {describe(model)} on {args.device}; '</think>' is {len(special.close_ids)} token(s)")
    buffer_shape = (decode_buffer_shape(args, tokenizer, special, train_examples + val_examples)
                    if args.decode == "fast" else None)  # the fast decoder's buffers, sized once for the run
    generate, scoring = implementations(args.decode, args.logprobs, buffer_shape)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=args.lr)
    batches = Batches(train_examples, args.seed)
    rlpr_threshold = RLPRThreshold() if args.estimator == "rlpr" else None  # RLPR's std filter, adaptive across steps
    start_step, best = resume(out, optimizer, batches, rlpr_threshold) if args.resume else start_run(out, vars(args))
    B, M = args.B, args.M
    first = last = None  # the first and the last step's statistics, for the summary at the end
    base = base_validation(out)  # the untrained model's validation, if this run already has it (--resume)
    if args.eval_first and start_step == 0:  # the untrained model, on the questions every later validation uses
        base = {"step": -1}  # "step" counts from 0; step + 1 is the number of updates done, here none
        with phase_timer(base, args.device)("eval"):
            base.update(validate(args, model, tokenizer, val_examples, -1, generate))
        log(out, base)

    bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc="train", file=sys.stdout)
    for step in bar:
        q = q_at(step, args.q_schedule, args.q, args.q_final, args.q_steps)
        lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps else args.lr  # warmup, then constant
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = {"step": step, "q": q, "lr": lr}
        timer = phase_timer(stats, args.device)
        examples = batches.next(B)

        # 1. rollouts: M rationales per question; GRPO's rows go on to write their own answers
        with timer("generate"), precision_context(args.device, args.precision):
            groups = rollouts(model, tokenizer, examples, task=args.task, start=args.start, M=M, special=special,
                              think_budget=args.think_budget,
                              answer_budget=args.answer_budget if verified(args.estimator) else None,
                              gen_batch=args.gen_batch, temperature=args.temperature, top_p=args.top_p,
                              generate=generate)  # groups[b][m]

        # 2. GARL/PAFT: the gold answer y* after every rationale, scored without gradient: log w [B, M]
        #    RLPR: the same y*, token by token, and after no rationale (r_base); log w = the rows' sums
        #    GRPO: the answers the model wrote, scored by the verifier: reward [B, M]
        log_w = reward = None
        with timer("weights"), precision_context(args.device, args.precision):
            if not verified(args.estimator):
                attach_gold_answers(groups, examples, tokenizer)
                if args.estimator == "rlpr":  # y* token by token, after each rationale and after none
                    rlpr_inputs = rlpr_token_logprobs(model, groups, special, args.micro_batch, scoring)
                    log_w = rlpr_inputs[0].sum(-1)  # [B, M]: log_weights' log w, summed here
                else:
                    flat = [s for g in groups for s in g]
                    log_w = scoring.log_weights(model, flat, special, args.micro_batch)  # [B * M]
                log_w = log_w.view(B, M).double()  # [B, M] log w_m = log p(y*|x, z_m)
            else:
                reward = grpo_rewards(groups, examples, tokenizer)  # [B, M]

        # 3. the estimator: score_coef weights a sequence's rationale tokens, path_coef its answer tokens
        with timer("estimator"):
            if args.estimator == "garl":  # Algorithm 1: c_m / (M^q M) and (w_m / w_bar^q) / (M^q M)
                score_coef, path_coef = garl_coefficients(log_w, q)  # [B, M] each
                if args.no_pathwise:
                    path_coef = torch.zeros_like(path_coef)
            elif args.estimator == "paft":  # Algorithm 2: (n_m / K) w_bar^(1-q) / M^q on both, SFT-style
                score_coef = path_coef = paft_coefficients(log_w, q, k=args.K)  # [B, M]
            elif args.estimator == "grpo":  # A_m / (|o_m| M), the group-normalized advantage over the sequence's length
                lengths = torch.tensor([[len(s.z_ids) + len(s.y_ids) for s in g] for g in groups])  # [B, M]
                score_coef = path_coef = grpo_coefficients(reward, lengths)  # [B, M]
            elif args.estimator == "rlpr":  # group-normalized r_hat on the rationale; low-std groups dropped
                score_coef, path_coef, rlpr_stats = rlpr_step(*rlpr_inputs, rlpr_threshold)  # [B, M] each
                stats.update(rlpr_stats)
            else:  # LaTRO, MaxRL, GRPO on the soft reward: the related methods, in the same two coefficients
                score_coef, path_coef = related_coefficients(args.estimator, log_w, reward)  # [B, M] each

        # 4. the gradient, accumulated over micro-batches
        with timer("backward"):
            stats["loss"], stats["seqs_in_grad_pass"] = gradient_pass(
                model, groups, score_coef, path_coef, special, args.micro_batch, args.precision,
                sequence_logprobs=scoring.sequence_logprobs)

        # 5. the update. The norm is measured before clipping (clip_grad_norm_ returns it): a diagnostic.
        with timer("optimizer"):
            has_grad = any(p.grad is not None for p in params)  # none when every coefficient was zero
            max_norm = args.grad_clip if args.grad_clip > 0 else math.inf
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm).item() if has_grad else 0.0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # free the gradients now, not after the next step's rollouts

        stats.update(monitor(groups, q, log_w, reward, args.estimator))
        done = step + 1 == args.steps
        if done or (args.eval_every and (step + 1) % args.eval_every == 0):
            whole = done or not args.val_subset  # periodic validations may use a subset; the last one never does
            with timer("eval"):
                stats.update(validate(args, model, tokenizer, val_examples if whole else val_examples[:args.val_subset],
                                      step, generate))
            maj = stats[f"val/maj@{args.eval_n}"]
            if whole and maj > best:  # the paper reports the checkpoint with the best validation maj@16
                best = maj
                if args.checkpoints:
                    save_checkpoint(out, f"best-step-{step + 1:06d}", model, tokenizer, None, "best")
        log(out, stats)
        first, last = first or stats, stats
        bar.set_postfix({k: f"{stats[k]:.3g}" for k in ["loss", "w_bar_mean", "j_q", "reward_mean"] if k in stats})

        if args.checkpoints and (done or (args.save_every and (step + 1) % args.save_every == 0)):
            save_checkpoint(out, f"step-{step + 1:06d}", model, tokenizer,
                            trainer_state(optimizer, batches, step + 1, best, vars(args), rlpr_threshold), "latest")
    bar.close()
    summarize(args, first, last, best, base)
    return out


def monitor(groups, q, log_w=None, reward=None, estimator="garl") -> dict:
    """What to watch (stable names, README "What a run writes"): rollout lengths, and w_bar / J_Q or the reward."""
    flat = [s for g in groups for s in g]
    stats = {"think_tokens_mean": sum(len(s.z_ids) for s in flat) / len(flat),  # rationale length
             "forced_frac": sum(s.forced for s in flat) / len(flat),  # share of rationales cut by the budget
             # tokens sampled: rationales, forced "</think>", and GRPO's own answers (GARL/PAFT's y is the gold one)
             "tokens_generated": sum(len(s.z_ids) + len(s.forced_ids) + (len(s.y_ids) if reward is not None else 0)
                                     for s in flat)}
    if log_w is not None:
        log_w_bar = log_mean_exp(log_w)  # [B] log w_bar, w_bar = mean_m w_m: the estimate of P = p(y*|x)
        w_bar = log_w_bar.exp()  # [B]
        stats.update(w_bar_mean=w_bar.mean().item(), w_bar_min=w_bar.min().item(), w_bar_max=w_bar.max().item())
        stats["j_q"] = q_loss_of_log(log_w_bar, q).mean().item()  # J_Q, the loss being minimized
        if estimator == "garl":  # max_m c_m / M^q: a few rare successes getting huge weight (paper Sec. 6.1)
            stats["max_amplified_advantage"] = garl_stats(log_w, q)["max_amplified_advantage"]
    if reward is not None:
        stats["reward_mean"] = reward.mean().item()  # training accuracy (exact match)
    return stats


def log(out: Path, stats: dict):
    """One line of DIR/metrics.jsonl."""
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(stats) + "\n")


# ------------------------------------------------------------------------------------------------ validation
def validate(args, model, tokenizer, val, step, generate=rollout.generate):
    """Validation p@1 / p@n / maj@n with Qwen3's evaluation sampling (eval.py: T 0.6, top-p 0.95, top-k 20),
    under its own fixed seed so that it never shifts training's random numbers. Every sampled answer is
    written to DIR/predictions/step-NNNNNN.jsonl (NNNNNN: updates done; eval.py's rows: id, gold, answers)."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if args.device == "cuda" else []):
        torch.manual_seed(args.seed + 7919 * (step + 1))
        with precision_context(args.device, args.precision):
            metrics, predictions = evaluate(model, tokenizer, val, args.task, args.start, args.eval_n,
                                            args.think_budget, args.answer_budget, EVAL_TEMPERATURE, EVAL_TOP_P,
                                            EVAL_TOP_K, prompts_per_call=args.eval_batch, progress=True,
                                            generate=generate)
    folder = Path(args.out) / "predictions"
    folder.mkdir(exist_ok=True)
    with open(folder / f"step-{step + 1:06d}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in predictions)
    return {f"val/{k}": v for k, v in metrics.items()}


def base_validation(out: Path) -> dict | None:
    """The untrained model's validation row (step -1) of a run's metrics.jsonl, or None."""
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return next((r for r in rows if r["step"] == -1), None)


def summarize(args, first, last, best, base=None):
    """The run in three lines: did the quantity the estimator optimizes move, and did held-out accuracy?"""
    if first is not None and first is not last:
        key = "reward_mean" if verified(args.estimator) else "w_bar_mean"
        name = "reward (exact match)" if verified(args.estimator) else "w_bar (the estimate of P = p(y*|x))"
        line = f"training batches, step {first['step'] + 1} -> {last['step'] + 1}: {name} {first[key]:.3g} -> {last[key]:.3g}"
        if "j_q" in first:
            line += f", J_Q {first['j_q']:.3g} -> {last['j_q']:.3g}"
        print(line)
    if base is not None and last is not None and "val/p@1" in last:  # validation questions are never trained on
        print(f"held-out p@1 {base['val/p@1']:.1f}% -> {last['val/p@1']:.1f}%, maj@{args.eval_n} "
              f"{base[f'val/maj@{args.eval_n}']:.1f}% -> {last[f'val/maj@{args.eval_n}']:.1f}% "
              f"({int(last['val/questions'])} validation questions, before training -> after step {last['step'] + 1})")
    saved = f", checkpoints {args.out}/latest and {args.out}/best" if args.checkpoints else " (no checkpoints)"
    print(f"done: {args.out}/metrics.jsonl{saved} (val maj@{args.eval_n} {best:.1f})")


# ------------------------------------------------------------------------------------------------ the two switches
def implementations(decode: str = "generate", logprob: str = "plain", buffer_shape: tuple[int, int] | None = None):
    """--decode generate|fast and --logprobs plain|fast, chosen here and only here: (generate, scoring).

    generate: rollout.generate (Hugging Face generate, the reference) or fast.decode.generate, the same
    arguments and the same tokens (its kept buffers reserved for buffer_shape). scoring: the module logprobs
    (the reference) or fast.logprobs, each with sequence_logprobs and log_weights, the same numbers. The
    reference never imports fast/: the caller chooses (tests/test_fast_*.py hold them equal).
    """
    generate = rollout.generate
    if decode == "fast":
        from fast import decode as fast_decode
        generate = functools.partial(fast_decode.generate, buffer_shape=buffer_shape)
    scoring = logprobs
    if logprob == "fast":
        from fast import logprobs as scoring
    return generate, scoring


def decode_buffer_shape(args, tokenizer, special, examples) -> tuple[int, int]:
    """(rows, positions) of the fast path's decoding buffers, sized once for the whole run (training rollouts and
    validation share them), so that a compiled step never meets a new buffer (fast/decode.py)."""
    rows = max((args.gen_batch or args.B) * args.M, args.eval_batch * args.eval_n)
    longest = max(len(prompt_ids(tokenizer, ex, args.task, args.start)) for ex in examples)
    return rows, longest + args.think_budget + len(special.close_ids) + args.answer_budget


# ------------------------------------------------------------------------------------------------ flags
# Every default that depends on the setup is in presets.py (--preset picks one: "paper" on CUDA, "cpu" otherwise);
# any flag given on the command line wins. The resolved values are printed at start.
# Changing these on --resume is fine; anything else must match the run being resumed.
RESUMABLE_CHANGES = {"steps", "eval_first", "eval_every", "save_every", "resume", "plan", "decode", "logprobs"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def a(*names, preset=False, help="", **kwargs):
        if preset:  # the default comes from PRESETS: show it in --help
            key = names[0].lstrip("-").replace("-", "_")
            shown = {name: values[key] for name, values in PRESETS.items()}
            help += " [preset: " + ", ".join(f"{name} {value}" for name, value in shown.items()) + "]"
            kwargs["default"] = None
        p.add_argument(*names, help=help, **kwargs)

    a("--preset", choices=sorted(PRESETS), default=None,
      help="the defaults of every flag marked [preset] (default: paper on CUDA, cpu otherwise)")
    # the method
    a("--estimator", choices=["garl", "paft", "grpo", *ESTIMATORS], default="garl",
      help="gradient estimator: garl.py, paft.py, grpo.py, or a related method of related.py (latro, maxrl, grpo-soft, "
      "rlpr; rlpr's adaptive std threshold is saved with the checkpoints and restored by --resume)")
    a("--q", type=float, default=0.75,
      help="Tsallis q in [0, 1]: 0 = RLVR-like, 1 = marginal likelihood (ignored by grpo)")
    a("--q-schedule", choices=["constant", "switch", "linear"], default="constant",
      help="constant q; 'switch': --q for --q-steps steps, then --q-final (q=1 then 0 is SFT-then-RLVR); "
      "'linear': a ramp from --q to --q-final over --q-steps steps")
    a("--q-final", type=float, default=0.0, help="q after the switch, or at the end of the linear ramp")
    a("--q-steps", type=int, default=50, help="steps before the switch, or length of the linear ramp (>= 1)")
    a("--M", type=int, preset=True, help="rationales sampled per question (>= 2)")
    a("--K", type=int, default=None, help="PAFT: indices resampled per question (default M, as in the paper)")
    a("--no-pathwise", action="store_true",
      help="GARL: drop the pathwise (answer) term, keep the score-function term")
    # the data
    a("--task", choices=TASKS, preset=True, help="dataset")
    a("--start", choices=["warm", "cold"], default="warm",
      help="warm: instructions in the prompt; cold: the linearized input only (prompts.py)")
    a("--data", preset=True, help="training file in the dataset's original format, 'sample' (the shipped "
      "samples/ file of --task), 'synth' (the shipped fictional one-hop questions, --task musique, validated on "
      "their held-out file) or 'hub' (the paper's train subset from the Hugging Face hub)")
    a("--val-data", default=None,
      help="validation file (default: the hub's val subset with --data hub, else --val-size rows held out of --data)")
    a("--val-size", type=int, preset=True, help="validation questions (0: the whole val subset)")
    a("--train-size", type=int, preset=True, help="train on the first N training questions only (0: all); a few "
      "questions seen again and again is the classic sanity check that a pipeline learns")
    a("--context-chars", type=int, preset=True, help="cut each context to this many characters (0: never; "
      "cutting is a deviation from the paper that keeps CPU steps short)")
    # the model and the rollouts
    a("--model", preset=True, help="hub id, local checkpoint, 'smollm2' (embedded) or 'tiny' (built in code)")
    a("--think-budget", type=int, preset=True, help="thinking tokens before '</think>' is forced "
      "(None: the paper's budget for --task, 3968/2944/1920 for finqa/hotpotqa/musique)")
    a("--answer-budget", type=int, preset=True, help="answer tokens GRPO and evaluation may write")
    a("--temperature", type=float, default=1.0,
      help="rollout temperature; 1 keeps the score-function term on-policy")
    a("--top-p", type=float, default=1.0, help="rollout nucleus threshold; 1 keeps it on-policy")
    # the optimization
    a("--steps", type=int, preset=True, help="optimizer steps (one rollout batch each)")
    a("--B", type=int, preset=True, help="questions B per step (the paper does not publish it)")
    a("--micro-batch", type=int, preset=True,
      help="sequences per forward/backward; the gradient does not depend on it")
    a("--gen-batch", type=int, preset=True, help="questions per generate call, x M rows (0: all B at once)")
    a("--optimizer", choices=["adamw", "sgd"], default="adamw",
      help="AdamW, or plain SGD (the gradient-flow setting of the theory)")
    a("--lr", type=float, preset=True, help="learning rate (the paper does not publish it)")
    a("--warmup-steps", type=int, default=0, help="linear learning-rate warmup, then constant")
    a("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    a("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    a("--precision", choices=["bf16", "fp32"], preset=True, help="bf16 autocast over fp32 weights, or fp32")
    a("--grad-ckpt", action=argparse.BooleanOptionalAction, preset=True, help="gradient checkpointing")
    # the fast paths: the same numbers as the reference, less time and memory (fast/, tested equal)
    a("--decode", choices=["generate", "fast"], preset=True, help="rollouts and validation with Hugging Face generate "
      "(rollout.py, the reference) or fast/decode.py (shared prefill, static cache, one compiled step: the same tokens)")
    a("--logprobs", choices=["plain", "fast"], preset=True, help="log-probs through the whole [N, T, V] logits "
      "(logprobs.py, the reference) or fast/logprobs.py (chunked output layer, each prompt run once: the same numbers)")
    # validation, checkpoints, bookkeeping
    a("--eval-first", action=argparse.BooleanOptionalAction, default=True,
      help="validate the untrained model before step 1, so that every run's curve starts at its own base model "
      "(logged as step -1: no update yet)")
    a("--eval-every", type=int, preset=True, help="validate every N steps, and after the last (0: after the last only)")
    a("--eval-n", type=int, preset=True, help="samples per validation question (the paper: 16)")
    a("--eval-batch", type=int, preset=True, help="validation questions per generate call, x --eval-n rows")
    a("--val-subset", type=int, preset=True, help="questions of the validation set used by the periodic "
      "validations (0: all); the one after the last step always uses all of them")
    a("--save-every", type=int, preset=True, help="checkpoint every N steps (0: after the last step only)")
    a("--checkpoints", action=argparse.BooleanOptionalAction, default=True,
      help="write checkpoints (latest and best); --no-checkpoints: metrics only, for experiments that measure runs")
    a("--seed", type=int, default=0, help="seed for data order, sampling and resampling")
    a("--out", default=None, help="run directory (default runs/<task>-<estimator>-q<q>-<start>)")
    a("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    a("--plan", action="store_true", help="print the memory the run needs, phase by phase (scale/memory.py), against the "
      "device's, and exit before any model loads")
    args = p.parse_args(argv)

    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.preset = args.preset or ("paper" if args.device == "cuda" else "cpu")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:  # 'sample' / 'synth': the shipped files ('synth' also names its held-out validation file)
        args.data, args.val_data = resolve_data(args.task, args.data, args.val_data)
    except ValueError as e:
        p.error(str(e))
    if args.think_budget is None:
        args.think_budget = PAPER_THINK_BUDGETS[args.task]
    args.out = args.out or f"runs/{args.task}-{args.estimator}-q{args.q}-{args.start}"
    check_args(p, args)
    return args


def check_args(p, args):
    """Bad flags fail here, with the flag's name, before any model or data is loaded."""
    def flag(name):
        return "--" + name.replace("_", "-")

    for name in ["q", "q_final"]:
        try:
            check_q(getattr(args, name))
        except ValueError as e:
            p.error(f"{flag(name)}: {e}")
    if args.M < 2:
        p.error(f"--M must be >= 2 (GARL's leave-one-out baseline and GRPO's group std need two samples), "
                f"got {args.M}")
    at_least = {1: ["steps", "B", "micro_batch", "think_budget", "answer_budget", "eval_n",
                    "eval_batch", "q_steps"],
                0: ["gen_batch", "eval_every", "save_every", "val_size", "train_size", "val_subset", "context_chars",
                    "warmup_steps"]}
    for low, names in at_least.items():
        for name in names:
            if getattr(args, name) < low:
                p.error(f"{flag(name)} must be >= {low}, got {getattr(args, name)}")
    if args.K is not None and args.K < 1:
        p.error(f"--K must be >= 1, got {args.K}")
    for name, ok, rule in [("lr", args.lr > 0, "> 0"), ("weight_decay", args.weight_decay >= 0, ">= 0"),
                           ("grad_clip", args.grad_clip >= 0, ">= 0"), ("temperature", args.temperature > 0, "> 0"),
                           ("top_p", 0 < args.top_p <= 1, "in (0, 1]")]:
        if not (ok and math.isfinite(getattr(args, name))):
            p.error(f"{flag(name)} must be {rule}, got {getattr(args, name)}")
    if args.temperature != 1.0 or args.top_p != 1.0:
        print(f"warning: --temperature {args.temperature} --top-p {args.top_p}: rollouts are not drawn from the model "
              "itself, so the score-function term is off-policy (biased)", file=sys.stderr)
    for name in ["data", "val_data"]:
        path = getattr(args, name)
        if path not in (None, "hub") and not os.path.isfile(path):
            p.error(f"{flag(name)} {path}: no such file")
    out = Path(args.out)
    if not args.resume and not args.plan and (out / "run_config.json").exists():
        p.error(f"--out {out} already holds a run; pass --resume to continue it, or choose another --out")
    if args.resume and not args.checkpoints:
        p.error("--resume needs checkpoints: drop --no-checkpoints")
    if args.resume:
        problem = resume_problem(out, vars(args), RESUMABLE_CHANGES)
        if problem:
            p.error(problem)


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    print("config:", json.dumps(vars(args)))
    try:  # data errors surface before the (slow) model load: a bad file or row, an unreachable hub
        train_examples, val_examples = load_data(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"train.py: {e}") from None
    print(f"data: {len(train_examples)} training and {len(val_examples)} validation questions "
          f"({args.task}, {args.start} start)")
    if args.plan or args.device == "cuda":  # a GPU run is checked against the device's memory before any model loads
        from scale import memory
        prompt_tokens = [sum(memory.prompt_tokens_of(user_message(ex, args.task, args.start)) for ex in part) / len(part)
                         for part in (train_examples, val_examples)]  # mean prompt tokens, estimated from characters
        print(validation_cost(args, len(val_examples), *prompt_tokens)[0])
        try:
            table, fit = memory.plan_run(args, train_examples + val_examples)
        except ValueError as e:  # a model whose shape is unknown offline: what to pass instead
            raise SystemExit(f"train.py: {e}") from None
        if args.plan:
            print(table)
            print("fits" if fit.ok else f"does not fit: {fit.message}")
            return None
        print(f"memory: peak ~{fit.peak / 1e9:.1f} GB ({fit.phase}) of {fit.budget / 1e9:.1f} GB usable "
              "(--plan prints the breakdown)")
        if not fit.ok:  # refused before the (slow) model load, with the flag to change
            raise SystemExit(f"train.py: does not fit: {fit.message} (--plan prints the breakdown)")
    torch.manual_seed(args.seed)
    transformers_logging.disable_progress_bar()  # one progress bar, ours: none for loading or saving weights
    try:
        model, tokenizer = load_model(os.path.realpath(Path(args.out) / "latest") if args.resume else args.model,
                                      device=args.device)
    except ModelLoadError as e:  # no such directory, a hub id without network: one line, no traceback
        raise SystemExit(f"train.py: {e}") from None
    return train(args, model, tokenizer, train_examples, val_examples)


# ------------------------------------------------------------------------------------------------ plumbing
def precision_context(device_type: str, precision: str):
    """bf16 autocast over fp32 master weights (--precision bf16), or nothing."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def phase_timer(stats: dict, device: str):
    """`with timer("generate"): ...` records stats["time_generate"] in seconds (GPU work included)."""
    @contextlib.contextmanager
    def timer(phase):
        t = time.perf_counter()
        yield
        if device == "cuda":
            torch.cuda.synchronize()  # so that the timing measures the GPU work, not its launch
        stats[f"time_{phase}"] = stats.get(f"time_{phase}", 0.0) + time.perf_counter() - t
    return timer


def load_data(args) -> tuple[list[dict], list[dict]]:
    """The run's (train, val) questions, as --data, --val-data, --val-size, --train-size, --context-chars ask."""
    return load_train_val(args.task, args.data, args.val_data, args.val_size, args.train_size, args.context_chars,
                          args.seed)


if __name__ == "__main__":
    main()
