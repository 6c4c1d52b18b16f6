"""PAFT: Posterior-Attenuated Fine-Tuning (paper Sec. 6.2, Algorithm 2, Eq. 14).

Same M prior samples z_1..z_M ~ p(z|x*) and the same weights w_m = p(y*|x*, z_m) as GARL. Then
importance-resample K indices with replacement from the approximate posterior,

    r_k ~ Categorical(w / sum_j w_j),  k = 1..K                         (K = M = 32 in the paper)

and take a plain SFT step on the resampled (rationale + gold answer) sequences, attenuated:

    g = -(w_bar^(1-q) / (M^q K)) sum_k grad log p(z_{r_k}, y* | x*)                       (Eq. 14)

Given the pool, E[PAFT] is GARL's plug-in gradient without the baseline (Prop. D.3), for every M;
its variance is at least GARL's (Prop. D.4). In exchange PAFT is just SFT on self-generated
rationales, which any SFT trainer can run.

Duplicated indices are the same sequence, so we write the sum over k as a sum over m with the
resampling counts n_m: coef_m = (n_m / K) w_bar^(1-q) / M^q. A sequence with n_m = 0 needs no
gradient pass at all, and one drawn n_m times is trained once with weight n_m.
"""
import torch

from qlog import check_log_w, check_q, log_mean_exp


def paft_resample(log_w: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Counts n [..., M] of K draws with replacement from Categorical(softmax(log_w)) (Alg. 2).

    n ~ Multinomial(K, w / sum w); integers that sum to K on every row. An all -inf row has no
    posterior: it gets zeros (its coefficients are zero anyway).

    >>> paft_resample(torch.tensor([[0.0, float("-inf")]]), k=3)
    tensor([[3, 0]])
    """
    if k < 1:
        raise ValueError(f"PAFT needs K >= 1 resampled indices, got K={k}")
    lead, M = log_w.shape[:-1], log_w.shape[-1]
    flat = log_w.detach().to(torch.float64).reshape(-1, M)  # [N, M]
    alive = torch.isfinite(torch.logsumexp(flat, dim=-1))  # [N]
    # torch.multinomial wants a valid distribution on every row: give dead rows a uniform one, then zero them.
    probs = torch.where(alive[:, None], torch.softmax(flat, dim=-1), 1.0 / M)  # [N, M]
    idx = torch.multinomial(probs, k, replacement=True, generator=generator)  # [N, K]  r_k
    counts = torch.zeros_like(flat, dtype=torch.long).scatter_add_(1, idx, torch.ones_like(idx))  # [N, M]  n_m
    counts = torch.where(alive[:, None], counts, 0)
    return counts.reshape(*lead, M)


def paft_coefficients(log_w: torch.Tensor, q: float, k: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample PAFT coefficients (Algorithm 2, Eq. 14): coef_m = (n_m / K) * w_bar^(1-q) / M^q.

    Args:
        log_w: [..., M] detached log p(y*|x*, z_m); may hold -inf.
        q: in [0, 1].  k: number of resampled indices K (default M).
        generator: a torch.Generator, for reproducible resampling.
    Returns:
        coef [..., M], so that the PAFT gradient is -(coef * grad log p(z_m, y*|x)).sum(-1).
        E[coef_m] over the resampling = w_m w_bar^(-q) / (M^q M), GARL's plug-in path weight.
        An all -inf row gives zeros.

    Worked example, q = 1, M = 2: w_bar^0 = 1, so coef = counts / (K * M): every resampled
    sequence gets SFT weight 1/(K M).
    >>> paft_coefficients(torch.tensor([0.0, float("-inf")]), q=1.0, k=4)
    tensor([0.5000, 0.0000])
    """
    q = check_q(q)
    check_log_w(log_w, min_m=1)
    out_dtype = torch.float64 if log_w.dtype == torch.float64 else torch.float32
    log_w = log_w.detach().to(torch.float64)
    M = log_w.shape[-1]
    K = M if k is None else int(k)

    counts = paft_resample(log_w, K, generator)  # [..., M]  n_m, integers summing to K
    log_w_bar = log_mean_exp(log_w).unsqueeze(-1)  # [..., 1]
    alive = torch.isfinite(log_w_bar)
    attenuation = torch.exp((1.0 - q) * torch.where(alive, log_w_bar, 0.0)) / M**q  # [..., 1]  w_bar^(1-q) / M^q
    coef = counts.to(torch.float64) / K * attenuation  # [..., M]
    return torch.where(alive, coef, 0.0).to(out_dtype)


def paft_loss(logp_z: torch.Tensor, logp_y: torch.Tensor, q: float, k: int | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Surrogate loss whose gradient is PAFT's (Eq. 14), averaged over B questions.

    Args:
        logp_z, logp_y: [B, M] sequence-level log-probs (sums over tokens) with gradient; the
            detached logp_y is log w_m. Their sum is log p(z_m, y*|x*), the SFT log-likelihood.
    Returns:
        mean_B of -(coef * (logp_z + logp_y)).sum(-1).

    >>> logp_y = torch.tensor([[0.0, float("-inf")]])
    >>> logp_z = torch.zeros(1, 2, requires_grad=True)
    >>> paft_loss(logp_z, logp_y.clamp(min=-1e4), q=1.0, k=2).backward(); logp_z.grad
    tensor([[-0.5000, -0.0000]])
    """
    if logp_z.shape != logp_y.shape:
        raise ValueError(f"logp_z {tuple(logp_z.shape)} and logp_y {tuple(logp_y.shape)} must have the same shape")
    coef = paft_coefficients(logp_y.detach(), q, k, generator).to(logp_z.dtype)  # [B, M]
    return -(coef * (logp_z + logp_y)).sum(-1).mean()
