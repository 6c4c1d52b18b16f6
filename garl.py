"""GARL: Gradient-Amplified RL (paper Sec. 6.1, Algorithm 1, Eq. 12).

For one question x* with gold answer y*, draw M rationales z_1..z_M ~ p(z|x*) and score the gold
answer after each of them, teacher-forced:

    w_m = p(y* | x*, z_m)                    a likelihood, not a 0/1 reward: no verifier needed
    w_bar = (1/M) sum_m w_m                  estimates P = p(y*|x*)
    w_bar_{-m} = mean_{j != m} w_j           leave-one-out mean (RLOO baseline)
    c_m = w_m / w_bar^q - w_bar_{-m}^(1-q)   centred, amplified weight                    (Eq. 12)

    g = (1/M^q) (1/M) sum_m [ -c_m grad log p(z_m|x*) - (w_m / w_bar^q) grad log p(y*|x*,z_m) ]

The first term is the score-function (REINFORCE) term for the rationale, the second the pathwise
term through the teacher-forced answer (grad w_m = w_m grad log p(y*|x*,z_m)). q = 0 is RB-RLOO
(VeriFree, unbiased for grad of 1 - P); q = 1 is the self-normalized importance-sampling gradient of
-log P, times 1/M. Between them, w_bar^-q amplifies examples the model rarely solves.

Everything here is a pure function of plain tensors: copy it into any trainer. The trainer supplies
sequence-level log-probabilities (SUMS over tokens, not means).
"""
import torch

from qlog import check_log_w, check_q, log_mean_exp, loo_log_mean_exp


def garl_coefficients(log_w: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample GARL coefficients (Algorithm 1, Eq. 12), with the paper's 1/M^q normalization.

    Args:
        log_w: [..., M] detached log p(y*|x*, z_m). May hold -inf (a rationale that cannot produce y*).
        q: in [0, 1].
    Returns:
        (score_coef, path_coef), each [..., M]:
            score_coef_m = c_m / (M^q * M),   path_coef_m = (w_m / w_bar^q) / (M^q * M),
        so that the gradient of Algorithm 1 is
            -(score_coef * grad log p(z_m|x) + path_coef * grad log p(y*|x, z_m)).sum(-1).
        A row whose log-weights are all -inf (P estimate 0: no signal) gets zeros.

    Worked example, M = 2, q = 0 (plain RB-RLOO): w = [0.2, 0.6] gives c = [0.2 - 0.6, 0.6 - 0.2],
    score_coef = c / 2 and path_coef = w / 2.
    >>> s, p = garl_coefficients(torch.tensor([0.2, 0.6]).log(), q=0.0)
    >>> s, p
    (tensor([-0.2000,  0.2000]), tensor([0.1000, 0.3000]))
    """
    q = check_q(q)
    check_log_w(log_w, min_m=2)  # the leave-one-out baseline needs two samples
    out_dtype = torch.float64 if log_w.dtype == torch.float64 else torch.float32
    log_w = log_w.detach().to(torch.float64)  # coefficients are a few scalars: compute them in fp64
    M = log_w.shape[-1]

    log_w_bar = log_mean_exp(log_w).unsqueeze(-1)  # [..., 1]  log w_bar, the estimate of log P
    alive = torch.isfinite(log_w_bar)  # rows with at least one w_m > 0
    log_w_bar = torch.where(alive, log_w_bar, 0.0)  # dead rows: avoid q * -inf = NaN, zeroed below

    amplified = torch.exp(log_w - q * log_w_bar)  # [..., M]  w_m / w_bar^q
    if q == 1.0:
        baseline = torch.ones_like(amplified)  # w_bar_{-m}^0 = 1, also when w_bar_{-m} = 0
    else:
        baseline = torch.exp((1.0 - q) * loo_log_mean_exp(log_w))  # [..., M]  w_bar_{-m}^(1-q)
    c = amplified - baseline  # [..., M]  centred weight c_m (Eq. 12)

    norm = M**q * M  # the paper's 1/M^q times the 1/M of the sample mean
    score_coef = torch.where(alive, c / norm, 0.0)
    path_coef = torch.where(alive, amplified / norm, 0.0)
    return score_coef.to(out_dtype), path_coef.to(out_dtype)


def garl_loss(logp_z: torch.Tensor, logp_y: torch.Tensor, q: float) -> torch.Tensor:
    """Surrogate loss whose gradient is Algorithm 1's GARL gradient (Eq. 12), averaged over B questions.

    Args:
        logp_z: [B, M] log p(z_m|x*), summed over the rationale's tokens, with gradient.
        logp_y: [B, M] log p(y*|x*, z_m), summed over the gold answer's tokens, with gradient.
            Its detached value is log w_m.
    Returns:
        mean_B of -(score_coef * logp_z + path_coef * logp_y).sum(-1). Only its gradient means
        anything; for a loss value to log, use qlog.q_loss_of_log(log w_bar, q).

    >>> logp_z = torch.zeros(1, 2, requires_grad=True)
    >>> garl_loss(logp_z, torch.tensor([[0.2, 0.6]]).log(), q=0.0).backward()
    >>> logp_z.grad   # -score_coef
    tensor([[ 0.2000, -0.2000]])
    """
    if logp_z.shape != logp_y.shape:
        raise ValueError(f"logp_z {tuple(logp_z.shape)} and logp_y {tuple(logp_y.shape)} must have the same shape")
    score_coef, path_coef = garl_coefficients(logp_y.detach(), q)  # [B, M] each
    per_question = -(score_coef.to(logp_z.dtype) * logp_z + path_coef.to(logp_y.dtype) * logp_y).sum(-1)  # [B]
    return per_question.mean()


@torch.no_grad()
def garl_stats(log_w: torch.Tensor, q: float) -> dict[str, float]:
    """The two quantities the paper monitors (Sec. 6.1), over a batch log_w [B, M]:

    w_bar (mean/min/max over questions, the estimate of P) and the maximum amplified advantage
    max_m c_m / M^q (large values mean a few rare successes get huge weight).

    >>> round(garl_stats(torch.tensor([[0.2, 0.6]]).log(), q=0.0)["w_bar_mean"], 6)
    0.4
    """
    score_coef, _ = garl_coefficients(log_w, q)  # [B, M]
    M = log_w.shape[-1]
    w_bar = log_mean_exp(log_w.double()).exp()  # [B]
    return {
        "w_bar_mean": w_bar.mean().item(),
        "w_bar_min": w_bar.min().item(),
        "w_bar_max": w_bar.max().item(),
        "max_amplified_advantage": (score_coef * M).max().item(),  # score_coef * M = c_m / M^q
    }

