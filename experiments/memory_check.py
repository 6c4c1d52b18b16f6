"""memory.py's estimate against measured peaks, phase by phase, for one GARL step of train.py.

    python experiments/memory_check.py                                   # tiny-wide model, fp32, about 15 s
    python experiments/memory_check.py --precision bf16 --grad-ckpt      # CPU bf16 autocast, checkpointing
    python experiments/memory_check.py --model smollm2 --M 8 --prompt-tokens 256 --think-budget 96   # ~2 min
    python experiments/memory_check.py --model qwen3-shape --M 32 --think-budget 4096 --prompt-tokens 1024 \\
        --micro-batch 4 --precision bf16 --grad-ckpt                     # CUDA (gpu_check.py runs this)

    python experiments/memory_check.py --M 8 --decode generate --logprobs plain   # the plain paths

One step with train.py's own functions, in its order: rollout.generate (M rationales per question; --decode
fast: fast/decode.py, its buffers kept between calls; generate: Hugging Face generate, a growing
DynamicCache), train.attach_gold_answers + the weight pass (logprobs.log_weights, fast or plain),
train.gradient_pass (fast or plain log-probs), clip + optimizer step, then the gradients freed (set to None), as train.py does. A warm-up step
first creates the AdamW state and the fast path's twin and buffers (the estimate's steady state). With
more than one micro-batch (M > --micro-batch) the gradients exist during most of the gradient pass, as
at the paper's scale (32 rows, micro-batch 4); with one, they are created during its backward.
Each phase's peak is measured:

    CUDA  torch.cuda.max_memory_allocated, reset before each phase: the peak of live tensors, absolute.
    CPU   the process's peak resident set size (VmHWM in /proc/self/status, reset through
          /proc/self/clear_refs), minus the resident size when the phase starts, after freed heap memory
          went back to the system (malloc_trim). The script re-runs itself with glibc's mmap threshold
          fixed at 64 KiB from the start (MALLOC_MMAP_THRESHOLD_), so that every tensor above that size
          is its own mapping, returned on free: the resident size then follows live tensors, not the
          heap's reuse pattern (setting it later is not enough: big free heap chunks get reused first).
    torch (CPU) the CPU allocator's live bytes, as torch's profiler records them (profile_memory):
          tensors only, exactly, like CUDA's counter; slower (the profiler records every op).

Both are compared with the estimate's phase total minus what is alive when the phase starts
(Plan.at_start: weights, optimizer state, the fast path's kept buffers and twin, and before the optimizer
step the gradients), i.e. what the phase adds; on CUDA the absolute peak is compared too. The model
'tiny-wide' is a 4-layer Qwen3 (hidden 256, 8 heads, 4 kv heads of 64, vocabulary 8192) whose terms
are tens to hundreds of MB, so that allocator noise (a few MB) stays small beside them; its tokenizer
spells "</think>" in 8 bytes, so no row closes its rationale early and every row runs the full budget.
"""
import argparse
import contextlib
import ctypes
import gc
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library is the top-level folder

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from scale import memory
import models
import rollout
import train
from experiments.bench import FILLER  # the same synthetic FinQA-like text
from garl import garl_coefficients
from prompts import gold_ids, prompt_ids

MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TOP_PAD_": "0"}


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", choices=["tiny-wide", "smollm2", "qwen3-shape"], default="tiny-wide",
      help="tiny-wide (built in code), smollm2 (embedded, real weights) or qwen3-shape (random weights)")
    a("--M", type=int, default=16, help="rationales per question")
    a("--prompt-tokens", type=int, default=200, help="prompt length in tokens (about)")
    a("--think-budget", type=int, default=400, help="thinking tokens, all of them sampled")
    a("--answer-tokens", type=int, default=4, help="gold answer length in tokens, EOS included (about)")
    a("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    a("--precision", choices=["fp32", "bf16"], default="fp32", help="fp32, or bf16 autocast over fp32 weights")
    a("--grad-ckpt", action=argparse.BooleanOptionalAction, default=False, help="gradient checkpointing")
    a("--decode", choices=memory.DECODE_PATHS, default="fast", help="rollouts: the fast path (fast/decode.py, "
      "buffers kept) or Hugging Face generate (rollout.py, a growing DynamicCache)")
    a("--logprobs", choices=memory.LOGPROB_PATHS, default="fast", help="log-probs: fast (fast/logprobs.py) or plain "
      "(logprobs.py, [N, T, V] logits)")
    a("--optimizer", choices=["adamw", "sgd"], default="adamw", help="optimizer")
    a("--threads", type=int, default=1, help="CPU threads for torch")
    a("--measure", choices=["torch", "rss", "both"], default="both",
      help="CPU: the allocator's live bytes (torch's profiler), the peak resident set size, or both")
    a("--seed", type=int, default=0, help="seed for the model and the sampling")
    a("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    args.device = "cuda" if cuda else "cpu"
    return args


# ------------------------------------------------------------------------------------------------ measuring
class PhasePeak:
    """Peak memory of a block: `with meter.phase() as m: ...`, then m.peak - m.start (bytes) and m.seconds.

    kind "cuda": torch.cuda.max_memory_allocated; "torch": the CPU allocator's live bytes as torch's
    profiler records them (profile_memory); "rss": the process's peak resident set size.
    """

    def __init__(self, kind):
        self.kind = kind
        if kind == "rss":
            self.libc = ctypes.CDLL("libc.so.6")

    @staticmethod
    def _status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    @contextlib.contextmanager
    def phase(self):
        gc.collect()
        result = SimpleNamespace(start=0, peak=0, seconds=0.0)
        if self.kind == "cuda":
            torch.cuda.synchronize()
            result.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        elif self.kind == "rss":
            self.libc.malloc_trim(0)  # freed heap memory back to the system, so the baseline is what is live
            result.start = self._status("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (the peak resident set size) to the current size
        else:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            profiler.__enter__()
        t = time.perf_counter()
        try:
            yield result
        finally:
            if self.kind == "cuda":
                torch.cuda.synchronize()
                result.peak = torch.cuda.max_memory_allocated()
            elif self.kind == "rss":
                result.peak = self._status("VmHWM")
            else:
                profiler.__exit__(None, None, None)
                result.start, result.peak = allocator_peak(profiler)
            result.seconds = time.perf_counter() - t


def allocator_peak(profiler) -> tuple[int, int]:
    """(live bytes before the first allocation, peak live bytes) of the CPU allocator in a profile.

    Every allocation and free event carries the allocator's running total of the bytes it has seen
    allocated while profiling was on (tensors from before that are not in it, and their frees are not
    either): the peak of that total above its value before the first event is the block's added peak.
    """
    from torch._C._profiler import _EventType
    events, stack = [], list(profiler.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size, e.extra_fields.total_allocated))
    if not events:
        return 0, 0
    events.sort()
    start = events[0][2] - events[0][1]
    return start, max(start, max(total for _, _, total in events))


# ------------------------------------------------------------------------------------------------ setup
def build(args):
    """Model and tokenizer for --model, in fp32 on args.device."""
    torch.manual_seed(args.seed)
    if args.model == "smollm2":
        model, tok = models.load_smollm2()
        tok.pad_token = tok.pad_token or tok.eos_token
        return model.to(args.device).eval(), tok
    # tiny-wide: "</think>" in 8 byte tokens, never sampled whole, so every row runs the full budget;
    # qwen3-shape: one token, as in Qwen3 (a random model over 151,936 tokens samples it about never).
    tok = models.build_tiny_tokenizer(think_as_one_token=args.model == "qwen3-shape")
    if args.model == "tiny-wide":
        config = Qwen3Config(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True,
                             max_position_embeddings=32768)
    else:
        config = models.qwen3_0_6b_config()
    config.eos_token_id, config.pad_token_id, config.bos_token_id = tok.eos_token_id, tok.pad_token_id, None
    with torch.device(args.device):
        model = Qwen3ForCausalLM(config)
    return model.eval(), tok


def make_example(tok, prompt_tokens: int, answer_tokens: int) -> dict:
    """A FinQA-style question whose chat-formatted prompt is about prompt_tokens long, with a gold
    answer of about answer_tokens tokens (EOS included)."""
    ex = {"question": "What was the revenue growth?", "context": "", "answer": "", "aliases": []}
    overhead = len(prompt_ids(tok, ex, "finqa", "warm"))
    filler = tok(FILLER * (1 + prompt_tokens // 10), add_special_tokens=False).input_ids
    ex["context"] = tok.decode(filler[:max(1, prompt_tokens - overhead)])
    for digits in range(1, 64):
        ex["answer"] = "7" * digits
        if len(gold_ids(tok, ex["answer"])) >= answer_tokens:
            break
    return ex


def kv_dtypes(model):
    """Register a hook that records the dtypes of the cache the model is called with (during decoding)."""
    seen = {}

    def hook(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layers = getattr(cache, "layers", None)
        if layers and getattr(layers[0], "keys", None) is not None and layers[0].keys.numel():
            seen["keys"], seen["values"] = str(layers[0].keys.dtype), str(layers[0].values.dtype)
    # The generate path decodes with the model itself. The fast path's step runs a twin (compiled on CUDA: no hook
    # is traced into it): its cache is read from the kept buffers after the call (fast.decode.kv_cache_dtypes).
    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


# ------------------------------------------------------------------------------------------------ one step
def step(model, tok, tokens, optimizer, example, args, budget, meter=None):
    """One GARL step of train.py (q = 0.75), phase by phase; with a meter, each phase's peak and time.

    --decode fast keeps its buffers between calls (no release); the gradients are freed (set to None)
    right after the optimizer step, as train.py does: they exist in the gradient pass and the step only.
    """
    phases = {}
    block = meter.phase if meter else (lambda: contextlib.nullcontext(SimpleNamespace()))
    prompts = [prompt_ids(tok, example, "finqa", "warm")]
    with block() as m, train.precision_context(args.device, args.precision):
        generate, scoring = train.implementations(args.decode, args.logprobs)  # train.py's choice of paths
        groups = generate(model, prompts, args.M, tokens, budget)
    phases["generate"] = m
    flat = [s for g in groups for s in g]
    with block() as m, train.precision_context(args.device, args.precision):
        train.attach_gold_answers(groups, [example], tok)
        log_w = scoring.log_weights(model, flat, tokens, args.micro_batch)
        score_coef, path_coef = garl_coefficients(log_w.view(1, args.M).double(), 0.75)  # [1, M] each
    phases["weight pass"] = m
    with block() as m:
        train.gradient_pass(model, groups, score_coef, path_coef, tokens, args.micro_batch, args.precision,
                            sequence_logprobs=scoring.sequence_logprobs)
    phases["gradient pass"] = m
    with block() as m:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        optimizer.step()
    phases["optimizer step"] = m
    optimizer.zero_grad(set_to_none=True)
    return phases, {"generated": sum(len(s.z_ids) + len(s.forced_ids) for s in flat),
                    "sequence_tokens": max(len(s.ids) for s in flat)}


def kv_cache_bytes(kv_dtypes: dict) -> float | None:
    """Bytes per cached element, keys and values averaged, from kv_dtypes' record (None: not seen)."""
    sizes = {"torch.float32": 4, "torch.bfloat16": 2, "torch.float16": 2}
    return (sizes[kv_dtypes["keys"]] + sizes[kv_dtypes["values"]]) / 2 if kv_dtypes else None


def plan_for(config, tok, example, args, kv_dtypes) -> memory.Plan:
    """memory.py's estimate for the step measure() runs (one question, its prompt and gold answer), with the
    KV cache in the dtype the code under test keeps it (issue 10 moves it to the compute dtype)."""
    prompt = len(prompt_ids(tok, example, "finqa", "warm"))
    max_new = args.think_budget + len(rollout.SpecialTokens.of(tok).close_ids)
    return memory.estimate(config, M=args.M, gen_questions=1, prompt_tokens=prompt, max_new_tokens=max_new,
                           micro_batch=args.micro_batch, seq_tokens=prompt + max_new + len(gold_ids(tok, example["answer"])),
                           grad_ckpt=args.grad_ckpt, precision=args.precision, optimizer=args.optimizer,
                           device=args.device, kv_cache_bytes=kv_cache_bytes(kv_dtypes), decode=args.decode,
                           logprobs=args.logprobs, step_rows=args.M)  # one question per step


def measure(args, model=None, tok=None, warmup_budget: int | None = None) -> dict:
    """Estimate and measure one step for args; returns both, phase by phase (bytes).

    On CUDA one measured step (max_memory_allocated); on a CPU, args.measure picks "torch" (the CPU
    allocator's live bytes, through torch's profiler), "rss" (the peak resident set size) or "both"
    (two measured steps, one each: the profiler's own records would inflate the resident size).
    """
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if model is None:
        model, tok = build(args)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    tokens = rollout.SpecialTokens.of(tok)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.AdamW(params, lr=1e-6) if args.optimizer == "adamw" else torch.optim.SGD(params, lr=1e-6))
    example = make_example(tok, args.prompt_tokens, args.answer_tokens)
    torch.manual_seed(args.seed)
    # The warm-up step creates the gradients and the optimizer state and, with --decode fast, the twin and the
    # buffers at their full size (train.py sizes them once for the planned maximum and keeps them); at the
    # measured budget it also compiles the fast path's step, so that the measured step measures decoding.
    step(model, tok, tokens, optimizer, example, args,
         budget=warmup_budget or (args.think_budget if args.decode == "fast" else 4))
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    seen, handle = kv_dtypes(model)
    kinds = ["cuda"] if args.device == "cuda" else (["rss", "torch"] if args.measure == "both" else [args.measure])
    if "rss" in kinds and any(os.environ.get(k) != v for k, v in MMAP_ENV.items()):
        raise RuntimeError("resident-size measurements need glibc's mmap threshold fixed when the process starts: "
                           "run experiments/memory_check.py (it re-runs itself so), or set " +
                           " ".join(f"{k}={v}" for k, v in MMAP_ENV.items()))
    measured = {}
    for kind in kinds:
        measured[kind], counts = step(model, tok, tokens, optimizer, example, args, args.think_budget, PhasePeak(kind))
    handle.remove()
    compilations = torch._dynamo.utils.counters["stats"]["unique_graphs"] - compiled  # in the measured step
    if getattr(args, "decode", "generate") == "fast":
        from fast.decode import kv_cache_dtypes
        seen.update(kv_cache_dtypes(model) or {})  # the kept buffers, which stay allocated (train.py frees them at the end)

    prompt = len(prompt_ids(tok, example, "finqa", "warm"))
    plan = plan_for(model.config, tok, example, args, seen)
    rows = {}
    for name in plan.phases:
        if name not in measured[kinds[0]]:
            continue
        r = rows[name] = {"estimated_added": plan.phase_bytes(name) - plan.at_start(name),
                          "estimated_total": plan.phase_bytes(name)}
        for kind in kinds:
            m = measured[kind][name]
            r[f"{kind}_added"], r[f"{kind}_seconds"] = m.peak - m.start, m.seconds
            if kind == "cuda":
                r["cuda_total"] = m.peak
    return {"config": dict(vars(args)), "kinds": kinds, "prompt_tokens": prompt, "plan": plan, "phases": rows,
            "kv_dtypes": seen, "compilations": compilations, **counts}


def report(result) -> str:
    """A markdown table: estimate vs measurement per phase, in MiB."""
    kinds, names = result["kinds"], {"cuda": "CUDA allocated", "torch": "torch CPU allocated", "rss": "peak RSS"}
    head = "| phase | estimated added MiB |" + "".join(f" {names[k]} added MiB | ratio |" for k in kinds)
    if "cuda" in kinds:
        head += " estimated total MiB | CUDA max allocated MiB |"
    lines = [head + " seconds |", "|---|" + "---:|" * (head.count("|") - 1)]
    for name, r in result["phases"].items():
        est = r["estimated_added"]
        line = f"| {name} | {est / 2**20:.1f} |"
        for k in kinds:
            line += f" {r[f'{k}_added'] / 2**20:.1f} | {r[f'{k}_added'] / est if est else float('nan'):.2f} |"
        if "cuda" in kinds:
            line += f" {r['estimated_total'] / 2**20:.0f} | {r['cuda_total'] / 2**20:.0f} |"
        lines.append(line + f" {r[f'{kinds[-1]}_seconds']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu" and args.measure != "torch" and any(os.environ.get(k) != v for k, v in MMAP_ENV.items()):
        sys.stdout.flush()  # re-run with glibc's mmap threshold fixed (see the module docstring)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MMAP_ENV})
    result = measure(args)
    c = result["config"]
    print(f"memory check: {c['model']} on {c['device']}, {c['precision']}, grad ckpt {c['grad_ckpt']}, --decode "
          f"{c['decode']}, --logprobs {c['logprobs']}, M {c['M']}, "
          f"prompt {result['prompt_tokens']} tokens, think budget {c['think_budget']} ({result['generated']} tokens "
          f"generated), micro-batch {c['micro_batch']}; KV cache dtypes {result['kv_dtypes'] or 'not seen'}")
    print(report(result))
    if args.json:
        out = {k: v for k, v in result.items() if k != "plan"}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return result


if __name__ == "__main__":
    main()
