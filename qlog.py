"""The Tsallis q-logarithm, the J_Q loss family, and the log-space helpers the estimators share.

Paper: Lin & Ie, "How Fast Should a Model Commit to Supervision?", arXiv 2604.25907, Sec. 3.

    ln_q(u) = (u^(1-q) - 1) / (1 - q),   ln_1(u) = log u                        (Eq. 1)
    l_q(P)  = -ln_q(P) = (1 - P^(1-q)) / (1 - q)                                 (Eq. 3)

q = 0 gives 1 - P (RLVR, the "exploitation pole"); q = 1 gives -log P (marginal likelihood, the
"density-estimation pole"). Every function takes q in [0, 1] and works on Python floats and on
torch tensors. All formulas go through log u and expm1/log1p, so they stay exact as q -> 1
(at q = 1 - 1e-9, ln_q equals log to ~1e-9) and never form u^(1-q) - 1 by subtraction.
"""
import math

import torch


def check_q(q: float) -> float:
    """Return q as a float, or raise ValueError if it is outside [0, 1] (the J_Q family)."""
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1] (the J_Q loss family), got q={q}")
    return q


def check_log_w(log_w: torch.Tensor, min_m: int) -> None:
    """Raise ValueError unless log_w is [..., M] with M >= min_m, holding log-weights (finite or -inf)."""
    if log_w.dim() == 0 or log_w.shape[-1] < min_m:
        raise ValueError(f"need at least M={min_m} samples on the last dim of log_w, got shape {tuple(log_w.shape)}")
    if torch.isnan(log_w).any() or (log_w == float("inf")).any():
        raise ValueError("log_w must hold log-probabilities (finite or -inf); got NaN or +inf")


def _apply(fn, x):
    """Run a tensor function on a float or a tensor; floats go through float64 and come back."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    return fn(torch.tensor(float(x), dtype=torch.float64)).item()


def ln_q_of_log(log_u, q: float):
    """ln_q(u) computed from log u: expm1((1-q) log u) / (1-q)  (Eq. 1 in log space).

    >>> round(ln_q_of_log(math.log(0.5), 0.0), 6)   # q = 0: u - 1
    -0.5
    >>> round(ln_q_of_log(math.log(0.5), 1.0), 6)   # q = 1: log u
    -0.693147
    """
    q = check_q(q)
    if q == 1.0:
        return log_u
    return _apply(lambda t: torch.expm1((1.0 - q) * t) / (1.0 - q), log_u)


def ln_q(u, q: float):
    """Tsallis q-logarithm (Eq. 1): ln_q(u) = (u^(1-q) - 1)/(1-q), ln_1 = log; d/du ln_q(u) = u^(-q).

    u >= 0; ln_q(0) = -1/(1-q) for q < 1 and -inf at q = 1.

    >>> ln_q(0.25, 0.5)   # (0.25^0.5 - 1) / 0.5
    -1.0
    """
    if (u < 0).any() if isinstance(u, torch.Tensor) else u < 0:
        raise ValueError("ln_q is defined for u >= 0 (a probability)")
    return ln_q_of_log(_apply(torch.log, u), q)


def exp_q(x, q: float):
    """The q-exponential, inverse of ln_q (Eq. 1): exp_q(x) = [1 + (1-q) x]_+^(1/(1-q)), exp_1 = exp.

    >>> round(exp_q(ln_q(0.3, 0.75), 0.75), 12)
    0.3
    """
    q = check_q(q)
    if q == 1.0:
        return _apply(torch.exp, x)

    def f(t):
        base = (1.0 - q) * t  # 1 + base is the bracket; below zero the q-exponential is 0
        safe = torch.where(base > -1.0, base, torch.zeros_like(base))
        return torch.where(base > -1.0, torch.exp(torch.log1p(safe) / (1.0 - q)), torch.zeros_like(t))

    return _apply(f, x)


def q_loss(p, q: float):
    """Per-example loss l_q = -ln_q(P) (Eq. 3). q = 0: 1 - P. q = 1: -log P.

    >>> q_loss(0.5, 0.0), round(q_loss(0.5, 1.0), 6)
    (0.5, 0.693147)
    """
    return -ln_q(p, q)


def q_loss_of_log(log_p, q: float):
    """l_q (Eq. 3) from log P: -expm1((1-q) log P)/(1-q). Use it when P underflows (P = e^-500 is fine)."""
    return -ln_q_of_log(log_p, q)


def log_mean_exp(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(mean_m exp(log_w_m)) without leaving log space: logsumexp - log M.

    This is log w_bar, the log of the Monte Carlo estimate of P = p(y*|x*) (Sec. 6.1).
    A row that is all -inf (no rationale can produce y*) gives -inf, never NaN.

    >>> log_mean_exp(torch.log(torch.tensor([0.1, 0.3]))).exp()
    tensor(0.2000)
    """
    M = log_w.shape[dim]
    return torch.logsumexp(log_w, dim=dim) - math.log(M)


def loo_log_mean_exp(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Leave-one-out means in log space: out_m = log(mean_{j != m} exp(log_w_j)), shape of log_w.

    This is log w_bar_{-m}, the RLOO baseline of GARL (Eq. 12). We mask the diagonal of an
    [..., M, M] copy instead of computing log(sum - w_m): the subtraction cancels catastrophically
    when w_m dominates the sum. The O(M^2) cost is nothing next to a forward pass.

    >>> loo_log_mean_exp(torch.log(torch.tensor([0.1, 0.3, 0.5]))).exp()   # [(.3+.5)/2, (.1+.5)/2, (.1+.3)/2]
    tensor([0.4000, 0.3000, 0.2000])
    """
    log_w = log_w.movedim(dim, -1)
    M = log_w.shape[-1]
    if M < 2:
        raise ValueError(f"a leave-one-out mean needs at least 2 samples, got M={M}")
    eye = torch.eye(M, dtype=torch.bool, device=log_w.device)
    others = log_w.unsqueeze(-2).expand(*log_w.shape[:-1], M, M).masked_fill(eye, float("-inf"))  # [..., M, M]
    out = torch.logsumexp(others, dim=-1) - math.log(M - 1)  # [..., M]
    return out.movedim(-1, dim)
