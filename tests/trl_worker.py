"""Helpers for tests/test_trl.py, and its two-process run (one step of GARLTrainer with fixed rollouts):

    torchrun --nproc_per_node 2 tests/trl_worker.py OUT_DIR

Each process runs one optimizer step twice, on the same fixed rollouts: with GARLTrainer as it is
("gather") and with the negative control LocalCoefficients ("local": each process estimates from its own
rows, no gather). The step has 3 questions x M=4 rows, 6 rows per process, so the middle question of the
sampler's order has 2 rows on each process. Each process saves OUT_DIR/{gather,local}_rank{r}.pt:
the gradient just before the optimizer step (after DDP's all-reduce) and the rows it served.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import models  # noqa: E402
from garl import garl_coefficients, garl_loss  # noqa: E402
from logprobs import sequence_logprobs  # noqa: E402
from paft import paft_loss  # noqa: E402
from prompts import build_prompt, gold_ids, prompt_ids  # noqa: E402
from related import related_coefficients  # noqa: E402
from rollout import Sample, SpecialTokens  # noqa: E402
from scale.trl_garl import GARLConfig, GARLTrainer  # noqa: E402

M = 4
TASK, START = "hotpotqa", "cold"  # the cold-start prompt: a few dozen tokens, a fast test
# Short answers keep w = p(y*|x,z) of a random tiny model around 1e-9, not 1e-30: coefficients well inside fp32.
EXAMPLES = [
    {"id": "a", "question": "Which band?", "context": "Rush: a band.", "answer": "7", "aliases": []},
    {"id": "b", "question": "How many albums did the band record?", "context": "Rush: a Canadian band.",
     "answer": "42", "aliases": []},
    {"id": "c", "question": "Who?", "context": "X.", "answer": "Rush", "aliases": []},
]


def tiny(one_token_close=True, close_bias=0.0, eos_bias=0.0):
    """Tiny model + tokenizer (models.py); optional output-layer biases towards "</think>" and EOS."""
    tok = models.build_tiny_tokenizer(one_token_close)
    model = models.build_tiny_model(tok)
    if close_bias or eos_bias:
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.data.copy_(model.lm_head.weight.data)
        head.bias.data.zero_()
        if close_bias:
            head.bias.data[tok.convert_tokens_to_ids("</think>")] = close_bias
        head.bias.data[tok.eos_token_id] = eos_bias
        model.lm_head = head
        model.config.tie_word_embeddings = False
    return model, tok


def dataset(tok, examples):
    return Dataset.from_list([{"prompt": build_prompt(tok, ex, TASK, START), "answer": ex["answer"]}
                              for ex in examples])


def config(out, per_device, accumulation, estimator="garl", q=0.75, steps=1, budget=8, **kw) -> GARLConfig:
    """One optimizer step of per_device x accumulation rows per process; no clipping (the raw gradient)."""
    settings = dict(output_dir=str(out), estimator=estimator, q=q, num_generations=M, max_completion_length=budget,
                    per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
                    max_steps=steps, max_grad_norm=0.0, learning_rate=1e-3, seed=0, use_cpu=True, bf16=False,
                    activation_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1,
                    disable_tqdm=True)
    return GARLConfig(**{**settings, **kw})


def fixed_rollouts(tok, examples, seed=0) -> dict[tuple, list[Sample]]:
    """M hand-made rationales per question, keyed by prompt ids: random byte tokens of varied lengths, even m
    closed naturally (z ends with "</think>"), odd m closed by forced "</think>" tokens."""
    tokens = SpecialTokens.of(tok)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for ex in examples:
        p = prompt_ids(tok, ex, TASK, START)
        rows = []
        for m in range(M):
            z = torch.randint(0, 256, (2 + int(torch.randint(0, 5, (1,), generator=g)),), generator=g).tolist()
            rows.append(Sample(p, z + tokens.close_ids, []) if m % 2 == 0 else Sample(p, z, list(tokens.close_ids)))
        out[tuple(p)] = rows
    return out


class FixedRollouts(GARLTrainer):
    """GARLTrainer whose rollouts are fixed: the row at global position i of the step gets rationale i % M of its
    question. Records the (prompt key, m) of every row it served, in its process's order."""
    fixed: dict = {}

    def _sample_rationales(self, prompt_ids):
        first = self.accelerator.process_index * len(prompt_ids)  # TRL slices the step's rows by process
        self.served = getattr(self, "served", [])
        out = []
        for i, p in enumerate(prompt_ids):
            m = (first + i) % self.num_generations
            s = self.fixed[tuple(p)][m]
            self.served.append((tuple(p), m))
            out.append(Sample(list(s.prompt_ids), list(s.z_ids), list(s.forced_ids)))
        return out


class LocalCoefficients(FixedRollouts):
    """Negative control: no gather. Each process estimates from its own rows, so a question split across two
    processes is estimated twice from two partial groups (the bug the gather prevents)."""

    def _step_coefficients(self, log_w, prompt_ids):
        q = self.current_q()
        score, path = torch.zeros_like(log_w), torch.zeros_like(log_w)
        i = 0
        while i < len(prompt_ids):
            n = next((j for j in range(i, len(prompt_ids)) if prompt_ids[j] != prompt_ids[i]), len(prompt_ids)) - i
            s, p = garl_coefficients(log_w[i:i + n].double(), q)
            score[i:i + n], path[i:i + n] = s.float(), p.float()
            i += n
        return score, path, {}


class GradientBeforeStep(TrainerCallback):
    """Keeps the flat parameter gradient just before each optimizer step (after accumulation and all-reduce)."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(torch.cat([p.grad.detach().flatten().clone() for p in model.parameters()]))


def run_step(trainer_cls, model, tok, cfg, examples, rollouts):
    """One optimizer step of trainer_cls on fixed rollouts: (flat gradient, trainer)."""
    grads = GradientBeforeStep()
    trainer = trainer_cls(model, args=cfg, train_dataset=dataset(tok, examples), processing_class=tok,
                          callbacks=[grads])
    trainer.fixed = rollouts
    trainer.train()
    return grads.grads[0], trainer


def reference_gradient(tok, rollouts, question_order, estimator="garl", q=0.75, generator=None):
    """The autograd gradient of garl_loss / paft_loss (LaTRO, GRPO-soft: train.py's step 3 and loss,
    related_coefficients on log w and -(1/B) sum(score_coef logp_z + path_coef logp_y)) on the same rows, with
    the project's own log-probs (logprobs.sequence_logprobs: EOS out of the rationale tokens' softmax, forced
    tokens not counted), on a freshly built tiny model (the same weights: build_tiny_model is seeded)."""
    model = models.build_tiny_model(tok)
    tokens = SpecialTokens.of(tok, model.generation_config)
    answers = {tuple(prompt_ids(tok, ex, TASK, START)): ex["answer"] for ex in EXAMPLES}
    rows = [Sample(s.prompt_ids, s.z_ids, s.forced_ids, gold_ids(tok, answers[key]))
            for key in question_order for s in rollouts[key]]
    logp_z, logp_y = sequence_logprobs(model, rows, tokens)  # [B*M] each
    B = len(question_order)
    logp_z, logp_y = logp_z.view(B, M), logp_y.view(B, M)  # [B, M] each
    if estimator == "garl":
        loss = garl_loss(logp_z, logp_y, q)
    elif estimator == "paft":
        loss = paft_loss(logp_z, logp_y, q, generator=generator)
    else:  # train.py: log w in fp64, then train.gradient_pass's loss
        score_coef, path_coef = related_coefficients(estimator, logp_y.detach().double())  # [B, M] each
        loss = -(score_coef.float() * logp_z + path_coef.float() * logp_y).sum() / B
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def relative_error(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def main(out_dir: str):
    out = Path(out_dir)
    _, tok = tiny()
    rollouts = fixed_rollouts(tok, EXAMPLES)
    for name, cls in [("gather", FixedRollouts), ("local", LocalCoefficients)]:
        model = models.build_tiny_model(tok)
        # 3 questions x 4 rows = 12 rows, 6 per process in 2 micro-batches of 3: the sampler's middle question
        # has 2 rows on each process.
        grad, trainer = run_step(cls, model, tok, config(out / name, per_device=3, accumulation=2), EXAMPLES, rollouts)
        torch.save({"grad": grad, "served": trainer.served, "world": trainer.accelerator.num_processes},
                   out / f"{name}_rank{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
