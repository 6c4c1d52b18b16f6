"""Related estimators (issue 23): the reference-likelihood family and two RLVR variants, in GARL's form.

Each function returns (score_coef, path_coef), each [B, M], like garl.garl_coefficients: score_coef
multiplies log p(z_m|x) (the SUM over the rationale's tokens), path_coef the SUM over the answer's tokens,
and the trainer's loss is -(1/B) sum_{b,m} (score_coef * logp_z + path_coef * logp_y) (train.gradient_pass).
Here w_m = p(y*|x, z_m), P = p(y*|x), and l_q = -ln_q(P) is the J_Q loss (paper Eq. 3).

    function                  method (paper)                 reward          pathwise    relation to J_Q
    latro_coefficients        LaTRO, arXiv 2411.04282        log w_m         1 (SFT)     -E_z[log w] >= -log P = l_1
                              (without its KL term)                                      (Jensen: an upper bound on q = 1's loss)
    maxrl_coefficients        MaxRL, arXiv 2602.02710        0/1 verifier    none        expected loss gradient = grad of
                                                                                         -J^(M-1), a truncated series of
                                                                                         log P; outside the family
    grpo_soft_coefficients    GRPO on r_m = w_m              w_m             none        no objective; per group, the direction
                                                                                         of q = 1's score term
    rlpr_coefficients         RLPR, arXiv 2506.18254         mean token      none        no objective; the reward is not a
                                                                 probability              function of P

VeriFree (arXiv 2505.21493) needs no function: it is garl_coefficients(log_w, 0.0) (RLOO on w for z, w-weighted
SFT for y*), checked against VeriFree's own formula in tests/test_related.py. docs/related.md places every
method in one table, with how its expected gradient scales when P is small.

"Pathwise: none" means path_coef is 0 where the answer is the gold y* teacher-forced (GRPO-soft, RLPR: only
the rationale is trained), and path_coef = score_coef where the answer is the model's own sample (MaxRL:
the whole sequence is a policy sample, as in grpo.py). Pure functions of plain tensors, as garl.py.
"""
import torch

from qlog import check_log_w

# train.py --estimator NAME for the methods here. RLPR's weight pass is its own: y*'s per-token log-probs after each
# rationale and after an empty thinking block (answer_token_logprobs, train.rationale_free_samples), then
# rlpr_coefficients with RLPRThreshold's std threshold.
ESTIMATORS = ("latro", "maxrl", "grpo-soft", "rlpr")


def verified(estimator: str) -> bool:
    """Whether --estimator scores the model's own answers with a verifier (GRPO, MaxRL: the rollouts go on to write
    an answer, the reward is [B, M]) rather than weighing rationales by the gold answer's probability (GARL, PAFT,
    LaTRO, GRPO-soft: log w [B, M]).

    >>> [verified(name) for name in ("grpo", "maxrl", "garl", "latro")]
    [True, True, False, False]
    """
    return estimator in ("grpo", "maxrl")


def related_coefficients(name: str, log_w: torch.Tensor | None = None,
                         reward: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """train.py's step 3 for --estimator NAME in ESTIMATORS but rlpr: log_w [B, M] (latro, grpo-soft) or the
    verifier's reward [B, M] (maxrl) -> (score_coef, path_coef), each [B, M]. (RLPR's inputs are per-token
    log-probs and a threshold kept across steps: train.py calls rlpr_coefficients itself.)

    >>> related_coefficients("maxrl", reward=torch.tensor([[1.0, 0.0]]))[0]
    tensor([[ 0.5000, -0.5000]])
    """
    if name == "latro":
        return latro_coefficients(log_w)
    if name == "grpo-soft":
        return grpo_soft_coefficients(log_w)
    if name == "maxrl":
        return maxrl_coefficients(reward)
    if name == "rlpr":
        raise ValueError("RLPR's reward needs y*'s per-token log-probs, not log_w: call rlpr_coefficients "
                         "(train.py does, with RLPRThreshold's std threshold)")
    raise ValueError(f"unknown related estimator {name!r}; train.py serves {', '.join(ESTIMATORS)}")


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 in, fp64 out; anything else comes back as float32 (as garl.py)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------------ LaTRO
def latro_coefficients(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LaTRO (Chen et al., "Language Models are Hidden Reasoners", arXiv 2411.04282) without its KL term.

    LaTRO maximizes E_{z ~ p(z|x)}[log p(y*|x, z)] - beta KL(p(z|x) || p_0(z|x)). This project has no
    reference model p_0 (as GARL and PAFT), so beta = 0 here: the objective is E_z[log w]. Its gradient,

        grad E_z[log w] = E_z[ log w(z) grad log p(z|x) ] + E_z[ grad log p(y*|x, z) ],

    is estimated with LaTRO's RLOO baseline on the reward log w:

        c_m = log w_m - mean_{m' != m} log w_{m'},   score_coef_m = c_m / M,   path_coef_m = 1 / M

    (the path term is plain SFT on y* after every sampled rationale). The baseline has zero mean, so the
    estimator is unbiased for grad E_z[log w]. By Jensen, E_z[log w] <= log E_z[w] = log P: LaTRO maximizes a
    lower bound on q = 1's log P (its loss -E_z[log w] is an upper bound on l_1), equal only when w does not
    depend on the rationale.

    Args:
        log_w: [..., M] detached log p(y*|x, z_m), all finite, M >= 2.
    Returns:
        (score_coef, path_coef), each [..., M].
    Raises:
        ValueError if log_w holds -inf. Project choice: a rationale after which y* is impossible gives
        E_z[log w] = -inf, which has no gradient; LaTRO's objective is undefined there, and we do not pick a
        silent floor. A trainer that wants one clamps first (log_w.clamp(min=floor)) and owns the choice.

    Worked example, M = 2: log w = [-1, -3] gives c = [-1 - (-3), -3 - (-1)] = [2, -2], score = c / 2,
    path = 1 / 2 for both.
    >>> latro_coefficients(torch.tensor([-1.0, -3.0]))
    (tensor([ 1., -1.]), tensor([0.5000, 0.5000]))
    """
    check_log_w(log_w, min_m=2)  # the leave-one-out baseline needs two samples
    if (log_w == float("-inf")).any():
        raise ValueError("LaTRO's reward is log w_m = log p(y*|x, z_m), and log_w holds -inf (a rationale after which "
                         "y* is impossible): E_z[log w] is -inf and has no gradient. Clamp log_w to a floor of your "
                         "choice first if you want LaTRO to train on such rows")
    out_dtype = _out_dtype(log_w)
    log_w = log_w.detach().to(torch.float64)
    M = log_w.shape[-1]
    loo = (log_w.sum(-1, keepdim=True) - log_w) / (M - 1)  # [..., M]  mean_{m' != m} log w_{m'} (RLOO)
    score_coef = (log_w - loo) / M  # [..., M]  c_m / M
    path_coef = torch.full_like(log_w, 1.0 / M)  # [..., M]  SFT on y* after every rationale
    return score_coef.to(out_dtype), path_coef.to(out_dtype)


# ------------------------------------------------------------------------------------------------ MaxRL
def maxrl_coefficients(reward: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MaxRL (Tajwar et al., "Maximum Likelihood Reinforcement Learning", arXiv 2602.02710).

    Binary verifier reward r_m in {0, 1} on the model's own sampled answer (as GRPO), r_bar = mean_m r_m:

        A_m = (r_m - r_bar) / r_bar,  and A = 0 when r_bar = 0 (no success: no signal)

    The sum (1/M) sum_m A_m grad log p(o_m) is (1/K) sum_{correct m} grad log p(o_m) - (1/M) sum_m grad log p(o_m),
    K = M r_bar the number of successes: the gradient is averaged over the successes instead of over M. MaxRL's
    objective family is J^(N) = -sum_{k=1}^N (1-P)^k / k (N = 1: P - 1, RLVR; N -> inf: log P, maximum
    likelihood). Derived here and checked exactly in tests/test_related.py: with the mean baseline above,
    E[(1/M) sum_m A_m grad log p(o_m)] = grad J^(M-1) = [(1 - (1-P)^(M-1)) / P] grad P ~ (M-1) grad P at small P.
    A_m is also GARL q = 1's centred weight w_m / w_bar - 1 with the 0/1 reward in place of w.

    Project choice, normalization: with lengths=None the coefficient is A_m / M on the sequence-level SUM of
    log-probs: that is the form whose expectation is exactly grad J^(M-1) (a token mean would reweight sequences
    by 1/|o_m| and break it), and it matches GARL's contract. With lengths (tokens per sequence, [..., M]) it is
    A_m / (|o_m| M), grpo.py's per-sequence token mean, for a like-for-like comparison with GRPO. The whole
    sequence is the model's own sample, so, as in grpo.py, the same coefficient goes on the rationale and on the
    answer: path_coef = score_coef (path_coef multiplies the log-prob of the model's OWN answer, not of y*).
    The authors' code (seen in third-party copies) divides by r_bar + 1e-6; dividing by r_bar exactly keeps
    the expectation exact.

    Args:
        reward: [..., M] verifier outcomes, each 0 or 1, M >= 2.
        lengths: optional [..., M] token counts |o_m| (clamped at 1).
    Returns:
        (score_coef, path_coef), each [..., M], equal.

    Worked example, M = 4, one success: r_bar = 1/4, A = [3, -1, -1, -1], coef = A / 4.
    >>> maxrl_coefficients(torch.tensor([1.0, 0.0, 0.0, 0.0]))[0]
    tensor([ 0.7500, -0.2500, -0.2500, -0.2500])
    """
    if reward.dim() == 0 or reward.shape[-1] < 2:
        raise ValueError(f"MaxRL averages within a group: need M >= 2 samples per question, got shape {tuple(reward.shape)}")
    r = reward.detach().to(torch.float64)
    if not ((r == 0) | (r == 1)).all():
        raise ValueError("MaxRL's reward is a binary verifier outcome: every reward must be 0 or 1")
    out_dtype = _out_dtype(reward)
    M = r.shape[-1]
    r_bar = r.mean(-1, keepdim=True)  # [..., 1]  the group's success rate
    alive = r_bar > 0
    adv = torch.where(alive, (r - r_bar) / torch.where(alive, r_bar, 1.0), 0.0)  # [..., M]  A_m
    if lengths is None:
        coef = adv / M  # [..., M]  sequence-level sum of log-probs
    else:
        coef = adv / (lengths.to(torch.float64).clamp(min=1) * M)  # [..., M]  grpo.py's token mean
    return coef.to(out_dtype), coef.clone().to(out_dtype)


# ------------------------------------------------------------------------------------------------ GRPO-soft
def grpo_soft_coefficients(log_w: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO with the soft reward r_m = w_m = p(y*|x, z_m): what a practitioner tries first.

    Group-normalized advantage on the reward, on the rationale only (y* is teacher-forced, not sampled, so
    there is no pathwise term):

        A_m = (w_m - mean(w)) / (std(w) + eps),   score_coef_m = A_m / M,   path_coef_m = 0

    (std: the unbiased sample std, as grpo.py). It is scale-free: multiplying every w_m by a constant leaves A
    unchanged, so P's scale is gone, as at q = 1; indeed A_m = (w_bar / std(w)) (w_m / w_bar - 1), GARL q = 1's
    centred weight times one positive number per group. It has no objective: dividing by the group's own std
    makes the expected update a heuristic, not the gradient of a function of P (tests/test_related.py checks
    the formula on a worked example). The missing pathwise term means it never trains p(y*|x, z) directly.

    Project choice, eps: w can be 1e-30, so we normalize first, u_m = w_m / max_j w_j in [0, 1], exactly from
    log w (the ratio (w - mean) / std is unchanged by it), and add eps to std(u): eps is in units of the
    group's largest weight. Adding eps to std(w) itself, as grpo.py would with reward = w, silently turns the
    method into a P-scaled one whenever std(w) << eps (A ~ (w - mean) / eps).

    Args:
        log_w: [..., M] detached log p(y*|x, z_m); may hold -inf. M >= 2.
        eps: added to the std of w / max w.
    Returns:
        (score_coef, path_coef), each [..., M]. Groups whose weights are all equal (std 0, all -inf included)
        get zeros.

    Worked example, M = 2: any two different weights give A = +-1/sqrt(2) (up to eps), a sign.
    >>> s, p = grpo_soft_coefficients(torch.tensor([0.1, 0.3]).log(), eps=0.0)
    >>> s, p
    (tensor([-0.3536,  0.3536]), tensor([0., 0.]))
    """
    check_log_w(log_w, min_m=2)
    out_dtype = _out_dtype(log_w)
    log_w = log_w.detach().to(torch.float64)
    M = log_w.shape[-1]
    log_max = log_w.amax(-1, keepdim=True)  # [..., 1]
    alive = torch.isfinite(log_max)  # rows with at least one w_m > 0
    u = torch.exp(log_w - torch.where(alive, log_max, 0.0))  # [..., M]  w_m / max_j w_j, exact from log w
    mean = u.mean(-1, keepdim=True)  # [..., 1]
    std = u.std(-1, keepdim=True)  # [..., 1]  unbiased, as grpo.py
    adv = torch.where(alive & (std > 0), (u - mean) / (std + eps), 0.0)  # [..., M]  A_m
    score_coef = adv / M
    return score_coef.to(out_dtype), torch.zeros_like(score_coef).to(out_dtype)


# ------------------------------------------------------------------------------------------------ RLPR
def _mean_token_probability(token_logp: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """mean over the masked tokens of exp(token log-prob), on the last dim; padding is never read."""
    mask = mask.bool()
    n = mask.sum(-1)
    if (n == 0).any():
        raise ValueError(f"{name}: every answer needs at least one token in its mask")
    token_logp = token_logp.detach().to(torch.float64)
    if torch.isnan(token_logp[mask]).any():
        raise ValueError(f"{name}: NaN log-probability inside the answer mask")
    p = torch.where(mask, torch.exp(torch.where(mask, token_logp, 0.0)), 0.0)  # [..., T]
    return p.sum(-1) / n


def rlpr_rewards(token_logp_y: torch.Tensor, y_mask: torch.Tensor,
                 base_token_logp_y: torch.Tensor, base_y_mask: torch.Tensor) -> torch.Tensor:
    """RLPR's debiased probability reward (arXiv 2506.18254): r_hat_m = clip(r_m - r_base, 0, 1).

    r_m = mean over y*'s tokens t of p(y*_t | x, z_m, y*_<t): a mean of PROBABILITIES, not of log-probs, so it
    is not a function of w_m = prod_t p(y*_t | ...). By AM-GM it is at least w_m^(1/T): a 3-token answer with
    w = 1e-9 can have r = 1/3. r_base is the same mean with no rationale (p(y*_t | x, y*_<t)); r - r_base is
    what the rationale adds. r <= 1 and r_base >= 0, so only the clip at 0 is ever active.

    Args:
        token_logp_y: [B, M, T] log p of each gold-answer token after rationale m (padding anywhere).
        y_mask: [B, M, T] 1 on y*'s tokens.
        base_token_logp_y: [B, T'] the same without a rationale.  base_y_mask: [B, T'].
    Returns:
        r_hat [B, M], in [0, 1].

    >>> rlpr_rewards(torch.tensor([[[0.5, 1.0], [0.2, 0.2]]]).log(), torch.ones(1, 2, 2),
    ...              torch.tensor([[0.3, 0.5]]).log(), torch.ones(1, 2))  # r = [.75, .2], r_base = .4
    tensor([[0.3500, 0.0000]])
    """
    if token_logp_y.dim() != 3 or y_mask.shape != token_logp_y.shape:
        raise ValueError(f"token_logp_y and y_mask must both be [B, M, T], got {tuple(token_logp_y.shape)} "
                         f"and {tuple(y_mask.shape)}")
    if base_token_logp_y.dim() != 2 or base_y_mask.shape != base_token_logp_y.shape \
            or base_token_logp_y.shape[0] != token_logp_y.shape[0]:
        raise ValueError(f"base_token_logp_y and base_y_mask must both be [B, T'] with B = {token_logp_y.shape[0]}, "
                         f"got {tuple(base_token_logp_y.shape)} and {tuple(base_y_mask.shape)}")
    r = _mean_token_probability(token_logp_y, y_mask, "token_logp_y")  # [B, M]
    r_base = _mean_token_probability(base_token_logp_y, base_y_mask, "base_token_logp_y")  # [B]
    r_hat = (r - r_base[:, None]).clamp(0.0, 1.0)  # [B, M]  fp64
    return r_hat.to(_out_dtype(token_logp_y))


def rlpr_coefficients(token_logp_y: torch.Tensor, y_mask: torch.Tensor,
                      base_token_logp_y: torch.Tensor, base_y_mask: torch.Tensor,
                      std_threshold: float = 0.0, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """RLPR (Yu et al., "RLPR: Extrapolating RLVR to General Domains without Verifiers", arXiv 2506.18254).

    Reward r_hat_m = clip(r_m - r_base, 0, 1) (rlpr_rewards), then GRPO's group normalization and RLPR's
    standard-deviation filter:

        A_m = (r_hat_m - mean(r_hat)) / (std(r_hat) + eps),  and A = 0 for a group with std(r_hat) < std_threshold
        score_coef_m = A_m / M,   path_coef_m = 0

    No verifier (the reference answer's probability is the reward) and no pathwise term: only the rationale
    is trained. Like GRPO-soft it has no objective (std normalization and filtering are heuristics); the
    formula is checked on a worked example in tests/test_related.py.

    Where the form comes from: the paper's text was not available here. The reward (mean of token
    probabilities), the debiasing (r - r_base, clipped below at 0: the "threshold_0" shaping) and the filter on
    the group's final-reward std come from RLPR's released code as seen in a public fork (sharkchill-xy/DPPR,
    "developed based on OpenBMB/RLPR"). There r_base is computed once, before training, with the initial model,
    and the threshold is adaptive: beta x an exponential moving average (0.99) of the batches' mean group std,
    beta = 0.5, from step 11; filtered prompts are replaced by fresh ones. This function takes the threshold as
    a number (the caller keeps the EMA: RLPRThreshold); groups under it contribute zero instead of being
    replaced. Also in that code and left out here: a format reward mixed in with weight 0.1, PPO clipping.
    eps = 1e-6 is verl's.

    Project choice, normalization: A_m / M on the rationale's sequence-level sum (GARL's contract). RLPR also
    trains the answer tokens the model wrote itself; this project's GARL rollouts stop at the thinking block
    (y* is teacher-forced), so there are none: a trainer that samples its own answer puts score_coef on them too.

    Args:
        token_logp_y, y_mask: [B, M, T].  base_token_logp_y, base_y_mask: [B, T'] (see rlpr_rewards).
        std_threshold: groups whose reward std (unbiased) is below it get zeros.  eps: as above.
    Returns:
        (score_coef, path_coef), each [B, M]; path_coef is 0.

    Worked example, one token per answer, base probability 0.1, M = 2: p = [0.5, 0.3] gives r_hat = [0.4, 0.2],
    A = +-1/sqrt(2) (up to eps), coef = A / 2; with std_threshold = 0.2 the group (std 0.141) is filtered out.
    >>> lp, m = torch.tensor([[[0.5], [0.3]]]).log(), torch.ones(1, 2, 1)
    >>> base, bm = torch.tensor([[0.1]]).log(), torch.ones(1, 1)
    >>> rlpr_coefficients(lp, m, base, bm)[0]
    tensor([[ 0.3536, -0.3536]])
    >>> rlpr_coefficients(lp, m, base, bm, std_threshold=0.2)[0]
    tensor([[0., 0.]])
    """
    r_hat = rlpr_rewards(token_logp_y.detach().double(), y_mask, base_token_logp_y, base_y_mask)  # [B, M] fp64
    score_coef = _rlpr_score_coef(r_hat, std_threshold, eps)  # [B, M]
    out_dtype = _out_dtype(token_logp_y)
    return score_coef.to(out_dtype), torch.zeros_like(score_coef).to(out_dtype)


def _rlpr_score_coef(r_hat: torch.Tensor, std_threshold: float, eps: float) -> torch.Tensor:
    """A_m / M from the rewards r_hat [B, M]: GRPO's group normalization, 0 for a group under the std threshold."""
    M = r_hat.shape[-1]
    if M < 2:
        raise ValueError(f"RLPR normalizes within a group: need M >= 2 samples per question, got {M}")
    mean = r_hat.mean(-1, keepdim=True)  # [B, 1]
    std = r_hat.std(-1, keepdim=True)  # [B, 1]  unbiased, as verl's GRPO
    keep = (std >= std_threshold) & (std > 0)  # [B, 1]  RLPR's std filter; std 0 has no signal anyway
    adv = torch.where(keep, (r_hat - mean) / (std + eps), 0.0)  # [B, M]  A_m
    return adv / M


def rlpr_step(token_logp_y: torch.Tensor, y_mask: torch.Tensor, base_token_logp_y: torch.Tensor,
              base_y_mask: torch.Tensor, threshold: "RLPRThreshold") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """train.py's step 3 for RLPR: rlpr_coefficients' numbers with the run's adaptive threshold, and what to log.

    Inputs as rlpr_rewards ([B, M, T] and [B, T'], train.rlpr_token_logprobs); threshold: the run's RLPRThreshold,
    updated here with this batch's mean group std (its threshold comes from the batches before it).
    Returns (score_coef, path_coef, stats): stats under stable names, rlpr/reward_mean (r_hat), rlpr/std_mean (the
    mean over groups of r_hat's std), rlpr/threshold, rlpr/filtered_frac (groups under the threshold).
    """
    r_hat = rlpr_rewards(token_logp_y.detach().double(), y_mask, base_token_logp_y, base_y_mask)  # [B, M] fp64
    r_std = r_hat.std(-1)  # [B] each group's reward std, the one the filter reads
    std_threshold = threshold.update(r_std.mean().item())  # set by the batches before this one
    score_coef = _rlpr_score_coef(r_hat, std_threshold, eps=1e-6).to(_out_dtype(token_logp_y))  # [B, M]
    path_coef = torch.zeros_like(score_coef)  # [B, M]: no pathwise term
    stats = {"rlpr/reward_mean": r_hat.mean().item(), "rlpr/std_mean": r_std.mean().item(),
             "rlpr/threshold": std_threshold, "rlpr/filtered_frac": (r_std < std_threshold).double().mean().item()}
    return score_coef, path_coef, stats


class RLPRThreshold:
    """RLPR's adaptive std threshold: the state rlpr_coefficients' caller keeps across steps (train.py: one per run).

    From RLPR's released code (as seen in the fork named in rlpr_coefficients): with s_k the mean over batch k's
    groups of their reward std (k = 1, 2, ... counts batches), the s_k of batches warmup .. start - 1 (6 .. 10) are
    averaged, and from batch `start` on an exponential moving average follows them:

        ema_k = decay ema_{k-1} + (1 - decay) s_k   (decay 0.99)
        threshold_k = 0 for k < start (11),   beta ema_{k-1} from then on (beta 0.5)

    A batch's threshold comes from the batches before it (that code sets it before the batch is generated).
    update(s_k) returns batch k's threshold, then records s_k; state_dict / load_state_dict carry the state
    across --resume.

    Worked example, warmup 2, start 4, decay 0.5, beta 0.5, s = [0.9, 0.2, 0.4, 0.8, 0.4]: batch 1 is before the
    window; batches 2-3 are averaged, ema = 0.3; batch 4's threshold is 0.5 x 0.3 = 0.15, then ema = 0.5 x 0.3 +
    0.5 x 0.8 = 0.55; batch 5's threshold is 0.5 x 0.55 = 0.275.
    >>> threshold = RLPRThreshold(beta=0.5, decay=0.5, warmup=2, start=4)
    >>> [round(threshold.update(s), 4) for s in [0.9, 0.2, 0.4, 0.8, 0.4]]
    [0.0, 0.0, 0.0, 0.15, 0.275]
    """

    def __init__(self, beta: float = 0.5, decay: float = 0.99, warmup: int = 6, start: int = 11):
        if not 1 <= warmup < start:
            raise ValueError(f"RLPRThreshold needs 1 <= warmup < start, got warmup {warmup}, start {start}")
        self.beta, self.decay, self.warmup, self.start = beta, decay, warmup, start
        self.batches = 0  # batches seen
        self.ema = 0.0  # the mean of s over the window, then the moving average

    def update(self, mean_std: float) -> float:
        """Batch k's threshold (from batches 1 .. k-1), then record its mean group std s_k = mean_std."""
        self.batches += 1
        k = self.batches
        threshold = self.beta * self.ema if k >= self.start else 0.0
        if self.warmup <= k < self.start:  # the window's running mean: the moving average starts from it
            self.ema += (mean_std - self.ema) / (k - self.warmup + 1)
        elif k >= self.start:
            self.ema = self.decay * self.ema + (1 - self.decay) * mean_std
        return threshold

    def state_dict(self) -> dict:
        return {"batches": self.batches, "ema": self.ema}

    def load_state_dict(self, state: dict):
        self.batches, self.ema = state["batches"], state["ema"]
