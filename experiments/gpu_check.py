"""The paper's GPU setup checked in one run: decoding speed, each phase's time and peak memory against
memory.py's estimate, the KV cache's dtypes, and train.py end to end. No network: random weights in
Qwen3-0.6B's exact shape (as `bench.py --model qwen3-shape`) with the byte-level tokenizer.

    python experiments/gpu_check.py                 # one H100/H200: about 5 minutes with eager decoding
    python experiments/gpu_check.py --cpu-smoke     # the same code path at tiny sizes on a CPU, < 1 minute

1. bench   one GARL step with train.py's functions (experiments/memory_check.py: rollout.generate with
           --decode fast, the weight pass, train.gradient_pass, clip + AdamW), M = 32, a ~1024-token prompt,
           micro-batch 4, bf16 autocast over fp32 weights, gradient checkpointing, at thinking budgets 1024
           and 4096, each measured on the SECOND step at that budget: the first (untimed) creates the
           gradients and AdamW's state and compiles the decoding step and records its CUDA graphs, so the
           measured step times decoding, not compilation (the number of compilations in the measured step
           is printed: 0 expected). Per phase: time, and peak memory (torch.cuda.max_memory_allocated,
           reset per phase) against memory.py; decoding tokens/s against the bound that HBM bandwidth sets;
           the dtypes of the KV cache, read from the fast path's kept buffers after the call.
   logprobs  teacher-forced: the per-token log-probs the fast path recorded while decoding (bf16, compiled)
           against the plain computation (the whole sequence through the model under bf16 autocast,
           log-softmax, EOS banned inside the rationale), on 4 rows at the first budget: at most
           LOGP_TOLERANCE nats apart per token. On a GPU tokens are not compared: the GEMM shapes and
           kernels of the two computations differ, so bf16 rounds differently.
2. train   a synthetic HotPotQA file (the original JSON format) and the random-init checkpoint with its
           tokenizer, then `train.py --model DIR --data FILE` (train.main, in this process, so that its
           peak memory is measurable) for two steps at the paper's defaults (M 32, micro-batch 4,
           gen-batch 1, bf16, gradient checkpointing, AdamW) with --B 1 and
           --think-budget 512 to fit the time, and one validation after the last step (1 question, 16
           samples, 128 answer tokens): its phase times from metrics.jsonl, its peak memory against
           memory.py's estimate for the same settings (validation included).
3. --full-bench  also runs experiments/bench.py itself (three estimators, TRL if installed) at both
           budgets: with eager decoding that alone takes well over 10 minutes at budget 4096.

The decoding bound: one decoding step must read every weight the step uses (the bf16 copies: 2 bytes
per Linear parameter, the output layer included) and every row's KV cache so far, so a step takes at
least (weights + rows x length x KV bytes per token) / bandwidth. Bandwidth comes from --bandwidth-gbs
or a table of known GPUs (H100 SXM 3350 GB/s, H200 4800 GB/s, ...). Writes OUT/gpu_check.json.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library is the top-level folder

import torch

from scale import memory
import train
from experiments import memory_check
from data import load_examples, parse_hotpotqa
from fast.decode import decode_fast, release
from prompts import gold_ids, prompt_ids
from rollout import SpecialTokens, to_samples

# HBM bandwidth in GB/s by device name (vendor data sheets); --bandwidth-gbs overrides.
BANDWIDTH_GBS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900,
                 "GH200": 4000, "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555,
                 "A100-PCIE-40GB": 1555, "L40S": 864, "A10G": 600}
ROOT = Path(__file__).resolve().parent.parent
# bf16 keeps 8 significant bits: a logit of magnitude ~10 is rounded by up to ~0.04, differently by the two
# computations (measured on the CPU, tiny model: at most 7.6e-3; tests/test_fast_decode.py checks fp32 to 1e-4).
LOGP_TOLERANCE = 0.1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--cpu-smoke", action="store_true", help="tiny sizes on a CPU: the same code path, checked in under a minute")
    a("--budgets", type=int, nargs="+", default=None, help="thinking budgets of part 1 (default 1024 4096)")
    a("--M", type=int, default=None, help="rationales per question (default 32)")
    a("--prompt-tokens", type=int, default=None, help="prompt length of part 1 and of the synthetic data (default 1024)")
    a("--train-think-budget", type=int, default=None, help="train.py's --think-budget in part 2 (default 512)")
    a("--skip-bench", action="store_true", help="skip part 1")
    a("--skip-train", action="store_true", help="skip part 2")
    a("--full-bench", action="store_true", help="also run experiments/bench.py at each budget (long)")
    a("--bandwidth-gbs", type=float, default=None, help="memory bandwidth for the decoding bound (default: by GPU name)")
    a("--out", default=None, help="directory for gpu_check.json, the checkpoint and the run (default: a temporary one)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        p.error("no CUDA device: this check is for a GPU (run --cpu-smoke for the code path on a CPU)")
    args.device = "cpu" if args.cpu_smoke else "cuda"
    small = args.cpu_smoke
    args.budgets = args.budgets or ([16, 32] if small else [1024, 4096])
    args.M = args.M or (4 if small else 32)
    args.prompt_tokens = args.prompt_tokens or (48 if small else 1024)
    args.train_think_budget = args.train_think_budget or (6 if small else 512)
    args.model = "tiny-wide" if small else "qwen3-shape"
    args.out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    return args


def bandwidth(args) -> float | None:
    """Bytes per second of device memory, or None when unknown (no bound is printed then)."""
    if args.bandwidth_gbs:
        return args.bandwidth_gbs * 1e9
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_properties(0).name
    for key, gbs in sorted(BANDWIDTH_GBS.items(), key=lambda kv: -len(kv[0])):  # the most specific name first
        if key in name:
            return gbs * 1e9
    return None


def decode_bound(config, rows: int, prompt: int, new: int, kv_bytes: float, bw: float) -> float:
    """Tokens/s no decoder can beat: each step reads the bf16 weights and the KV cache so far.

    Over `new` steps from length `prompt`: sum_t (W + rows (prompt + t) kv) / bw seconds for rows x new tokens.
    """
    s = memory.shape_of(config)
    weights = memory.parameter_count(s)["cast"] * 2
    kv = memory.kv_bytes_per_token(s, 1) * kv_bytes  # per token, in the cache's actual dtype
    seconds = (new * weights + rows * kv * (new * prompt + new * (new - 1) / 2)) / bw
    return rows * new / seconds


# ------------------------------------------------------------------------------------------------ part 1
def bench_part(args, model, tok, results):
    bw = bandwidth(args)
    for budget in args.budgets:
        margs = memory_check.parse_args(["--model", args.model, "--M", str(args.M), "--prompt-tokens",
                                         str(args.prompt_tokens), "--think-budget", str(budget), "--micro-batch", "4",
                                         "--precision", "bf16", "--grad-ckpt", "--measure", "torch", "--decode", "fast"])
        margs.device = args.device
        t = time.perf_counter()
        r = memory_check.measure(margs, model, tok, warmup_budget=budget)  # warm-up step at the measured budget
        gen = r["phases"]["generate"]
        seconds = gen.get("cuda_seconds", gen.get("torch_seconds"))
        kv_bytes = memory_check.kv_cache_bytes(r["kv_dtypes"]) or 2
        rows, new = args.M, r["generated"] // args.M
        line = {"budget": budget, "prompt_tokens": r["prompt_tokens"], "kv_dtypes": r["kv_dtypes"],
                "generated": r["generated"], "decode_tokens_per_s": r["generated"] / seconds,
                "bound_tokens_per_s": decode_bound(model.config, rows, r["prompt_tokens"], new, kv_bytes, bw) if bw else None,
                "compilations_measured": r["compilations"], "phases": r["phases"], "wall_s": time.perf_counter() - t}
        results["bench"].append(line)
        print(f"\n[1] bench, think budget {budget}: {r['generated']} tokens generated in {seconds:.1f} s = "
              f"{line['decode_tokens_per_s']:.0f} tokens/s"
              + (f" (bandwidth bound {line['bound_tokens_per_s']:.0f} tokens/s, "
                 f"{line['decode_tokens_per_s'] / line['bound_tokens_per_s']:.1%} of it)" if bw else " (no bandwidth known)")
              + f"; KV cache dtypes {r['kv_dtypes'] or 'not seen'}; compilations in the measured step: {r['compilations']}"
              f" ({torch._dynamo.utils.counters['stats']['unique_graphs']} so far)")
        print(memory_check.report(r), flush=True)
        if args.full_bench:
            cmd = [sys.executable, str(ROOT / "experiments" / "bench.py"), "--model", "qwen3-shape", "--M", str(args.M),
                   "--think-budget", str(budget), "--prompt-tokens", str(args.prompt_tokens), "--micro-batch", "4",
                   "--repeats", "1", "--out", str(args.out / f"bench-{budget}")]
            print("[1] " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def logprob_check(args, model, tok, results, rows=4):
    """The fast path's recorded per-token log-probs against the plain, teacher-forced computation (bf16)."""
    tokens, budget = SpecialTokens.of(tok), args.budgets[0]
    example = memory_check.make_example(tok, args.prompt_tokens, 4)
    prompts = [prompt_ids(tok, example, "finqa", "warm")]
    with torch.no_grad(), train.precision_context(args.device, "bf16"):
        torch.manual_seed(0)
        decoded = decode_fast(model, prompts, args.M, tokens, budget)  # the shape bench_part compiled
        fast = decoded.logp[:rows].float().clone()  # [rows, max_new]
        samples = to_samples(prompts, args.M, decoded.tokens, tokens, budget, None)[0][:rows]
        worst, total, count = 0.0, 0.0, 0
        for r, s in enumerate(samples):
            z0, z = len(s.prompt_ids), len(s.z_ids)
            ids = torch.tensor([s.ids], device=args.device)  # [1, T]
            logits = model(input_ids=ids).logits[0, z0 - 1:z0 - 1 + z].float()  # [z, V] predicting z's tokens
            logits[:, tokens.eos_ids] = float("-inf")  # the rationale's sampler never sees EOS
            plain = logits.log_softmax(-1).gather(1, ids[0, z0:z0 + z, None])[:, 0]  # [z]
            diff = (plain - fast[r, :z]).abs()
            worst, total, count = max(worst, diff.max().item()), total + diff.sum().item(), count + z
    results["logprobs"] = {"rows": rows, "tokens": count, "max_abs_diff": worst, "mean_abs_diff": total / count,
                           "tolerance": LOGP_TOLERANCE, "ok": worst <= LOGP_TOLERANCE}
    print(f"\n[1] log-probs, teacher-forced: fast path vs plain over {count} rationale tokens of {rows} rows, bf16: "
          f"max |diff| {worst:.2e}, mean {total / count:.2e} nats (tolerance {LOGP_TOLERANCE}): "
          + ("ok" if worst <= LOGP_TOLERANCE else "FAILED"), flush=True)
    if worst > LOGP_TOLERANCE:
        raise RuntimeError(f"the fast path's log-probs differ from the plain computation by {worst:.3g} nats")


# ------------------------------------------------------------------------------------------------ part 2
def synthetic_hotpotqa(path: Path, rows: int, prompt_tokens: int, tok):
    """A HotPotQA file in its original JSON format, each row's warm prompt about prompt_tokens long."""
    sentence = "The river town of Aldwick built its first stone bridge in 1871, after the flood of the year before."
    data = []
    for i in range(rows):
        row = {"_id": f"synthetic-{i}", "question": f"In which year did town {i} build its bridge?", "answer": "1871",
               "supporting_facts": [], "context": []}
        while len(prompt_ids(tok, parse_hotpotqa(row), "hotpotqa", "warm")) < prompt_tokens:
            row["context"].append([f"Town {i} paragraph {len(row['context'])}", [sentence] * 2])
        data.append(row)
    path.write_text(json.dumps(data))


def train_part(args, ckpt: Path, config, tok, results):
    data = args.out / "hotpotqa_synthetic.json"
    synthetic_hotpotqa(data, 4, args.prompt_tokens, tok)
    run = args.out / "run"
    budget, micro = args.train_think_budget, 4
    answer, eval_n = (128, 16) if args.device == "cuda" else (8, 4)  # the paper's answer budget and maj@16
    argv = ["--model", str(ckpt), "--data", str(data), "--task", "hotpotqa", "--estimator", "garl", "--steps", "2",
            "--M", str(args.M), "--micro-batch", str(micro), "--gen-batch", "1", "--B", "1",
            "--think-budget", str(budget), "--answer-budget", str(answer), "--precision", "bf16", "--grad-ckpt",
            "--optimizer", "adamw", "--eval-every", "0", "--val-size", "1", "--eval-n", str(eval_n),
            "--context-chars", "0", "--save-every", "2", "--no-eval-first", "--out", str(run)]
    print(f"\n[2] python train.py {' '.join(argv)}", flush=True)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    train.main(argv)
    wall = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    examples = load_examples("hotpotqa", None, data)
    prompt = max(len(prompt_ids(tok, ex, "hotpotqa", "warm")) for ex in examples)
    close = len(SpecialTokens.of(tok).close_ids)
    gold = max(len(gold_ids(tok, ex["answer"])) for ex in examples)
    seen = next((b["kv_dtypes"] for b in results["bench"] if b["kv_dtypes"]), None)  # the cache as generate keeps it
    plan = memory.estimate(config, M=args.M, gen_questions=1, prompt_tokens=prompt, max_new_tokens=budget + close,
                           micro_batch=micro, seq_tokens=prompt + budget + close + gold, grad_ckpt=True,
                           precision="bf16", optimizer="adamw", device=args.device, val_questions=1, eval_n=eval_n,
                           val_max_new_tokens=budget + close + answer,
                           kv_cache_bytes=memory_check.kv_cache_bytes(seen))
    results["train"] = {"argv": argv, "wall_s": wall, "peak_allocated": peak, "estimated_peak": plan.peak,
                        "estimated_phases": {k: plan.phase_bytes(k) for k in plan.phases}, "metrics": metrics}
    keys = ["time_generate", "time_weights", "time_estimator", "time_backward", "time_optimizer", "time_eval"]
    print("| step | " + " | ".join(k.replace("time_", "") + " s" for k in keys) + " | tokens generated |")
    print("|---" * (len(keys) + 2) + "|")
    for m in metrics:
        print(f"| {m['step']} | " + " | ".join(f"{m[k]:.2f}" if k in m else "-" for k in keys)
              + f" | {m['tokens_generated']} |")
    shown = f"{peak / 2**30:.2f} GiB" if peak is not None else "not measured on a CPU"
    print(f"[2] train.py: {wall:.0f} s; peak memory {shown}, estimated {plan.peak / 2**30:.2f} GiB "
          f"({plan.peak_phase}); validation " + ", ".join(f"{k} {v:.3g}" for k, v in metrics[-1].items() if k.startswith("val/")))


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    name = torch.cuda.get_device_properties(0).name if args.device == "cuda" else "CPU"
    total = memory.device_memory(args.device)[1]
    print(f"gpu check on {name} ({total / 2**30:.1f} GiB), torch {torch.__version__}; output in {args.out}")
    results = {"device": name, "device_memory": total, "bench": [], "train": None}
    margs = memory_check.parse_args(["--model", args.model])
    margs.device = args.device
    model, tok = memory_check.build(margs)
    if not args.skip_bench:
        bench_part(args, model, tok, results)
        logprob_check(args, model, tok, results)
    ckpt, config = args.out / "model", model.config
    if not args.skip_train:
        model.save_pretrained(ckpt)  # the random-init checkpoint train.py loads
        tok.save_pretrained(ckpt)
    release(model)  # the fast path's kept buffers, twin and graphs
    del model  # weights and gradients off the device before train.py measures its own peak
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_train:
        train_part(args, ckpt, config, tok, results)
    results["wall_s"] = time.perf_counter() - start
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\ngpu check done in {results['wall_s']:.0f} s: {args.out / 'gpu_check.json'}")
    return results


if __name__ == "__main__":
    main()
