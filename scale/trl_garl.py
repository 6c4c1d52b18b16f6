"""GARL and PAFT (and LaTRO, GRPO-soft) inside TRL's GRPOTrainer: many GPUs (accelerate, DeepSpeed, FSDP) and
vLLM rollouts.

    config = GARLConfig(output_dir="runs/x", estimator="garl", q=0.75, num_generations=32,
                        max_completion_length=2944, per_device_train_batch_size=4, gradient_accumulation_steps=8)
    trainer = GARLTrainer(model, args=config, train_dataset=ds, processing_class=tokenizer)   # ds: prompt, answer
    trainer.train()

The convention TRL users know (an algorithm = a config + a trainer subclass), with the estimators of
garl.py and paft.py unchanged. One optimizer step is exactly one step of train.py (Algorithms 1 and 2):

  1. rollouts   TRL's sampler hands each process its slice of the step's B x M rows (a question's M rows
                are consecutive, and may straddle two processes). Each row samples a rationale z with EOS
                banned, cut at its first "</think>" or closed by "</think>" forced at the thinking budget
                (`max_completion_length`); generation is rollout.generate (transformers) or vLLM.
  2. weights    the gold answer y* = prompts.gold_ids(answer) is appended after every rationale and
                teacher-forced: log w = log p(y*|x, z_m), summed over y*'s tokens, without gradient.
  3. estimator  log w is GATHERED from every process into the step's global [B, M] tensor, and
                garl_coefficients / paft_coefficients run on it (the same numbers on every process; PAFT's
                resampling uses a generator seeded by the step). Each process keeps its rows. The related
                methods that are functions of log w alone run here too (related.related_coefficients: LaTRO,
                GRPO-soft; VeriFree is estimator="garl", q=0); those that need other inputs are refused
                (NOT_SERVED).
  4. gradient   per-token coefficients: score_coef on rationale tokens, path_coef on answer tokens, 0 on
                forced tokens and padding; the loss of a micro-batch is
                    -(num_processes / B) * sum over its rows and tokens of coef * log p(token),
                so that the sum over micro-batches (gradient accumulation) and the average over processes
                (DDP / ZeRO / FSDP) is train.gradient_pass's -(1/B) sum_rows (score_coef logp_z + path_coef logp_y).
  5. update     TRL / transformers' optimizer step. No PPO ratio, no clipping, no KL, one update per rollout batch.

Log-probabilities are those of rollout.py and logprobs.py: a rationale token's log-prob is taken under
the sampler that drew it, the softmax with the EOS tokens left out; an answer token's under the full
softmax; forced tokens count nowhere. They are computed inside the model's forward (see add_garl_scoring)
so that DDP, DeepSpeed ZeRO-3 and FSDP see an ordinary forward, with TRL's chunked log-prob kernel (no
[tokens, vocab] logits held at once). What differs from train.py is where the work goes, not the numbers:
TRL runs every row's prompt through the model (train.py shares one prompt pass among a question's M rows),
and it scores rows whose coefficients are zero (train.py skips them; e.g. the rows PAFT did not resample).

Settings that would silently change the estimator are refused when the config or the trainer is built,
with the field and the value it needs (GARLConfig.__post_init__, GARLTrainer.__init__).
"""
import contextlib
import functools
import time
import types
from dataclasses import dataclass, field

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedTokenizerBase
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl import GRPOConfig, GRPOTrainer
from trl.kernels import ChunkedLogProbFunction
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import maybe_gather_lm_head_ctx

from garl import garl_coefficients, garl_stats
from paft import paft_coefficients
from prompts import THINK_OPEN, gold_ids
from presets import q_at
from qlog import check_q, log_mean_exp, q_loss_of_log
from related import related_coefficients
from rollout import Sample, SpecialTokens, generate

# What step 3 can run: a function of the step's log w [B, M] (and q), the only thing the weight pass computes.
ESTIMATORS = ("garl", "paft", "latro", "grpo-soft")
# train.py's other estimators, and why this trainer cannot serve them (the reason GARLConfig gives).
_OWN_ANSWERS = ("scores the model's own answers with a verifier, and GARLTrainer samples no answers (it "
                "teacher-forces the gold one)")
NOT_SERVED = {
    "grpo": f"GRPO {_OWN_ANSWERS}: use TRL's own GRPOTrainer, or train.py --estimator grpo",
    "maxrl": f"MaxRL {_OWN_ANSWERS}: use TRL's GRPOTrainer with the verifier as reward function and MaxRL's advantage "
             "(r - r_bar) / r_bar in place of GRPO's (related.maxrl_coefficients), or train.py --estimator maxrl",
    "rlpr": "RLPR's reward needs the per-token probabilities of y* and a second pass without the rationale, and "
            "GARLTrainer's weight pass computes only log w (summed over y*'s tokens, after the rationale): use "
            "train.py --estimator rlpr",
}
Q_SCHEDULES = ("constant", "switch", "linear")
# Tokens per chunk of TRL's log-prob kernel: at Qwen3's 151,936-token vocabulary one chunk of bf16 logits
# is 4096 x 32768 x 2 bytes = 256 MB (the kernel's own default, trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE).
VOCAB_CHUNK = 32768


# ------------------------------------------------------------------------------------------------ the config
@dataclass
class GARLConfig(GRPOConfig):
    """GRPOConfig plus the estimator's settings. Defaults that differ from GRPOConfig: num_generations=32
    (the paper's M), a constant learning rate, no vLLM importance-sampling correction (rollouts are on-policy).

    `max_completion_length` is the THINKING BUDGET (train.py's --think-budget): the rationale tokens sampled
    before "</think>" is forced. The gold answer is appended after the rationale, outside that budget.
    """
    estimator: str = field(default="garl", metadata={
        "help": "'garl' (Algorithm 1), 'paft' (Algorithm 2), or a related method of related.py that is a function "
                "of log w alone: 'latro' (LaTRO without its KL term), 'grpo-soft' (GRPO on the reward w). "
                "VeriFree is 'garl' with q=0; 'grpo', 'maxrl' and 'rlpr' are refused (NOT_SERVED says why)"})
    q: float = field(default=0.75, metadata={
        "help": "Tsallis q in [0, 1]: 0 = RLVR-like, 1 = marginal likelihood. latro and grpo-soft do not use it "
                "(their coefficients have no q); it still sets the J_Q loss logged as j_q"})
    q_schedule: str = field(default="constant", metadata={
        "help": "constant q; 'switch': q for q_steps steps, then q_final; 'linear': a ramp from q to q_final "
                "over q_steps steps (train.py's --q-schedule)"})
    q_final: float = field(default=0.0, metadata={"help": "q after the switch, or at the end of the linear ramp"})
    q_steps: int = field(default=50, metadata={"help": "steps before the switch, or length of the linear ramp"})
    paft_k: int | None = field(default=None, metadata={"help": "PAFT: indices resampled per question (None: M)"})
    no_pathwise: bool = field(default=False, metadata={
        "help": "GARL: drop the pathwise (answer) term, keep the score-function term"})
    answer_column: str = field(default="answer", metadata={"help": "dataset column holding the gold answer"})
    # GRPOConfig fields whose defaults change here
    num_generations: int | None = field(default=32, metadata={"help": "M, rationales per question (paper: 32)"})
    max_completion_length: int | None = field(default=512, metadata={
        "help": "the thinking budget: rationale tokens sampled before '</think>' is forced (train.py's "
                "--think-budget; the gold answer comes on top)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "learning-rate schedule (train.py: constant)"})
    vllm_importance_sampling_correction: bool = field(default=False, metadata={
        "help": "must stay False: GARL/PAFT rollouts are treated as on-policy, as in train.py"})

    def __post_init__(self):
        super().__post_init__()  # GRPOConfig derives steps_per_generation and generation_batch_size here

        def refuse(name, needed, why):
            raise ValueError(f"GARLConfig.{name}={getattr(self, name)!r}: {why}; set {name}={needed!r}")

        if self.estimator in NOT_SERVED:
            refuse("estimator", "garl", NOT_SERVED[self.estimator])
        if self.estimator not in ESTIMATORS:
            refuse("estimator", "garl", f"the estimator must be one of {ESTIMATORS}")
        for name in ["q", "q_final"]:
            try:
                check_q(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"GARLConfig.{name}={getattr(self, name)!r}: {e}") from None
        if self.q_schedule not in Q_SCHEDULES:
            refuse("q_schedule", "constant", f"the q schedule must be one of {Q_SCHEDULES}")
        if self.q_schedule != "constant" and self.q_steps < 1:
            refuse("q_steps", 50, "a switch or ramp needs q_steps >= 1")
        if self.paft_k is not None and self.paft_k < 1:
            refuse("paft_k", None, "PAFT resamples K >= 1 indices (None: K = M)")
        if self.paft_k is not None and self.estimator != "paft":
            refuse("paft_k", None, "only PAFT resamples rationales")
        if self.no_pathwise and self.estimator != "garl":
            refuse("no_pathwise", False, "only GARL has a pathwise term to drop")
        if self.max_completion_length is None or self.max_completion_length < 1:
            refuse("max_completion_length", 512, "it is the thinking budget, at least one token")
        # The estimator itself: on-policy, one update per rollout batch, no KL, no ratio, no clipping.
        if self.beta != 0.0:
            refuse("beta", 0.0, "GARL/PAFT have no KL term (and no reference model)")
        if self.num_iterations != 1:
            refuse("num_iterations", 1, "GARL/PAFT take one gradient step per rollout batch (on-policy)")
        if self.steps_per_generation != self.gradient_accumulation_steps:
            refuse("steps_per_generation", self.gradient_accumulation_steps,
                   "one rollout batch per optimizer step: steps_per_generation (or generation_batch_size) must "
                   "match gradient_accumulation_steps")
        # Sampling must be the model's own distribution, or the score-function term is off-policy (biased).
        for name, needed in [("temperature", 1.0), ("top_p", 1.0), ("top_k", 0), ("repetition_penalty", 1.0)]:
            if getattr(self, name) != needed:
                refuse(name, needed, "rollouts must be drawn from the model itself (the score-function term "
                                     "is on-policy)")
        if self.min_p not in (None, 0.0):
            refuse("min_p", None, "rollouts must be drawn from the model itself")
        if self.generation_kwargs:
            refuse("generation_kwargs", None, "GARLTrainer sets the sampler itself (EOS banned, '</think>' "
                                              "forced); extra sampling options would change the distribution")
        if self.vllm_structured_outputs_regex is not None:
            refuse("vllm_structured_outputs_regex", None, "constrained decoding is not the model's distribution")
        if self.use_transformers_continuous_batching:
            refuse("use_transformers_continuous_batching", False,
                   "the thinking-budget logits processor runs in model.generate or vLLM only")
        # GRPO's loss modifiers, which GARL/PAFT do not have.
        if self.vllm_importance_sampling_correction:
            refuse("vllm_importance_sampling_correction", False, "GARL/PAFT apply no importance-sampling ratio")
        if self.off_policy_mask_threshold is not None:
            refuse("off_policy_mask_threshold", None, "GARL/PAFT mask no tokens")
        if self.top_entropy_quantile != 1.0:
            refuse("top_entropy_quantile", 1.0, "GARL/PAFT mask no tokens")
        if self.entropy_coef != 0.0:
            refuse("entropy_coef", 0.0, "GARL/PAFT have no entropy bonus")
        if self.use_adaptive_entropy:
            refuse("use_adaptive_entropy", False, "GARL/PAFT have no entropy bonus")
        if self.reward_weights is not None:
            refuse("reward_weights", None, "GARL/PAFT weigh rationales by w = p(y*|x,z), not by reward functions")
        if str(getattr(self.eval_strategy, "value", self.eval_strategy)) != "no":
            refuse("eval_strategy", "no", "GARLTrainer does not evaluate; score saved checkpoints with eval.py")


# ------------------------------------------------------------------------------------------------ log-probs
def add_garl_scoring(model, eos_ids: list[int], cast_lm_head_to_fp32: bool = False) -> None:
    """Give model.forward a scoring mode; any other call goes to the forward it had.

        model(input_ids=ids, attention_mask=mask, score_masks=(z_mask, y_mask)) -> logp [N, T-1]

    ids, mask, z_mask, y_mask are [N, T]; z_mask marks rationale tokens, y_mask answer tokens. logp[:, t-1] is
    log p(ids[:, t] | ids[:, :t]) where a mask is set at t, else 0: a rationale token under the softmax with
    the EOS tokens left out (the sampler that drew it, see rollout.py), an answer token under the full softmax.

    Why a forward and not a helper next to the model: DDP synchronizes gradients and DeepSpeed ZeRO-3 / FSDP
    gather parameters only for computation that runs inside the wrapped model's forward, so the scoring must
    happen there (TRL's trl.trainer.utils.add_fused_lm_head does the same for GRPO's log-probs).
    """
    inner_forward = model.forward  # TRL's fused-head forward, which passes ordinary calls to the original one
    text_config = model.config.get_text_config()
    # The output layer must be a plain linear map (as logprobs.py requires too): soft-capping would turn the -inf
    # EOS bias into a finite logit, and a logit scale (TRL reads several spellings of it) is not applied here.
    for name in ["final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"]:
        if getattr(text_config, name, None) not in (None, 1.0):
            raise ValueError(f"model config {name}={getattr(text_config, name)}: GARLTrainer supports output layers "
                             "without logit soft-capping or scaling")

    @functools.wraps(type(model).forward)  # keep the signature: generate validates its kwargs against it
    def forward(self, *args, score_masks=None, **kwargs):
        if score_masks is None:
            return inner_forward(*args, **kwargs)
        return _score_tokens(self, kwargs["input_ids"], kwargs["attention_mask"], *score_masks, eos_ids,
                             cast_lm_head_to_fp32)

    model.forward = types.MethodType(forward, model)


def _score_tokens(model, input_ids, attention_mask, z_mask, y_mask, eos_ids, cast_lm_head_to_fp32):
    """The scoring mode of add_garl_scoring: [N, T-1] per-token log-probs, zero where no mask is set."""
    # Left-padded prompts: positions count real tokens only, as in generation (and logprobs.py's positions 0..T-1).
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [N, T]
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state  # [N, T, H]
    # the state at t-1 predicts the token at t
    hidden, targets = hidden[:, :-1], input_ids[:, 1:]  # [N, T-1, H], [N, T-1]
    z, y = z_mask[:, 1:].bool(), y_mask[:, 1:].bool()  # [N, T-1] each
    lm_head = model.get_output_embeddings()
    weight, bias = lm_head.weight, lm_head.bias
    if isinstance(weight, DTensor):  # FSDP2 shards parameters as DTensors: the kernel needs the whole head
        weight = weight.full_tensor()
        bias = None if bias is None else bias.full_tensor()
    autocast = torch.autocast(hidden.device.type, enabled=False) if cast_lm_head_to_fp32 else contextlib.nullcontext()
    if cast_lm_head_to_fp32:
        hidden = hidden.float()
    # ZeRO-3 shards the head's weight to zero elements outside its own forward: gather it while we read it
    # (TRL's kernel gathers it again in its backward).
    with maybe_gather_lm_head_ctx(weight, bias), autocast:
        # EOS left out of the rationale tokens' softmax: a -inf logit bias on the EOS ids (exp(-inf) = 0 in the
        # logsumexp and in the softmax of the backward, so EOS gets no probability and no gradient).
        ban = torch.zeros(weight.shape[0], device=hidden.device, dtype=torch.float32)  # [V]
        ban[torch.tensor(eos_ids, device=hidden.device)] = float("-inf")
        z_bias = _nothing_to_gather(ban if bias is None else bias + ban.to(bias.dtype))
        logp_z = ChunkedLogProbFunction.apply(hidden[z], weight, z_bias, targets[z], 1.0, VOCAB_CHUNK, None, 1.0,
                                              ())[0]  # [n_z]
        logp_y = ChunkedLogProbFunction.apply(hidden[y], weight, bias, targets[y], 1.0, VOCAB_CHUNK, None, 1.0,
                                              ())[0]  # [n_y]
    # Scatter back into [N, T-1]; masked_scatter keeps the result connected to the graph even when a mask is empty.
    out = torch.zeros(z.shape, device=hidden.device, dtype=torch.float32)
    return out.masked_scatter(z, logp_z.float()).masked_scatter(y, logp_y.float())  # [N, T-1]


def _nothing_to_gather(t: torch.Tensor) -> torch.Tensor:
    """Under ZeRO-3, TRL's kernel re-gathers its weight and bias arguments in its backward and reads `ds_status`
    from each; the EOS-ban bias is a plain tensor, whole already: mark it available (nothing to gather)."""
    if is_deepspeed_zero3_enabled():
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
        t.ds_status = ZeroParamStatus.AVAILABLE  # a Python attribute: it stays on the tensor the backward unpacks
    return t


# ------------------------------------------------------------------------------------------------ rollouts as tensors
def rationale_from_generated(prompt_ids: list[int], generated: list[int], special: SpecialTokens, think_budget: int) -> Sample:
    """Cut a generation that ran without budget forcing (vLLM) into the Sample rollout.generate would give.

    The rationale closes at the first occurrence of "</think>"'s tokenization (tokens after it are dropped);
    without one, the budget ran out and "</think>" is appended as forced tokens.
    >>> t = SpecialTokens(close_ids=[9], eos_ids=[0], pad_id=1)
    >>> rationale_from_generated([5], [3, 9, 4], t, think_budget=4)      # closed naturally at the 2nd token
    Sample(prompt_ids=[5], z_ids=[3, 9], forced_ids=[], y_ids=[])
    >>> rationale_from_generated([5], [3, 4], t, think_budget=2)         # budget spent: "</think>" forced
    Sample(prompt_ids=[5], z_ids=[3, 4], forced_ids=[9], y_ids=[])
    """
    C = len(special.close_ids)
    ends = [i + C for i in range(len(generated) - C + 1) if generated[i:i + C] == special.close_ids]
    if ends and ends[0] <= think_budget:
        z, forced = generated[:ends[0]], []
    elif len(generated) >= think_budget:
        z, forced = generated[:think_budget], list(special.close_ids)
    else:
        raise RuntimeError(f"a rationale stopped after {len(generated)} < {think_budget} tokens without '</think>': "
                           "the generation backend stopped it early (an EOS or another stop condition)")
    if any(t in special.eos_ids for t in z):
        raise RuntimeError("the generation backend sampled an EOS token inside a rationale: its EOS ban "
                           "(logit_bias) was not applied")
    return Sample(list(prompt_ids), z, forced)


def vllm_sampling_kwargs(special: SpecialTokens) -> dict:
    """Extra vLLM SamplingParams for rationales: EOS banned, stop at a one-token "</think>".

    -100 is the lower end of the OpenAI API's logit_bias range (server mode goes through vLLM's OpenAI
    server): it multiplies an EOS probability by e^-100 ~ 4e-44, zero in fp32. A multi-token "</think>" gets no
    stop condition: generation runs to the budget and rationale_from_generated cuts it at the first "</think>"
    (exact, at the price of the tokens after it).
    >>> vllm_sampling_kwargs(SpecialTokens(close_ids=[9], eos_ids=[0, 2], pad_id=1))
    {'logit_bias': {0: -100.0, 2: -100.0}, 'stop_token_ids': [9]}
    """
    kwargs = {"logit_bias": {eos: -100.0 for eos in special.eos_ids}}
    if len(special.close_ids) == 1:
        kwargs["stop_token_ids"] = list(special.close_ids)
    return kwargs


def batch_tensors(samples: list[Sample], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Rows prompt | z | forced | y as TRL lays them out: prompts left-padded, completions right-padded.

    Returns prompt_ids/prompt_mask [N, P], completion_ids/completion_mask [N, C] (attention), and
    z_mask / y_mask [N, C]: which completion tokens are rationale tokens, which answer tokens (forced: neither).
    >>> b = batch_tensors([Sample([7], [3], [9], [4, 0]), Sample([7, 8], [3, 3], [], [4, 0])], pad_id=1, device="cpu")
    >>> b["completion_ids"].tolist(), b["z_mask"].tolist(), b["y_mask"].tolist()
    ([[3, 9, 4, 0], [3, 3, 4, 0]], [[1, 0, 0, 0], [1, 1, 0, 0]], [[0, 0, 1, 1], [0, 0, 1, 1]])
    """
    P = max(len(s.prompt_ids) for s in samples)
    C = max(len(s.z_ids) + len(s.forced_ids) + len(s.y_ids) for s in samples)

    prompt_ids = torch.tensor([[pad_id] * (P - len(s.prompt_ids)) + s.prompt_ids for s in samples], device=device)
    prompt_mask = torch.tensor([[0] * (P - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in samples],
                               device=device)
    completion, completion_mask, z_mask, y_mask = [], [], [], []
    for s in samples:
        n_z, n_f, n_y = len(s.z_ids), len(s.forced_ids), len(s.y_ids)
        pad = C - n_z - n_f - n_y
        completion.append(s.z_ids + s.forced_ids + s.y_ids + [pad_id] * pad)
        completion_mask.append([1] * (n_z + n_f + n_y) + [0] * pad)
        z_mask.append([1] * n_z + [0] * (n_f + n_y + pad))
        y_mask.append([0] * (n_z + n_f) + [1] * n_y + [0] * pad)
    as_tensor = functools.partial(torch.tensor, device=device)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": as_tensor(completion),
            "completion_mask": as_tensor(completion_mask), "z_mask": as_tensor(z_mask), "y_mask": as_tensor(y_mask)}


def token_coefficients(score_coef: torch.Tensor, path_coef: torch.Tensor, z_mask: torch.Tensor,
                       y_mask: torch.Tensor) -> torch.Tensor:
    """Per-token coefficients [N, C]: score_coef [N] on rationale tokens, path_coef [N] on answer tokens, 0 elsewhere.

    Summed against per-token log-probs they give score_coef * logp_z + path_coef * logp_y, row by row.
    >>> z, y = torch.tensor([[1, 1, 0, 0]]), torch.tensor([[0, 0, 1, 0]])   # 2 rationale tokens, 1 forced, 1 answer
    >>> token_coefficients(torch.tensor([2.0]), torch.tensor([5.0]), z, y)
    tensor([[2., 2., 5., 0.]])
    """
    return score_coef[:, None] * z_mask + path_coef[:, None] * y_mask  # [N, C]


def _repeats(prompt_ids: list[list[int]]) -> int:
    """k if the rows are runs of k identical prompts each (a process's slice of whole questions), else 1."""
    runs, i = [], 0
    while i < len(prompt_ids):
        j = i
        while j < len(prompt_ids) and prompt_ids[j] == prompt_ids[i]:
            j += 1
        runs.append(j - i)
        i = j
    return runs[0] if len(set(runs)) == 1 else 1


def _never_called_reward(*args, **kwargs):
    """GRPOTrainer's constructor requires a reward function. GARL/PAFT weigh rationales by w = p(y*|x,z),
    computed in GARLTrainer._generate_and_score_completions, which never calls reward functions."""
    raise RuntimeError("GARLTrainer computes w = p(y*|x,z) itself; no reward function is called")


# ------------------------------------------------------------------------------------------------ the trainer
class GARLTrainer(GRPOTrainer):
    """GRPOTrainer running GARL (Algorithm 1), PAFT (Algorithm 2), LaTRO or GRPO-soft; see the module docstring.

    train_dataset needs a "prompt" column (text ending in the opened thinking block, as prompts.build_prompt
    writes it, or a conversation, to which the chat template and "<think>\\n" are applied) and the gold answer
    column (GARLConfig.answer_column). Reward functions, tools, environments, custom rollouts and evaluation
    are refused: they have no place in the estimator.
    """
    _tag_names = ["trl", "garl"]
    _name = "GARL"

    def __init__(self, model, args: GARLConfig, train_dataset, processing_class: PreTrainedTokenizerBase,
                 callbacks=None, optimizers=(None, None), peft_config=None, reward_funcs=None, tools=None,
                 rollout_func=None, environment_factory=None, eval_dataset=None):
        if not isinstance(args, GARLConfig):
            raise ValueError(f"args: GARLTrainer needs a GARLConfig, got {type(args).__name__}")
        for name, value in [("reward_funcs", reward_funcs), ("tools", tools), ("rollout_func", rollout_func),
                            ("environment_factory", environment_factory), ("eval_dataset", eval_dataset)]:
            if value is not None:
                raise ValueError(f"GARLTrainer({name}=...): not supported, pass {name}=None. GARL/PAFT weigh "
                                 "rationales by w = p(y*|x,z) (no rewards), sample plain rationales (no tools, "
                                 "environments or custom rollouts), and do not evaluate (use eval.py)")
        if not isinstance(processing_class, PreTrainedTokenizerBase):
            raise ValueError(f"processing_class: GARLTrainer needs a text tokenizer, got "
                             f"{type(processing_class).__name__}")
        missing = {"prompt", args.answer_column} - set(train_dataset.column_names or [])
        if missing:
            raise ValueError(f"train_dataset: missing column(s) {sorted(missing)} (GARLConfig.answer_column="
                             f"{args.answer_column!r}); it has {train_dataset.column_names}")
        super().__init__(model, reward_funcs=[_never_called_reward], args=args, train_dataset=train_dataset,
                         processing_class=processing_class, callbacks=callbacks, optimizers=optimizers,
                         peft_config=peft_config)
        if self.aux_loss_enabled:
            raise ValueError(f"router_aux_loss_coef={self.router_aux_loss_coef}: GARLTrainer adds no MoE "
                             "load-balancing loss; set router_aux_loss_coef=0.0")
        unwrapped = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # PEFT
        self.special = SpecialTokens.of(processing_class, unwrapped.generation_config)
        add_garl_scoring(unwrapped, self.special.eos_ids, args.cast_lm_head_to_fp32)
        if self.use_vllm:
            # TRL's vLLM backend samples with max_tokens = max_completion_length (the thinking budget) and these.
            self.vllm_generation.generation_kwargs = vllm_sampling_kwargs(self.special)
        # B, the questions of one optimizer step over all processes: the loss is divided by it.
        self.questions_per_step = args.generation_batch_size // args.num_generations

    # -------------------------------------------------------------------- step 1: rollouts
    def _prompt_ids(self, prompt) -> list[int]:
        """Token ids of one prompt: text as is (prompts.prompt_ids), or a conversation through the chat template."""
        if not isinstance(prompt, str):  # a conversation: the same steps as prompts.build_prompt
            prompt = self.processing_class.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                                               enable_thinking=True, **self.chat_template_kwargs)
            opened = THINK_OPEN + "\n"
            prompt = prompt if prompt.endswith(opened) else prompt + opened
        return self.processing_class(prompt, add_special_tokens=False).input_ids

    def _sample_rationales(self, prompt_ids: list[list[int]]) -> list[Sample]:
        """One rationale per row (y left empty), EOS banned, "</think>" forced at the budget."""
        budget = self.args.max_completion_length
        if self.use_vllm:
            if self.state.global_step != self._last_loaded_step:  # push the current weights to vLLM once per step
                self.vllm_generation.sync_weights()
                self._last_loaded_step = self.state.global_step
            _, generated, _, _ = self.vllm_generation.generate(prompts=prompt_ids, images=None,
                                                               num_generations=self.num_generations)
            return [rationale_from_generated(p, g, self.special, budget) for p, g in zip(prompt_ids, generated)]
        # transformers: rollout.generate, on the model unwrapped from DDP / DeepSpeed (ZeRO-3 parameters gathered)
        k = _repeats(prompt_ids)  # a prompt's k rows share one prefill when the slice holds whole runs
        with (unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                          gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                          gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
              as unwrapped, torch.no_grad(), self._dist.summon_full_params(self.model_wrapped, recurse=False),
              self.accelerator.autocast()):
            groups = generate(unwrapped, prompt_ids[::k], k, self.special, budget)
        return [s for g in groups for s in g]

    # -------------------------------------------------------------------- steps 2-3: weights and coefficients
    def _token_logprobs(self, model, batch: dict, need_z: bool) -> torch.Tensor:
        """[n, C] log-probs of the completion tokens (rationale and answer tokens; 0 elsewhere)."""
        P = batch["prompt_ids"].shape[1]
        no_prompt = torch.zeros_like(batch["prompt_mask"])
        z_mask = batch["z_mask"] if need_z else torch.zeros_like(batch["z_mask"])
        with self.accelerator.autocast():
            logp = model(input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
                         attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
                         score_masks=(torch.cat([no_prompt, z_mask], 1),
                                      torch.cat([no_prompt, batch["y_mask"]], 1)))  # [n, P+C-1]
        return logp[:, P - 1:]  # [n, C]: column j is completion token j

    @torch.no_grad()
    def _log_weights(self, batch: dict) -> torch.Tensor:
        """log w = log p(y*|x, z) for every local row [N], in micro-batches, without gradient (the weight pass)."""
        mb = self.args.per_device_train_batch_size
        N = batch["prompt_ids"].shape[0]
        parts = []
        for i in range(0, N, mb):
            chunk = {k: v[i:i + mb] for k, v in batch.items()}
            parts.append(self._token_logprobs(self.model, chunk, need_z=False).sum(-1))  # [mb]
        return torch.cat(parts)  # [N]

    def current_q(self) -> float:
        a = self.args
        return q_at(self.state.global_step, a.q_schedule, a.q, a.q_final, a.q_steps)  # train.py's schedule, per optimizer step

    def paft_generator(self, step: int) -> torch.Generator:
        """PAFT's resampling generator for an optimizer step: seeded by (seed, step), so that every process
        draws the same indices, and a resumed run the same ones as an uninterrupted run."""
        return torch.Generator().manual_seed(self.args.seed * 1_000_003 + step)

    def _step_coefficients(self, log_w: torch.Tensor, prompt_ids: list[list[int]]):
        """(score_coef [N], path_coef [N], stats) for this process's rows, from the step's GLOBAL log w [B, M].

        TRL's sampler gives each process a contiguous slice of the step's rows, question by question (M
        consecutive rows each), so one question's rows can sit on two processes: gather before estimating.
        """
        N, M = log_w.shape[0], self.num_generations
        keys = torch.tensor([hash(tuple(p)) for p in prompt_ids], device=log_w.device)  # [N] (int hashes: stable)
        all_log_w = self.accelerator.gather(log_w.double())  # [W*N], in the sampler's order
        all_keys = self.accelerator.gather(keys)  # [W*N]
        if all_log_w.shape[0] % M or (all_keys.view(-1, M) != all_keys.view(-1, M)[:, :1]).any():
            raise RuntimeError(f"the step's rows are not groups of num_generations={M} rows of one question each: "
                               "GARLTrainer needs TRL's RepeatSampler (a custom sampler or dataloader breaks it)")
        log_w_bm = all_log_w.view(-1, M).cpu()  # [B, M]; CPU fp64: the same numbers on every process
        q, estimator = self.current_q(), self.args.estimator
        if estimator == "garl":
            score_coef, path_coef = garl_coefficients(log_w_bm, q)  # [B, M] each
            if self.args.no_pathwise:
                path_coef = torch.zeros_like(path_coef)
        elif estimator == "paft":  # one coefficient on z and y tokens: SFT on the resampled rationales + gold answer
            score_coef = path_coef = paft_coefficients(log_w_bm, q, k=self.args.paft_k,
                                                       generator=self.paft_generator(self.state.global_step))
        else:  # LaTRO, GRPO-soft: related.py's coefficients, functions of log w alone (no q), as in train.py
            score_coef, path_coef = related_coefficients(estimator, log_w_bm)  # [B, M] each
        stats = garl_stats(log_w_bm, q)  # w_bar mean/min/max and GARL's max amplified advantage
        if estimator != "garl":
            del stats["max_amplified_advantage"]  # a GARL quantity (as in train.py)
        stats["j_q"] = q_loss_of_log(log_mean_exp(log_w_bm), q).mean().item()  # the J_Q loss, estimated
        stats["q"] = q
        mine = slice(self.accelerator.process_index * N, (self.accelerator.process_index + 1) * N)
        device = log_w.device
        return (score_coef.flatten()[mine].float().to(device), path_coef.flatten()[mine].float().to(device), stats)

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
        """Steps 1-3 for this process's rows of the step: rollouts, log w, coefficients -> per-token coefficients."""
        if not self.model.training:
            raise RuntimeError("GARLTrainer does not evaluate (eval_strategy must be 'no'); score checkpoints with "
                               "eval.py")
        device = self.accelerator.device
        prompt_ids = [self._prompt_ids(x["prompt"]) for x in inputs]

        t = time.perf_counter()
        samples = self._sample_rationales(prompt_ids)  # [N] local rows, y empty
        time_generate = time.perf_counter() - t
        for s, x in zip(samples, inputs):
            s.y_ids = gold_ids(self.processing_class, str(x[self.args.answer_column]))  # y*, EOS included
        batch = batch_tensors(samples, self.special.pad_id, device)

        t = time.perf_counter()
        log_w = self._log_weights(batch)  # [N]
        time_weights = time.perf_counter() - t
        score_coef, path_coef, stats = self._step_coefficients(log_w, prompt_ids)  # [N], [N]
        batch["coef"] = token_coefficients(score_coef, path_coef, batch["z_mask"], batch["y_mask"])  # [N, C]

        # Monitoring, under the names train.py writes (means over every row of the step, all processes).
        think = self.accelerator.gather(torch.tensor([float(len(s.z_ids)) for s in samples], device=device))
        forced = self.accelerator.gather(torch.tensor([float(s.forced) for s in samples], device=device))
        stats.update(think_tokens_mean=think.mean().item(), forced_frac=forced.mean().item(),
                     time_generate=time_generate, time_weights=time_weights)
        for name, value in stats.items():
            self._metrics["train"][name].append(value)
        return batch

    # -------------------------------------------------------------------- step 4: the loss of one micro-batch
    def _compute_loss(self, model, inputs: dict) -> torch.Tensor:
        """-(W / B) sum over the micro-batch's tokens of coef * log p: summed over micro-batches and averaged
        over the W processes (as DDP, ZeRO and FSDP average gradients), this is train.gradient_pass's loss."""
        logp = self._token_logprobs(model, inputs, need_z=True)  # [mb, C], with gradient
        scale = self.accelerator.num_processes / self.questions_per_step
        return -(inputs["coef"] * logp).sum() * scale
