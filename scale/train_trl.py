"""Train with GARL or PAFT (or LaTRO, GRPO-soft) through TRL's GRPOTrainer (trl_garl.py): one GPU, many GPUs,
vLLM rollouts.

    python scale/train_trl.py --estimator paft --q 0.75 --task hotpotqa                    # one GPU, the paper's setup
    accelerate launch --config_file scale/deepspeed_zero3.yaml scale/train_trl.py --estimator garl --q 0.75
    torchrun --nproc_per_node 2 scale/train_trl.py --model tiny --steps 2                  # two CPU processes (gloo)

The same tasks, prompts (prompts.py), data (data.load_train_val: the same training questions as train.py) and
defaults as train.py (its presets: "paper" on CUDA, "cpu" otherwise), and the same step: B = --B
questions x M rationales, one update. TRL splits the step's B x M rows over the processes and each process's
share into micro-batches of --micro-batch rows: gradient accumulation = B x M / (processes x micro-batch).
Metrics go to TRL's logger and to OUT/metrics.jsonl, under train.py's names (w_bar_mean, j_q, ...); the model
to OUT/final (and OUT/checkpoint-N every --save-every steps). Validation is not run here: score a saved
model with eval.py.
"""
import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # as a script from anywhere: the library is the top-level folder

import torch
from datasets import Dataset
from transformers import TrainerCallback

from data import TASKS, load_train_val, resolve_data
import models
from models import ModelLoadError, describe, load_model
from prompts import build_prompt
from presets import PAPER_THINK_BUDGETS, PRESETS
from scale.trl_garl import ESTIMATORS, GARLConfig, GARLTrainer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), default=None,
      help="train.py's defaults for every flag left unset (default: paper on CUDA, cpu otherwise)")
    a("--estimator", choices=ESTIMATORS, default="garl",
      help="gradient estimator: garl.py, paft.py, or a related method of related.py that is a function of log w "
      "(latro, grpo-soft); VeriFree is garl with --q 0. Not served: grpo, maxrl, rlpr (docs/trl.md says why)")
    a("--q", type=float, default=0.75, help="Tsallis q in [0, 1]: 0 = RLVR-like, 1 = marginal likelihood "
      "(latro and grpo-soft do not use it; it still sets the logged j_q)")
    a("--q-schedule", choices=["constant", "switch", "linear"], default="constant",
      help="constant q; 'switch': --q for --q-steps steps, then --q-final; 'linear': a ramp from --q to --q-final")
    a("--q-final", type=float, default=0.0, help="q after the switch, or at the end of the linear ramp")
    a("--q-steps", type=int, default=50, help="steps before the switch, or length of the linear ramp")
    a("--no-pathwise", action="store_true", help="GARL: drop the pathwise (answer) term")
    a("--task", choices=TASKS, default=None, help="dataset (default as in train.py)")
    a("--start", choices=["warm", "cold"], default="warm", help="warm: instructions in the prompt; cold: the "
      "linearized input only (prompts.py)")
    a("--model", default=None, help="hub id, local checkpoint, 'smollm2' or 'tiny' (default as in train.py)")
    a("--data", default=None, help="training file in the dataset's original format, 'sample', 'synth' or 'hub' "
      "(default as in train.py)")
    a("--val-size", type=int, default=None, help="questions of --data held out as train.py holds them out (its "
      "validation set), so that both train on the same questions (default as in train.py)")
    a("--train-size", type=int, default=None, help="train on the first N training questions only (0: all; default "
      "as in train.py)")
    a("--M", type=int, default=None, help="rationales per question (TRL's num_generations; paper 32)")
    a("--K", type=int, default=None, help="PAFT: indices resampled per question (default M)")
    a("--think-budget", type=int, default=None, help="thinking tokens before '</think>' is forced (TRL's "
      "max_completion_length; default: the paper's for the task, 24 on CPU)")
    a("--context-chars", type=int, default=None, help="cut each context to this many characters (0: never)")
    a("--steps", type=int, default=None, help="optimizer steps (one rollout batch each)")
    a("--B", type=int, default=None, help="questions B per step, over all processes")
    a("--micro-batch", type=int, default=None, help="rows per forward/backward on each process (TRL's "
      "per_device_train_batch_size); the gradient does not depend on it")
    a("--lr", type=float, default=None, help="learning rate, constant after --warmup-steps (default as in train.py)")
    a("--warmup-steps", type=int, default=0, help="linear learning-rate warmup")
    a("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    a("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    a("--precision", choices=["bf16", "fp32"], default=None, help="bf16 autocast over fp32 weights (CUDA default) "
      "or fp32 (CPU default)")
    a("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
      help="gradient (activation) checkpointing (CUDA default on)")
    a("--use-vllm", action="store_true", help="sample rationales with vLLM (TRL's use_vllm)")
    a("--vllm-mode", choices=["colocate", "server"], default="colocate",
      help="colocate: vLLM inside each training process; server: a separate `vllm serve` (docs/trl.md)")
    a("--vllm-server-base-url", default=None, help="server mode: the vLLM server's URL (default http://0.0.0.0:8000)")
    a("--vllm-gpu-memory-utilization", type=float, default=0.3, help="colocate mode: GPU memory share for vLLM")
    a("--save-every", type=int, default=50, help="checkpoint (OUT/checkpoint-N) every N steps; OUT/final at the end")
    a("--report-to", default="none", help="TRL/transformers loggers (wandb, tensorboard, ...; 'none': stdout and "
      "OUT/metrics.jsonl only)")
    a("--seed", type=int, default=0, help="seed for data order, sampling and PAFT's resampling")
    a("--out", default=None, help="run directory (default runs/trl-<task>-<estimator>-q<q>-<start>)")
    a("--resume", action="store_true", help="continue the run in --out from its last OUT/checkpoint-N")
    args = p.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.preset = args.preset or ("paper" if args.device == "cuda" else "cpu")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, "absent") is None:
            setattr(args, key, value)
    try:  # 'sample' / 'synth' -> the shipped files; 'synth' validates on its held-out file, as train.py does
        args.data, args.val_data = resolve_data(args.task, args.data)
    except ValueError as e:
        p.error(str(e))
    if args.think_budget is None:
        args.think_budget = PAPER_THINK_BUDGETS[args.task]
    args.out = args.out or f"runs/trl-{args.task}-{args.estimator}-q{args.q}-{args.start}"
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    check_args(p, args)
    return args


def check_args(p, args):
    """Bad flags fail here, with the flag's name, before any model or data is loaded."""
    for name in ["M", "steps", "B", "micro_batch", "think_budget", "save_every"]:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.M < 2:
        p.error(f"--M must be >= 2 (GARL's leave-one-out baseline needs two samples), got {args.M}")
    rows = args.B * args.M
    if rows % (args.world_size * args.micro_batch):
        p.error(f"--B {args.B} x --M {args.M} = {rows} rows per step must split evenly "
                f"into {args.world_size} process(es) x --micro-batch {args.micro_batch}")
    if args.data != "hub" and not os.path.isfile(args.data):
        p.error(f"--data {args.data}: no such file")
    out = Path(args.out)
    if args.resume and not list(out.glob("checkpoint-*")):
        p.error(f"--resume: {out} has no checkpoint-N to resume")
    if not args.resume and (out / "run_config.json").exists():
        p.error(f"--out {out} already holds a run; pass --resume to continue it, or choose another --out")


def garl_config(args) -> GARLConfig:
    """The GARLConfig of these flags (errors name the config field)."""
    accumulation = args.B * args.M // (args.world_size * args.micro_batch)
    return GARLConfig(
        output_dir=args.out, estimator=args.estimator, q=args.q, q_schedule=args.q_schedule, q_final=args.q_final,
        q_steps=args.q_steps, paft_k=args.K, no_pathwise=args.no_pathwise, num_generations=args.M,
        max_completion_length=args.think_budget, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=accumulation, max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup" if args.warmup_steps else "constant", warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, max_grad_norm=args.grad_clip, bf16=args.precision == "bf16",
        activation_checkpointing=args.grad_ckpt, use_cpu=args.device == "cpu", seed=args.seed,
        use_vllm=args.use_vllm, vllm_mode=args.vllm_mode, vllm_server_base_url=args.vllm_server_base_url,
        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization, logging_steps=1, save_strategy="steps",
        save_steps=args.save_every, report_to=args.report_to)


def load_tokenizer(name: str):
    """The tokenizer of a hub id or checkpoint, checked as models.load_model checks it (ModelLoadError if not)."""
    tokenizer = models.load_tokenizer(name)
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"--model {name}: the tokenizer has no chat template; prompts need one")
    return tokenizer


class MetricsFile(TrainerCallback):
    """Each step's log line to OUT/metrics.jsonl (main process), numbered from 0 like train.py's steps."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "w_bar_mean" in logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step - 1, **logs}) + "\n")


def main(argv=None):
    args = parse_args(argv)
    try:
        config = garl_config(args)  # before the model: ZeRO-3 partitions a model loaded after its config
    except ValueError as e:
        sys.exit(f"scale/train_trl.py: error: {e}")
    print("config:", json.dumps(vars(args)))
    train_examples, _ = load_train_val(args.task, args.data, args.val_data, args.val_size, args.train_size,
                                       args.context_chars, args.seed)  # the same training questions as train.py
    print(f"data: {len(train_examples)} training questions ({args.task}, {args.start} start); "
          f"{args.B} x {args.M} rows per step = {args.world_size} process(es) x "
          f"{config.gradient_accumulation_steps} micro-batch(es) of {args.micro_batch}")
    try:  # a missing directory, a hub id without network: one line naming --model, no traceback
        if args.model in ("tiny", "smollm2"):  # built in code: an instance
            model, tokenizer = load_model(args.model)
        else:  # a hub id or a checkpoint: TRL loads it itself (fp32 weights), so ZeRO-3 can partition it as it loads
            model, tokenizer = args.model, load_tokenizer(args.model)
            config.model_init_kwargs = {"dtype": torch.float32}  # fp32 master weights (bf16 is autocast)
    except ModelLoadError as e:
        print(f"scale/train_trl.py: {e}", file=sys.stderr)
        sys.exit(2)
    dataset = Dataset.from_list([{"prompt": build_prompt(tokenizer, ex, args.task, args.start), "answer": ex["answer"]}
                                 for ex in train_examples])
    out = Path(args.out)
    trainer = GARLTrainer(model, args=config, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[MetricsFile(out / "metrics.jsonl")])
    print(f"model: {args.model} -> {describe(trainer.model)}")
    if trainer.accelerator.is_main_process and not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(vars(args), indent=2))
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(str(out / "final"))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out / "final")
        print(f"done: {out}/metrics.jsonl, model in {out}/final")


if __name__ == "__main__":
    main()
