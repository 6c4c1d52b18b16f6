"""GARL and PAFT (and LaTRO, GRPO-soft) inside TRL's GRPOTrainer (trl_garl.py), checked against our own
estimators, on CPU.

Needs TRL (pip install -r requirements-trl.txt). vLLM cannot run on CPU: its rationale cutting and sampling
options are tested here, the vLLM engine itself is not.
"""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import trl
except ImportError as e:  # loud, not skipped: CI must install requirements-trl.txt
    raise ImportError("tests/test_trl.py needs TRL: pip install -r requirements-trl.txt") from e

import trl_worker as w
from prompts import gold_ids, prompt_ids, user_message
from rollout import Sample, SpecialTokens, generate
from scale.trl_garl import ESTIMATORS, GARLTrainer, rationale_from_generated, vllm_sampling_kwargs

ROOT = Path(__file__).resolve().parents[1]
TWO = w.EXAMPLES[:2]  # B = 2 questions, M = 4: one step is 8 rows


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one torch thread is faster, and on a shared 2-core machine two threads made a step 10x
    slower (thread contention). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- 1. equals our estimators
@pytest.fixture(scope="module")
def rollouts():
    _, tok = w.tiny()
    return tok, w.fixed_rollouts(tok, TWO)


def one_step(tmp_path, tok, rollouts, per_device, accumulation, estimator="garl"):
    cfg = w.config(tmp_path / f"{estimator}-{per_device}x{accumulation}", per_device, accumulation, estimator)
    return w.run_step(w.FixedRollouts, w.models.build_tiny_model(tok), tok, cfg, TWO, rollouts)


def questions_in_step_order(trainer):
    """The questions of the step in the order of the trainer's global [B, M] log w (rows come M at a time)."""
    served = trainer.served
    assert [m for _, m in served] == list(range(w.M)) * (len(served) // w.M)  # m = 0..M-1 within each question
    return [key for key, _ in served[::w.M]]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_step_equals_our_estimator(tmp_path, rollouts, estimator):
    """The gradient of one GARLTrainer step is the autograd gradient of garl_loss / paft_loss (same PAFT draws),
    or of train.py's loss with related.py's coefficients (LaTRO, GRPO-soft); the step logs train.py's monitors."""
    tok, fixed = rollouts
    grad, trainer = one_step(tmp_path, tok, fixed, per_device=8, accumulation=1, estimator=estimator)
    order = questions_in_step_order(trainer)
    generator = trainer.paft_generator(0) if estimator == "paft" else None
    reference = w.reference_gradient(tok, fixed, order, estimator, q=0.75, generator=generator)
    # GRPO-soft's coefficients are functions of the differences of log w between rationales (0.02-0.09 nats
    # here), and TRL's log-probs agree with logprobs.py's on log w to one fp32 ulp (2e-6 at log w ~ -22): its
    # gradient agrees to 3e-5 (3e-7 from the trainer's own log w). The others agree to 6e-7.
    bound = 1e-4 if estimator == "grpo-soft" else 1e-5
    assert w.relative_error(grad, reference) <= bound
    logged = next(line for line in trainer.state.log_history if "w_bar_mean" in line)
    assert ("max_amplified_advantage" in logged) == (estimator == "garl")  # a GARL quantity, as in train.monitor
    if estimator == "paft":  # PAFT's draws matter: another generator gives another gradient (the test can fail)
        other = w.reference_gradient(tok, fixed, order, "paft", q=0.75, generator=torch.Generator().manual_seed(12345))
        assert w.relative_error(grad, other) > 1e-2


# ------------------------------------------------------------------------------------------------ 2. micro-batches
def test_gradient_does_not_depend_on_micro_batch_or_accumulation(tmp_path, rollouts):
    tok, fixed = rollouts
    grads = [one_step(tmp_path, tok, fixed, per_device, accumulation)[0]
             for per_device, accumulation in [(4, 2), (1, 8)]]  # (8, 1): the test above
    reference = w.reference_gradient(tok, fixed, list(fixed))
    for grad in grads:
        assert w.relative_error(grad, reference) <= 1e-5


# ------------------------------------------------------------------------------------------------ 3. two processes
def test_two_processes_give_the_one_process_gradient(tmp_path):
    """torchrun, 2 CPU processes (gloo): one question's rows are split across them. With the gather the gradient
    is the one-process gradient; the negative control (no gather) gives another one."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "trl_worker.py"), str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]

    _, tok = w.tiny()
    fixed = w.fixed_rollouts(tok, w.EXAMPLES)
    reference = w.reference_gradient(tok, fixed, list(fixed))  # one process, all 3 questions
    for name in ["gather", "local"]:
        ranks = [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in range(2)]
        assert all(r["world"] == 2 for r in ranks)
        split = {key for key, _ in ranks[0]["served"]} & {key for key, _ in ranks[1]["served"]}
        assert len(split) == 1  # one question has rows on both processes
        assert torch.equal(ranks[0]["grad"], ranks[1]["grad"])  # DDP averaged the gradients
        error = w.relative_error(ranks[0]["grad"], reference)
        if name == "gather":
            assert error <= 1e-5
        else:
            assert error > 1e-2, "the negative control must change the gradient, or the test cannot fail"


# ------------------------------------------------------------------------------------------------ 4. real generation
class Recording(GARLTrainer):
    """GARLTrainer keeping each step's rows (what _generate_and_score_completions hands to the loss)."""

    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        self.batches = getattr(self, "batches", []) + [{k: v.clone() for k, v in batch.items()}]
        return batch


@pytest.mark.parametrize("one_token_close", [True, False])
def test_real_generation_steps(tmp_path, one_token_close):
    """A few steps with rollout.generate: EOS never inside a rationale (even with EOS made likely), "</think>"
    as 1 and as 8 tokens, forced tokens with zero weight, gold answer teacher-forced, monitors logged."""
    close_bias = 4.0 if one_token_close else 0.0  # makes natural closes likely with the one-token "</think>"
    model, tok = w.tiny(one_token_close, close_bias=close_bias, eos_bias=6.0)
    tokens = SpecialTokens.of(tok, model.generation_config)
    assert len(tokens.close_ids) == (1 if one_token_close else 8)
    examples = [dict(ex, answer="7") for ex in TWO]  # one gold answer for every row
    trainer = Recording(model, args=w.config(tmp_path, per_device=4, accumulation=2, steps=2, budget=6),
                        train_dataset=w.dataset(tok, examples), processing_class=tok)
    trainer.train()

    gold = gold_ids(tok, "7")
    logged = [line for line in trainer.state.log_history if "w_bar_mean" in line]
    assert len(logged) == len(trainer.batches) == 2
    forced_rows = natural_rows = 0
    for batch, line in zip(trainer.batches, logged):
        z_lengths, forced_flags = [], []
        for ids, att, z, y, coef in zip(batch["completion_ids"].tolist(), batch["completion_mask"].tolist(),
                                        batch["z_mask"].tolist(), batch["y_mask"].tolist(), batch["coef"].tolist()):
            rationale = [t for t, m in zip(ids, z) if m]
            forced = [t for t, a, zm, ym in zip(ids, att, z, y) if a and not zm and not ym]
            answer = [t for t, m in zip(ids, y) if m]
            assert not set(rationale) & set(tokens.eos_ids)  # EOS banned while thinking
            assert 1 <= len(rationale) <= 6 and answer == gold
            assert ids[:len(rationale) + len(forced) + len(answer)] == rationale + forced + answer  # z | forced | y
            if forced:
                assert forced == tokens.close_ids and len(rationale) == 6  # forced only when the budget ran out
            else:
                assert rationale[-len(tokens.close_ids):] == tokens.close_ids  # closed naturally
            z_lengths.append(len(rationale))
            forced_flags.append(bool(forced))
            # one coefficient on the rationale, one on the answer, zero on forced tokens and padding
            assert len({c for c, m in zip(coef, z) if m}) == 1 and len({c for c, m in zip(coef, y) if m}) == 1
            assert all(c == 0 for c, zm, ym in zip(coef, z, y) if not zm and not ym)
        # the step's monitors, under train.py's names
        assert {"w_bar_min", "w_bar_max", "j_q", "max_amplified_advantage", "q"} <= line.keys()
        assert 0 < line["w_bar_min"] <= line["w_bar_mean"] <= line["w_bar_max"] <= 1
        assert line["think_tokens_mean"] == pytest.approx(sum(z_lengths) / len(z_lengths))
        assert line["forced_frac"] == pytest.approx(sum(forced_flags) / len(forced_flags))
        forced_rows += sum(forced_flags)
        natural_rows += len(forced_flags) - sum(forced_flags)
    assert forced_rows > 0 and (natural_rows > 0) == one_token_close

    # A conversation prompt is tokenized like prompts.prompt_ids (chat template, then "<think>\n").
    ex = TWO[0]
    conversation = [{"role": "user", "content": user_message(ex, w.TASK, w.START)}]
    assert trainer._prompt_ids(conversation) == prompt_ids(tok, ex, w.TASK, w.START)


def test_vllm_rationale_cutting_matches_rollout():
    """vLLM samples without our logits processor; rationale_from_generated must give rollout.generate's Sample
    for what vLLM returns (the vLLM engine itself cannot run on CPU: not tested)."""
    model, tok = w.tiny(one_token_close=True, close_bias=4.0)
    tokens = SpecialTokens.of(tok, model.generation_config)
    torch.manual_seed(0)
    p = prompt_ids(tok, TWO[0], w.TASK, w.START)
    samples = generate(model, [p], 16, tokens, think_budget=5)[0]
    assert {s.forced for s in samples} == {True, False}  # both cases occur
    for s in samples:
        # vLLM's output: the sampled tokens; a natural close stops it (stop_token_ids), else the budget does
        assert rationale_from_generated(p, s.z_ids, tokens, 5) == s
    # A multi-token "</think>" has no stop condition in vLLM: tokens after the first close are dropped.
    t8 = SpecialTokens(close_ids=[1, 2, 3], eos_ids=[0], pad_id=9)
    assert rationale_from_generated([5], [4, 1, 2, 3, 7, 1, 2, 3], t8, 8) == Sample([5], [4, 1, 2, 3], [])
    assert rationale_from_generated([5], [4, 4, 1, 2], t8, 4) == Sample([5], [4, 4, 1, 2], [1, 2, 3])
    with pytest.raises(RuntimeError, match="EOS"):
        rationale_from_generated([5], [4, 0, 4, 4], t8, 4)
    with pytest.raises(RuntimeError, match="stopped"):
        rationale_from_generated([5], [4, 4], t8, 4)
    assert vllm_sampling_kwargs(tokens) == {"logit_bias": {e: -100.0 for e in tokens.eos_ids},
                                            "stop_token_ids": tokens.close_ids}
    assert "stop_token_ids" not in vllm_sampling_kwargs(t8)


# ------------------------------------------------------------------------------------------------ 5. refused settings
@pytest.mark.parametrize("field, value", [
    ("estimator", "sft"), ("q", 1.5), ("q_final", -0.1), ("q_schedule", "cosine"), ("paft_k", 0),
    ("beta", 0.04), ("num_iterations", 2), ("steps_per_generation", 2), ("generation_batch_size", 8),
    ("temperature", 0.7), ("top_p", 0.95), ("top_k", 20), ("min_p", 0.05), ("repetition_penalty", 1.1),
    ("generation_kwargs", {"seed": 1}), ("vllm_structured_outputs_regex", "a+"),
    ("use_transformers_continuous_batching", True), ("vllm_importance_sampling_correction", True),
    ("off_policy_mask_threshold", 0.5), ("top_entropy_quantile", 0.2), ("entropy_coef", 0.01),
    ("use_adaptive_entropy", True), ("reward_weights", [1.0]), ("eval_strategy", "steps"),
    ("max_completion_length", 0),
])
def test_refused_config_settings(tmp_path, field, value):
    name = "steps_per_generation" if field == "generation_batch_size" else field  # the derived field is named
    estimator = "paft" if field == "paft_k" else "garl"  # paft_k=0: refused as a bad K, not as PAFT's field
    with pytest.raises(ValueError, match=f"GARLConfig.{name}="):
        w.config(tmp_path, per_device=4, accumulation=1, **{"estimator": estimator, field: value})


@pytest.mark.parametrize("estimator, why", [
    ("maxrl", "verifier.*GRPOTrainer with the verifier as reward function"),
    ("grpo", "verifier.*TRL's own GRPOTrainer"),
    ("rlpr", "per-token probabilities of y\\* and a second pass without the rationale.*train.py --estimator rlpr"),
], ids=["maxrl", "grpo", "rlpr"])
def test_refused_estimators_say_why(tmp_path, estimator, why):
    """train.py's estimators that need more than log w [B, M] (the model's own answers, per-token probabilities)."""
    with pytest.raises(ValueError, match=f"GARLConfig.estimator='{estimator}': .*{why}.*; set estimator='garl'"):
        w.config(tmp_path, per_device=4, accumulation=1, estimator=estimator)


@pytest.mark.parametrize("estimator, field, value", [
    ("paft", "no_pathwise", True), ("latro", "no_pathwise", True), ("grpo-soft", "no_pathwise", True),
    ("garl", "paft_k", 2), ("latro", "paft_k", 2), ("grpo-soft", "paft_k", 2),
])
def test_refused_settings_of_another_estimator(tmp_path, estimator, field, value):
    """no_pathwise is GARL's, paft_k PAFT's: with another estimator they would be silently ignored."""
    with pytest.raises(ValueError, match=f"GARLConfig.{field}="):
        w.config(tmp_path, per_device=4, accumulation=1, estimator=estimator, **{field: value})


@pytest.mark.parametrize("field", ["reward_funcs", "tools", "rollout_func", "environment_factory", "eval_dataset"])
def test_refused_trainer_arguments(tmp_path, field):
    model, tok = w.tiny()
    value = w.dataset(tok, TWO) if field == "eval_dataset" else [len]
    with pytest.raises(ValueError, match=f"{field}="):
        GARLTrainer(model, args=w.config(tmp_path, 8, 1), train_dataset=w.dataset(tok, TWO), processing_class=tok,
                    **{field: value})


def test_refused_dataset_without_answers(tmp_path):
    model, tok = w.tiny()
    with pytest.raises(ValueError, match="answer_column="):
        GARLTrainer(model, args=w.config(tmp_path, 8, 1, answer_column="gold"), train_dataset=w.dataset(tok, TWO),
                    processing_class=tok)


# ------------------------------------------------------------------------------------------- TRL internals we rely on
def test_trl_internals_keep_their_signatures():
    """trl_garl.py overrides or calls these private TRL pieces (pinned: requirements-trl.txt). If one changes,
    this fails and trl_garl.py must be re-checked against the new TRL before the pin moves."""
    from trl.distributed import DistributedBackend
    from trl.generation.vllm_generation import VLLMGeneration
    from trl.kernels import ChunkedLogProbFunction
    from trl.models import unwrap_model_for_generation
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    expected = {
        trl.GRPOTrainer.__init__: ["self", "model", "reward_funcs", "args", "train_dataset", "eval_dataset",
                                   "processing_class", "reward_processing_classes", "callbacks", "optimizers",
                                   "quantization_config", "peft_config", "tools", "rollout_func",
                                   "environment_factory"],
        trl.GRPOTrainer._generate_and_score_completions: ["self", "inputs"],  # overridden
        trl.GRPOTrainer._compute_loss: ["self", "model", "inputs"],  # overridden
        trl.GRPOTrainer._prepare_inputs: ["self", "generation_batch"],  # calls the two above
        trl.GRPOTrainer.compute_loss: ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        ChunkedLogProbFunction.forward: ["ctx", "hidden", "weight", "bias", "targets", "temperature", "chunk_size",
                                         "final_logit_softcapping", "logit_scale", "outputs"],
        unwrap_model_for_generation: ["model", "accelerator", "gather_deepspeed3_params", "generation_kwargs",
                                      "gradient_checkpointing_kwargs"],
        maybe_gather_lm_head_ctx: ["params"],
        VLLMGeneration.generate: ["self", "prompts", "images", "num_generations", "profiler"],
        VLLMGeneration.sync_weights: ["self"],
        DistributedBackend.summon_full_params: ["self", "module", "kwargs"],
    }
    for fn, params in expected.items():
        assert list(inspect.signature(fn).parameters) == params, fn.__qualname__
    # GRPOTrainer's loss must stay the trainer's GA-scaled loss (we return it unscaled by accumulation steps).
    assert trl.GRPOTrainer.loss_is_scaled_for_ga is True
    source = inspect.getsource(trl.GRPOTrainer._prepare_inputs)
    assert "self._generate_and_score_completions(generation_batch)" in source
    assert "split_tensor_dict(generation_batch, self.args.steps_per_generation)" in source
