"""Where a training step's time and memory go: GRPO, GARL and PAFT phase by phase, and TRL's GRPOTrainer.

    python experiments/bench.py --model tiny                            # a smoke run, about 30 s
    python experiments/bench.py                                         # CPU: embedded SmolLM2, about 5 minutes
    python experiments/bench.py --model qwen3-shape                     # CUDA: Qwen3-0.6B's exact shape, random weights
    python experiments/bench.py --model smollm2 --only-decode           # decoding speed only: generate vs fast path

What is measured. One step of train.py's loop, with its own functions, for each estimator at the same
model, questions B, samples M, thinking budget and micro-batch, one untimed warm-up step first, then
--repeats steps (medians reported):
    generate    rollout.generate: M rationales per question ("</think>" forced at the budget); GRPO's
                rows also write up to --answer-tokens answer tokens; --decode picks its path (generate:
                Hugging Face's generate, the reference; fast: fast/decode.py), printed in the header
    weights     GARL/PAFT: log_weights, log w = log p(y*|x, z) for every sample, no gradient
    estimator   the coefficient arithmetic (garl/paft/grpo_coefficients), as timed by train.py
    gradient    train.gradient_pass: forward + backward over the sequences with a nonzero coefficient
    optimizer   clip the gradient norm, AdamW step
"Same rollouts" means the same prompts, M, thinking budget and answer length: GARL/PAFT teacher-force a
gold answer of --answer-tokens tokens, GRPO writes at most that many. GRPO's rewards are synthetic (1 for
odd-numbered samples) so that every group has a nonzero advantage and the gradient pass runs over all B*M
sequences, as it does in training when rewards differ; TRL gets the same rewards. We report the whole
step and the step without generation ("non-gen"), since rollouts dominate at the paper's budgets.

TRL: GRPOTrainer (beta 0, loss_type "grpo", one generation per optimizer step, so no old-logprob pass)
on a copy of the same model, with per_device_train_batch_size = --micro-batch and gradient accumulation
over the B*M completions; max_completion_length = budget + "</think>" + answer tokens, EOS banned for the
first budget + "</think>" tokens (min_new_tokens), as our thinking block bans it. Timed from the trainer's
on_step_begin to on_step_end callbacks, in the same process run as ours.

Memory: CUDA: torch.cuda.max_memory_allocated, reset at each phase. CPU: the process's resident set size
(/proc/self/statm), sampled every 2 ms by a thread; before each phase, freed memory is handed back to the
system (malloc_trim) so the baseline is honest. Both report the peak ABOVE the memory held when the step
(or phase) began: what the step adds on top of the model and optimizer state. Tensors that live less than
2 ms can be missed on CPU; big ones take longer than that to fill. CPU runs use one torch thread by
default (--threads): on a shared 2-core machine, two threads made timings swing 10x.

Also measured once: the peak memory of log-probabilities at Qwen3's vocabulary (151,936) with and
without chunking: a synthetic hidden-state tensor [--logprob-tokens, 1024] through a tied [151936, 1024]
output layer, forward and backward. Counted from the samples: prompt tokens computed per step with and
without sharing the prompt across samples (see prompt_tokens).

Decoding speed (decode_speed; alone with --only-decode): row-tokens per second (rows x decoding steps
per second) of each decoding path, named in every row: "generate" (rollout.generate's reference,
Hugging Face's generate), "fast" (fast/decode.py, eager) and "fast+compile" (its compiled step; on CUDA,
or with --decode-compile on), in the rationale mode at --M and --think-budget, against
the bandwidth bound: a step must read every weight once and the keys and values of every filled
position, so it takes at least (weight bytes + KV bytes) / memory bandwidth. Bandwidth: the datasheet
number for H100/H200 (HBM_BANDWIDTH), on a CPU a measured read of 512 MB. Writes DIR/bench.json and
prints the tables.
"""
import argparse
import contextlib
import copy
import ctypes
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library is the top-level folder

import torch
from transformers import Qwen3ForCausalLM

from fast import logprobs as fast_logprobs
import rollout
import train
from fast.decode import decode_fast, release
from garl import garl_coefficients
from grpo import grpo_coefficients
from paft import paft_coefficients
from models import build_tiny_model, build_tiny_tokenizer, describe, load_smollm2, qwen3_0_6b_config
from prompts import prompt_ids

ESTIMATORS = ["grpo", "garl", "paft"]
PHASES = ["generate", "weights", "estimator", "gradient", "optimizer"]
FILLER = ("The company reported revenue of 4,120 million dollars, up 7 percent, while operating costs rose "
          "to 3,310 million. The table lists each segment's sales, margins and capital spending by year. ")


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", choices=["tiny", "smollm2", "qwen3-shape"], default="qwen3-shape" if cuda else "smollm2",
      help="tiny (built in code), smollm2 (embedded, CPU default) or qwen3-shape (random weights, CUDA default)")
    a("--M", type=int, default=32 if cuda else 4, help="samples per question (paper: 32)")
    a("--prompts", type=int, default=1, help="questions B per step")
    a("--think-budget", type=int, default=1024 if cuda else 32, help="thinking tokens before '</think>' is forced")
    a("--answer-tokens", type=int, default=16 if cuda else 8, help="gold answer length (GARL/PAFT); GRPO's answer budget")
    a("--prompt-tokens", type=int, default=1024 if cuda else 128, help="prompt length in tokens (about)")
    a("--micro-batch", type=int, default=8 if cuda else 4, help="sequences per forward/backward")
    a("--repeats", type=int, default=3, help="timed steps per configuration, after one warm-up step")
    a("--q", type=float, default=0.75, help="Tsallis q for GARL and PAFT")
    a("--logprob-tokens", type=int, default=None, help="tokens in the chunked-log-prob memory check at Qwen3's "
      "vocabulary (0: skip it; default 4096 on CUDA, 1024 on a CPU)")
    a("--grad-ckpt", action=argparse.BooleanOptionalAction, default=cuda,
      help="gradient checkpointing for ours and TRL's (train.py's CUDA default: on)")
    a("--no-trl", action="store_true", help="skip TRL's GRPOTrainer")
    a("--only-decode", action="store_true",
      help="measure decoding speed only (no training steps, TRL or log-prob memory)")
    a("--decode", choices=["generate", "fast"], default="fast",
      help="decoding path of the training steps' rollouts: generate (Hugging Face's, the reference) or fast")
    a("--logprobs", choices=["plain", "fast"], default="fast",
      help="log-prob path of the training steps: plain (logprobs.py, the reference) or fast (fast/logprobs.py)")
    a("--decode-paths", default="generate,fast,fast+compile",
      help="decoding paths to time, comma-separated: generate (HF generate, the reference), fast (fast/decode.py, "
           "eager), fast+compile (also needs --decode-compile; at long budgets generate is slow: leave it out)")
    a("--decode-compile", choices=["auto", "on", "off"], default="auto",
      help="also time fast/decode.py with its compiled step (auto: on CUDA only; on a CPU compiling "
           "takes about a minute)")
    a("--bandwidth-gbs", type=float, default=None, help="device memory bandwidth in GB/s for the decoding bound "
      "(default: the datasheet number for H100/H200, a measured read bandwidth on a CPU)")
    a("--threads", type=int, default=0 if cuda else 1, help="CPU threads for torch (0: torch's default; CPU default "
      "1: on a shared 2-core machine a busy core stalls every thread of a parallel op, and timings swing 10x)")
    a("--seed", type=int, default=0, help="seed for the model (tiny, qwen3-shape) and the sampling")
    a("--out", default="runs/bench", help="directory for bench.json")
    args = p.parse_args(argv)
    args.device = "cuda" if cuda else "cpu"
    if args.logprob_tokens is None:
        args.logprob_tokens = 4096 if cuda else 1024
    if args.M < 2 or args.prompts * args.M % args.micro_batch:
        p.error("--M must be >= 2 and --prompts x --M a multiple of --micro-batch (TRL needs whole micro-batches)")
    return args


# ------------------------------------------------------------------------------------------------ measuring
class Memory:
    """Peak memory above a baseline, in bytes: CUDA allocator statistics, or sampled RSS on a CPU."""

    def __init__(self, device):
        self.cuda = device == "cuda"
        if not self.cuda:
            self.page = os.sysconf("SC_PAGE_SIZE")
            self.statm = os.open("/proc/self/statm", os.O_RDONLY)
            self.libc = ctypes.CDLL("libc.so.6")
            self.peak, self.running = 0, True
            threading.Thread(target=self._sample, daemon=True).start()

    def rss(self) -> int:
        return int(os.pread(self.statm, 100, 0).split()[1]) * self.page

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def now(self) -> int:
        """Memory in use now; resets the peak to it."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        self.libc.malloc_trim(0)  # give freed heap pages back, or they would hide the next phase's growth
        self.peak = self.rss()
        return self.peak

    def max(self) -> int:
        """Peak since the last now()."""
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return max(self.peak, self.rss())


class Step:
    """Times and peak memory of one step's phases: `with step.phase("gradient"): ...`."""

    def __init__(self, mem: Memory):
        self.mem, self.times, self.peaks = mem, {}, {}
        self.base = self.top = mem.now()

    @contextlib.contextmanager
    def phase(self, name):
        start = self.mem.now()
        t = time.perf_counter()
        yield
        peak = self.mem.max()  # synchronizes on CUDA before the clock stops
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        self.peaks[name] = max(self.peaks.get(name, 0), peak - start)
        self.top = max(self.top, peak)

    def result(self, **extra):
        times = {k: self.times.get(k, 0.0) for k in PHASES}
        return dict(times=times, step=sum(times.values()), nongen=sum(times.values()) - times["generate"],
                    peak_mb=(self.top - self.base) / 2**20, phase_peak_mb={k: v / 2**20 for k, v in self.peaks.items()},
                    **extra)


# ------------------------------------------------------------------------------------------------ setup
def build(args):
    """Model and tokenizer for --model; qwen3-shape is random weights of Qwen3-0.6B's exact shape."""
    torch.manual_seed(args.seed)
    if args.model == "smollm2":
        model, tok = load_smollm2()
        tok.pad_token = tok.pad_token or tok.eos_token
    else:
        tok = build_tiny_tokenizer()  # qwen3-shape: the byte tokenizer, ids drawn from its 258; cost is per token
        if args.model == "tiny":
            model = build_tiny_model(tok, seed=args.seed)
        else:
            config = qwen3_0_6b_config()
            config.eos_token_id, config.pad_token_id = tok.eos_token_id, tok.pad_token_id
            with torch.device(args.device):  # initialize on the GPU directly: 0.6B parameters
                model = Qwen3ForCausalLM(config)
    return model.to(args.device).eval(), tok


def make_examples(tok, args):
    """B questions whose chat-formatted prompts are about --prompt-tokens long, and a gold answer of
    exactly --answer-tokens tokens (EOS included) after the gold prefix."""
    filler = tok(FILLER * (1 + args.prompt_tokens // 20), add_special_tokens=False).input_ids
    examples = []
    for b in range(args.prompts):
        ex = {"question": f"What was revenue growth in year {b}?", "context": "", "answer": "", "aliases": []}
        overhead = len(prompt_ids(tok, ex, "finqa", "warm"))
        ex["context"] = tok.decode(filler[b:b + max(1, args.prompt_tokens - overhead)])
        digits = tok("7" * 64, add_special_tokens=False).input_ids
        gold_prefix = len(tok("\n\n", add_special_tokens=False).input_ids)
        ex["answer"] = tok.decode(digits[:max(1, args.answer_tokens - 1 - gold_prefix)])
        examples.append(ex)
    prompts = [prompt_ids(tok, ex, "finqa", "warm") for ex in examples]
    return examples, prompts


def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ our step
def our_step(est, model, tok, tokens, optimizer, examples, prompts, args, mem):
    """One train.py step for estimator `est`, phase by phase, with train.py's own functions."""
    precision = "bf16" if args.device == "cuda" else "fp32"
    step = Step(mem)
    generate, scoring = train.implementations(args.decode, args.logprobs)  # train.py's choice of paths
    with step.phase("generate"), train.precision_context(args.device, precision):
        groups = generate(model, prompts, args.M, tokens, args.think_budget, args.answer_tokens if est == "grpo" else None)
    if est == "grpo":
        reward = torch.tensor([[float(m % 2) for m in range(args.M)] for _ in groups])  # [B, M] synthetic
        lengths = torch.tensor([[len(s.z_ids) + len(s.y_ids) for s in g] for g in groups])  # [B, M]
        with step.phase("estimator"):
            score_coef = path_coef = grpo_coefficients(reward, lengths)  # [B, M]
    else:
        with step.phase("weights"), train.precision_context(args.device, precision):
            train.attach_gold_answers(groups, examples, tok)
            flat = [s for g in groups for s in g]
            log_w = scoring.log_weights(model, flat, tokens, args.micro_batch)
            log_w = log_w.view(len(groups), args.M).double()  # [B, M]
            sync(args)
        with step.phase("estimator"):
            if est == "garl":
                score_coef, path_coef = garl_coefficients(log_w, args.q)  # [B, M] each
            else:
                score_coef = path_coef = paft_coefficients(log_w, args.q)  # [B, M]
    with step.phase("gradient"):
        optimizer.zero_grad(set_to_none=True)
        train.gradient_pass(model, groups, score_coef, path_coef, tokens, args.micro_batch, precision,
                            sequence_logprobs=scoring.sequence_logprobs)
        sync(args)
    with step.phase("optimizer"):
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    flat = [s for g in groups for s in g]
    trained = sum(len(s.z_ids) + len(s.forced_ids) + len(s.y_ids) for s in flat)  # tokens after the prompts
    grad_seqs = [s for (b, g) in enumerate(groups) for (m, s) in enumerate(g)
                 if score_coef[b, m] != 0 or path_coef[b, m] != 0]
    return step.result(
        generated=sum(len(s.z_ids) + len(s.forced_ids) + (len(s.y_ids) if est == "grpo" else 0) for s in flat),
        trained_tokens=trained, grad_seqs=len(grad_seqs), grad_tokens=sum(len(s.ids) for s in grad_seqs),
        prompt_tokens=prompt_tokens(groups, score_coef, path_coef, est, args.micro_batch))


def prompt_tokens(groups, score_coef, path_coef, est, micro_batch) -> dict:
    """Prompt tokens each phase runs through the model, plain (every sample its own prompt) and shared,
    counted from the samples (both paths are exact, so this is bookkeeping, not a measurement):
        generate   the fast path (--decode fast) prefills each prompt once for its M rows; Hugging Face's
                   generate (--decode generate) runs it once per row, the plain count
        weights    fast/logprobs.log_weights runs each prompt once for the whole weight pass (--logprobs fast)
        gradient   train.gradient_pass's micro-batches (a question's sequences together, longest first,
                   zero-coefficient ones skipped); sequence_logprobs runs a prompt once per micro-batch
                   where several of its samples meet (it shares under non-reentrant checkpointing only)
    """
    P = [len(g[0].prompt_ids) for g in groups]  # [B]
    items = [(b, len(s.prompt_ids)) for b, g in enumerate(groups)
             for m, s in sorted(enumerate(g), key=lambda ms: -len(ms[1].ids))
             if score_coef[b, m] != 0 or path_coef[b, m] != 0]
    shared_grad = 0
    for i in range(0, len(items), micro_batch):
        mb = items[i:i + micro_batch]
        distinct = dict(mb)  # prompt -> length
        shared_grad += sum(distinct.values()) if len(distinct) < len(mb) else sum(n for _, n in mb)
    M = len(groups[0])
    weights = est != "grpo"
    return {"plain": {"generate": M * sum(P), "weights": M * sum(P) if weights else 0,
                      "gradient": sum(n for _, n in items)},
            "shared": {"generate": sum(P), "weights": sum(P) if weights else 0, "gradient": shared_grad}}


# ------------------------------------------------------------------------------------------------ TRL's step
def trl_steps(model, tok, tokens, prompts, args, mem):
    """args.repeats + 1 GRPOTrainer steps on a copy of the model; per-step results, warm-up dropped."""
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames, raised inside TRL
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    texts = [tok.decode(p) for p in prompts]
    steps = args.repeats + 1
    dataset = Dataset.from_dict({"prompt": [t for _ in range(steps) for t in texts]})
    close = len(tokens.close_ids)
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.prompts * args.M // args.micro_batch, num_generations=args.M,
        max_completion_length=args.think_budget + close + args.answer_tokens, max_steps=steps,
        generation_kwargs={"min_new_tokens": args.think_budget + close}, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, loss_type="grpo", learning_rate=1e-6, lr_scheduler_type="constant", max_grad_norm=1.0,
        shuffle_dataset=False, bf16=args.device == "cuda", use_cpu=args.device == "cpu", report_to=[],
        gradient_checkpointing=args.grad_ckpt, save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        seed=args.seed, dataloader_num_workers=0)

    def reward(completions, **kwargs):  # the same synthetic rewards as our GRPO: 1 for odd-numbered samples
        return [float(i % 2) for i in range(len(completions))]

    trainer = GRPOTrainer(model=copy.deepcopy(model), reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=tok)
    results, current = [], {}
    generate_and_score = trainer._generate_and_score_completions

    def timed_generation(inputs):  # TRL's rollout phase: generation, rewards, advantages
        with current["step"].phase("generate"):
            out = generate_and_score(inputs)
        current["generated"] = int(out["completion_mask"].sum())
        return out
    trainer._generate_and_score_completions = timed_generation

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            current["step"], current["t"] = Step(mem), time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(args)
            step = current["step"]
            step.times["gradient"] = time.perf_counter() - current["t"] - step.times["generate"]  # the rest
            step.top = max(step.top, mem.max())
            results.append(step.result(generated=current["generated"], trained_tokens=current["generated"]))
    trainer.add_callback(Clock())
    trainer.train()
    return results[1:]


# ------------------------------------------------------------------------------------------------ log-prob memory
def logprob_memory(args, mem, vocab=151936, hidden=1024):
    """Peak memory of log p(target) over T tokens at Qwen3's vocabulary, forward + backward:
    the full [T, V] logits versus fast_logprobs.chunked_token_logprobs."""
    T = args.logprob_tokens
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=args.device)  # the tied lm_head's shape
    h = torch.randn(T, hidden, device=args.device, requires_grad=True)  # [T, H] synthetic hidden states
    targets = torch.randint(vocab, (T,), device=args.device)  # [T]
    head.weight.grad = torch.zeros_like(head.weight)  # allocated once in training too: not part of the peak
    out = {}
    for name in ["full", "chunked"]:
        step = Step(mem)
        with step.phase(name):
            if name == "full":
                lp = torch.log_softmax(head(h).float(), -1).gather(1, targets[:, None])  # [T, 1] via [T, V]
            else:
                lp = fast_logprobs.chunked_token_logprobs(h, targets, head)  # [T], one chunk of [c, V] at a time
            lp.sum().backward()
        out[f"{name}_peak_mb"], out[f"{name}_s"] = step.peaks[name] / 2**20, step.times[name]
        grad, h.grad = h.grad.clone(), None
        out.setdefault("grads", []).append(grad)
    out["max_grad_diff"] = (out["grads"][0] - out["grads"][1]).abs().max().item()  # chunking is exact
    del out["grads"]
    out.update(tokens=T, vocab=vocab, full_logits_mb=T * vocab * 4 / 2**20)
    return out


# ------------------------------------------------------------------------------------------------ decoding speed
# Memory bandwidth, bytes/s, from NVIDIA's datasheets ("H100 Tensor Core GPU" datasheet: SXM 3.35 TB/s, PCIe
# 2 TB/s, NVL 3.9 TB/s; "H200 Tensor Core GPU" product page: 4.8 TB/s). Matched against the CUDA device name,
# most specific first.
HBM_BANDWIDTH = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12)]


def bandwidth(args) -> tuple[float | None, str]:
    """Bytes/s the decoding bound divides by, and where the number comes from."""
    if args.bandwidth_gbs:
        return args.bandwidth_gbs * 1e9, "--bandwidth-gbs"
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        for key, bw in HBM_BANDWIDTH:
            if key in name:
                return bw, f"{name}: datasheet"
        return None, f"{name}: unknown, pass --bandwidth-gbs"
    # CPU: time reading a 512 MB tensor (a sum), with the benchmark's thread count; median of 5.
    x = torch.ones(2**27)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(times), f"measured: reading 512 MB, {torch.get_num_threads()} thread(s)"


def decode_bytes(model, dtype, R: int, prompt_len: float, steps: int) -> tuple[float, float]:
    """(bytes read by a whole decoding call, of which weights) for R rows: the lower bound of the work.

    Each step reads every linear layer's weight in the compute dtype (bf16 under autocast), the norms,
    R rows of the embedding, and the keys and values of every filled position (the prompt and the tokens
    so far, prompt_len = the mean real prompt length) in the compute dtype.
    """
    size = lambda t, d=None: t.numel() * (d or t.dtype).itemsize
    embed = model.get_input_embeddings().weight
    linear_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
    weights = sum(size(p, dtype) for p in model.parameters() if id(p) in linear_params)
    weights += sum(size(p) for p in model.parameters() if id(p) not in linear_params and p is not embed)
    weights += R * embed.shape[1] * embed.dtype.itemsize
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype.itemsize
    positions = sum(prompt_len + t + 1 for t in range(steps))  # filled positions read, summed over the steps
    return steps * weights + R * positions * kv_token, steps * weights


def decode_speed(model, tok, prompts, args) -> dict:
    """Row-tokens per second of each decoding path: "generate" (rollout.generate's reference, Hugging Face's
    generate), "fast" (fast/decode.py, eager), "fast+compile" (its compiled step), in the rationale mode (no
    answer), at --M, --think-budget and the bench's prompts, against the bandwidth bound. Each path: one
    warm-up call (compilation happens there), then --repeats calls with seeds shared across paths, so that
    the paths' tokens can be compared. fp32: the same tokens. bf16: the paths round differently, and one
    flipped token changes the rest of its row, so on a GPU "same tokens" can be below 100% without a bug
    (tests/test_fast_decode.py checks exactness in fp32)."""
    precision = "bf16" if args.device == "cuda" else "fp32"
    tokens = rollout.SpecialTokens.of(tok)
    compile = args.decode_compile == "on" or (args.decode_compile == "auto" and args.device == "cuda")
    budget = args.think_budget

    def fast_path(compiled):
        def run():
            decoded = decode_fast(model, prompts, args.M, tokens, budget, compile=compiled)
            return rollout.to_samples(prompts, args.M, decoded.tokens, tokens, budget, None)
        return run
    paths = {"generate": lambda: rollout.generate(model, prompts, args.M, tokens, budget),
             "fast": fast_path(False), "fast+compile": fast_path(True)}
    wanted = args.decode_paths.split(",")
    paths = {k: v for k, v in paths.items() if k in wanted and (k != "fast+compile" or compile)}
    R = len(prompts) * args.M
    out, seen = {}, {}
    with train.precision_context(args.device, precision):
        dtype = torch.get_autocast_dtype(args.device) if precision == "bf16" else next(model.parameters()).dtype
        for name, run in paths.items():
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            run()  # warm-up
            sync(args)
            warmup = time.perf_counter() - t
            times, drawn = [], []
            for r in range(args.repeats):
                torch.manual_seed(args.seed + 1 + r)
                t = time.perf_counter()
                groups = run()
                sync(args)
                times.append(time.perf_counter() - t)
                drawn.append([s.ids for g in groups for s in g])
            steps = max(len(s.z_ids) + len(s.forced_ids) for g in groups for s in g)  # decoding steps of the call
            seen[name] = drawn
            same = (sum(a == b for a, b in zip(drawn, seen["generate"])) / len(drawn)  # calls, same seeds
                    if "generate" in seen else None)
            out[name] = {"s": statistics.median(times), "warmup_s": warmup, "steps": steps,
                         "row_tokens_per_s": R * steps / statistics.median(times),
                         "ms_per_step": 1e3 * statistics.median(times) / steps, "same_tokens_as_generate": same}
        release(model)  # the fast path's buffers: not part of the training step's memory
    bw, source = bandwidth(args)
    total, weights = decode_bytes(model, dtype, R, statistics.mean(map(len, prompts)), steps)
    bound = {"bandwidth_gbs": bw and bw / 1e9, "source": source, "rows": R, "steps": steps,
             "mb_per_step": total / steps / 2**20, "weights_mb_per_step": weights / steps / 2**20,
             "row_tokens_per_s": bw and R * steps / (total / bw), "dtype": str(dtype)}
    for v in out.values():
        v["fraction_of_bound"] = bw and v["row_tokens_per_s"] / bound["row_tokens_per_s"]
    return {"paths": out, "bound": bound}


PATH_NAMES = {"generate": "generate (HF generate, reference)", "fast": "fast (fast/decode.py, eager)",
              "fast+compile": "fast+compile (fast/decode.py, compiled step)"}


def decode_table(decode) -> str:
    b = decode["bound"]
    bw = f"{b['bandwidth_gbs']:.0f} GB/s ({b['source']})" if b["bandwidth_gbs"] else b["source"]
    lines = [f"decoding: {b['rows']} rows x {b['steps']} steps, {b['dtype']}; bound: {b['mb_per_step']:.1f} MB "
             f"read per step ({b['weights_mb_per_step']:.1f} MB of weights) at {bw}",
             "| decode path | row-tokens/s | ms/step | fraction of bound | warm-up s | same tokens as generate |",
             "|---|---|---|---|---|---|"]
    for name, p in decode["paths"].items():
        frac = f"{p['fraction_of_bound']:.1%}" if p["fraction_of_bound"] else "-"
        same = "-" if p["same_tokens_as_generate"] is None else f"{p['same_tokens_as_generate']:.0%}"
        lines.append(f"| {PATH_NAMES.get(name, name)} | {p['row_tokens_per_s']:.1f} | {p['ms_per_step']:.2f} | {frac} | "
                     f"{p['warmup_s']:.1f} | {same} |")
    if b["row_tokens_per_s"]:
        ms = 1e3 * b["rows"] / b["row_tokens_per_s"]
        lines.append(f"| bandwidth bound | {b['row_tokens_per_s']:.1f} | {ms:.2f} | 100% | | |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ report
def median(rows, key):
    return statistics.median(key(r) for r in rows)


def summarize(runs):
    """Median over repeats of every number the table shows."""
    out = {}
    for name, rows in runs.items():
        out[name] = {"step_s": median(rows, lambda r: r["step"]), "nongen_s": median(rows, lambda r: r["nongen"]),
                     "peak_mb": median(rows, lambda r: r["peak_mb"]),
                     "tokens_per_s": median(rows, lambda r: r["trained_tokens"] / r["step"]),
                     "generated": median(rows, lambda r: r["generated"]),
                     **{f"{k}_s": median(rows, lambda r, k=k: r["times"][k]) for k in PHASES}}
        out[name]["estimator_frac"] = out[name]["estimator_s"] / out[name]["step_s"]
    return out


def table(summary):
    cols = ["step_s", "nongen_s"] + [f"{k}_s" for k in PHASES] + ["estimator_frac", "tokens_per_s", "peak_mb"]
    lines = ["| run | " + " | ".join(c.replace("_s", " s").replace("_", " ") for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for name, s in summary.items():
        cells = [f"{s[c]:.2%}" if c == "estimator_frac" else f"{s[c]:.3g}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(summary, runs, logprob):
    s, t = summary, {}
    t["estimator under 1% of step"] = max(s[e]["estimator_frac"] for e in ESTIMATORS) < 0.01
    for key in ["step_s", "nongen_s"]:
        t[f"garl/grpo {key}"] = s["garl"][key] / s["grpo"][key]
        t[f"paft/garl {key}"] = s["paft"][key] / s["garl"][key]
    if "trl" in s:
        t["grpo/trl step_s"] = s["grpo"]["step_s"] / s["trl"]["step_s"]
        t["grpo/trl nongen_s"] = s["grpo"]["nongen_s"] / s["trl"]["nongen_s"]
        t["grpo/trl peak_mb"] = s["grpo"]["peak_mb"] / max(s["trl"]["peak_mb"], 1e-9)
    for e in ESTIMATORS:
        t[f"{e} prompt tokens per step (plain -> shared)"] = {
            k: (runs[e][-1]["prompt_tokens"]["plain"][k], runs[e][-1]["prompt_tokens"]["shared"][k])
            for k in ["generate", "weights", "gradient"]}
    if logprob:
        t["logprob peak MB (full -> chunked)"] = (round(logprob["full_peak_mb"]), round(logprob["chunked_peak_mb"]))
    return t


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    mem = Memory(args.device)
    model, tok = build(args)
    tokens = rollout.SpecialTokens.of(tok)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()  # as train.py does; TRL's copy inherits it
    examples, prompts = make_examples(tok, args)
    print(f"bench: {args.model} -> {describe(model)} on {args.device}; B={args.prompts} M={args.M} "
          f"prompt={[len(p) for p in prompts]} tokens, think budget {args.think_budget}, answer {args.answer_tokens}, "
          f"micro-batch {args.micro_batch}, {args.repeats} repeats after a warm-up; training rollouts decode with "
          f"--decode {args.decode}, log-probs with --logprobs {args.logprobs}", flush=True)
    if args.only_decode:
        decode = decode_speed(model, tok, prompts, args)
        result = {"config": vars(args), "model": describe(model), "decode": decode}
        (out / "bench.json").write_text(json.dumps(result, indent=2))
        print(decode_table(decode))
        print(f"wrote {out / 'bench.json'}")
        mem.running = False
        return result
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    runs = {e: [] for e in ESTIMATORS}
    torch.manual_seed(args.seed)
    for r in range(args.repeats + 1):  # estimators interleaved, so that machine noise hits them alike
        for est in ESTIMATORS:
            result = our_step(est, model, tok, tokens, optimizer, examples, prompts, args, mem)
            if r > 0:
                runs[est].append(result)
            print(f"  step {r} {est}: {result['step']:.2f} s", flush=True)
    if not args.no_trl:
        try:
            import trl
            runs["trl"] = trl_steps(model, tok, tokens, prompts, args, mem)
            print(f"  trl {trl.__version__}: " + ", ".join(f"{r['step']:.2f} s" for r in runs["trl"]), flush=True)
        except ImportError:
            print("  TRL not importable: skipping the TRL column (pip install --no-deps trl, for the benchmark only)")
    logprob = logprob_memory(args, mem) if args.logprob_tokens > 0 else None
    decode = decode_speed(model, tok, prompts, args)
    summary = summarize(runs)
    result = {"config": vars(args), "model": describe(model), "summary": summary,
              "targets": targets(summary, runs, logprob), "logprob_memory": logprob, "decode": decode, "runs": runs}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    print(table(summary))
    print(decode_table(decode))
    for k, v in result["targets"].items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"wrote {out / 'bench.json'}")
    mem.running = False
    return result


if __name__ == "__main__":
    main()
