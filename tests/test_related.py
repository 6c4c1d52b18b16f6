"""Exact checks of related.py (LaTRO, MaxRL, GRPO-soft, RLPR) and of VeriFree = GARL at q = 0.

The model is test_all.py's enumerable latent-variable model (Toy: K_Z rationales, K_Y answers, y* = 0) and its
exact expectation over all M-tuples of rationales (expected_gradient). Where a method has an objective, its
expected gradient must equal the objective's gradient to float64 precision, with no sampling: LaTRO (grad of
-E_z[log w]), MaxRL (grad of sum_{k<M} (1-P)^k / k), VeriFree (grad of 1 - P). GRPO-soft and RLPR divide by
the group's own std and have no objective: their formulas are checked on worked examples computed by hand.
"""
import doctest
import itertools
import math

import pytest
import torch

import garl
import related
from related import grpo_soft_coefficients, latro_coefficients, maxrl_coefficients, rlpr_coefficients, rlpr_rewards
from test_all import K_Z, Toy, expected_gradient

INF = float("inf")


def expected_gradient_own_answer(toy, M, coef_fn):
    """Exact E over M i.i.d. (z_m, y_m), z ~ p(z), y ~ p(y|z), of -(sum_m s_m grad log p(z_m) + p_m grad log p(y_m|z_m)),
    for a verifier-reward estimator: (s, p) = coef_fn(r) with r_m = [y_m = y*] in {0, 1}, shape [C, M].

    The coefficients see only r_m, so the wrong answers can be lumped into one outcome "y != y*" exactly:
    sum_{y != y*} p(y|z) grad log p(y|z) = grad p(y != y*|z). Outcomes are the 2 K_Z pairs (z, r); as in
    test_all.expected_gradient we sum over count vectors with multinomial probabilities.
    """
    lz, ly = toy.logp_z_all(), toy.logp_y_all()  # [K_Z] each
    ln = torch.log1p(-ly.exp())  # [K_Z]  log p(y != y* | z)
    G = {name: torch.stack([toy.grad(v[k]) for k in range(K_Z)]) for name, v in (("z", lz), ("yes", ly), ("no", ln))}
    with torch.no_grad():
        log_p_outcome = torch.stack([lz + ln, lz + ly], -1).reshape(-1)  # [2 K_Z]  outcome o = 2 z + r
    K = 2 * K_Z
    counts = [c for c in itertools.product(range(M + 1), repeat=K) if sum(c) == M]
    o = torch.tensor([[k for k in range(K) for _ in range(c[k])] for c in counts])  # [C, M]
    n = torch.tensor(counts, dtype=torch.float64)  # [C, K]
    prob = (math.lgamma(M + 1) - torch.lgamma(n + 1).sum(-1) + (n * log_p_outcome).sum(-1)).exp()  # [C]
    z, r = o // 2, (o % 2).to(torch.float64)  # [C, M] each
    score, path = coef_fn(r)  # [C, M] each
    onehot = torch.nn.functional.one_hot(z, K_Z).to(torch.float64)  # [C, M, K_Z]
    A_z = torch.einsum("c,cm,cmk->k", prob, score.double(), onehot)
    A_yes = torch.einsum("c,cm,cmk->k", prob, path.double() * r, onehot)
    A_no = torch.einsum("c,cm,cmk->k", prob, path.double() * (1 - r), onehot)
    return -(A_z @ G["z"] + A_yes @ G["yes"] + A_no @ G["no"])


# ----------------------------------------------------------------------------- VeriFree = GARL at q = 0

def verifree_coefficients(w):
    """VeriFree (arXiv 2505.21493) as its paper states it, from w directly: RLOO on R = w for z, R-weighted SFT for y*."""
    M = w.shape[-1]
    others = (w.sum(-1, keepdim=True) - w) / (M - 1)  # mean_{m' != m} w_{m'}
    return (w - others) / M, w / M


def test_verifree_is_garl_at_q0():
    w = torch.tensor([[0.1, 0.4, 0.0, 0.3], [0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 1e-30, 0.9]], dtype=torch.float64)
    for got, want in zip(garl.garl_coefficients(w.log(), 0.0), verifree_coefficients(w)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # And VeriFree's formula is unbiased for grad(1 - P), the q = 0 loss, over all M-tuples.
    toy = Toy(seed=11)
    torch.testing.assert_close(expected_gradient(toy, 3, lambda lw: verifree_coefficients(lw.exp())),
                               toy.exact_grad(0.0))


# ----------------------------------------------------------------------------- LaTRO

@pytest.mark.parametrize("M", [2, 3])
def test_latro_expected_gradient_is_grad_of_expected_log_w(M):
    """E over all M-tuples of LaTRO's estimator = grad of its loss -E_z[log w]: exact, float64.

    That loss is an upper bound on q = 1's l_1 = -log P (Jensen), strict here since w depends on z.
    """
    toy = Toy(seed=12)
    loss = -(toy.logp_z_all().exp() * toy.logp_y_all()).sum()  # -E_z[log p(y*|z)]
    torch.testing.assert_close(expected_gradient(toy, M, latro_coefficients), toy.grad(loss))
    assert loss.item() > -math.log(toy.P().item()) + 1e-3


def test_latro_worked_example_and_minus_inf():
    # M = 3, log w = [-1, -2, -6]: leave-one-out means [-4, -3.5, -1.5], c = [3, 1.5, -4.5], / 3.
    score, path = latro_coefficients(torch.tensor([[-1.0, -2.0, -6.0]], dtype=torch.float64))
    torch.testing.assert_close(score, torch.tensor([[1.0, 0.5, -1.5]], dtype=torch.float64))
    torch.testing.assert_close(path, torch.full((1, 3), 1 / 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"-inf.*impossible"):  # Project choice: no silent floor
        latro_coefficients(torch.tensor([[-1.0, -INF, -2.0]]))
    score, _ = latro_coefficients(torch.tensor([[-1.0, -INF, -2.0]]).clamp(min=-1e4))  # the caller's floor works
    assert torch.isfinite(score).all()
    with pytest.raises(ValueError, match="at least M=2"):
        latro_coefficients(torch.zeros(2, 1))


# ----------------------------------------------------------------------------- MaxRL

@pytest.mark.parametrize("M", [2, 3, 4])
def test_maxrl_expected_gradient_is_grad_of_truncated_log_p(M):
    """E over all M-tuples of (rationale, own answer) = grad of sum_{k=1}^{M-1} (1-P)^k / k = -grad J^(M-1).

    M = 2 is plain RLVR (grad(1 - P)); as M grows the loss tends to -log P (the series of log P in (1-P)).
    """
    toy = Toy(seed=13)
    P = toy.P()
    loss = sum((1 - P) ** k / k for k in range(1, M))
    torch.testing.assert_close(expected_gradient_own_answer(toy, M, maxrl_coefficients), toy.grad(loss))


def test_maxrl_is_garl_q1_centred_weight_on_the_binary_reward():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0], [0.0] * 4, [1.0] * 4], dtype=torch.float64)
    score, path = maxrl_coefficients(r)
    M = r.shape[-1]
    torch.testing.assert_close(score, M * garl.garl_coefficients(r.log(), 1.0)[0])  # GARL q = 1: (w/w_bar - 1) / M^2
    torch.testing.assert_close(path, score)  # the whole sequence is the model's own sample
    assert (score[2:] == 0).all()  # r_bar = 0 (no success) and all correct: no signal


def test_maxrl_worked_example_lengths_and_bad_input():
    # M = 4, two successes: r_bar = 1/2, A = (r - 1/2) / (1/2) = [1, -1, 1, -1].
    r = torch.tensor([[1, 0, 1, 0]])
    score, path = maxrl_coefficients(r)
    torch.testing.assert_close(score, torch.tensor([[0.25, -0.25, 0.25, -0.25]]))
    assert score.dtype == torch.float32
    # With lengths: grpo.py's per-sequence token mean, A / (|o| M); a length of 0 counts as 1.
    score, path = maxrl_coefficients(r, lengths=torch.tensor([[2, 4, 0, 1]]))
    torch.testing.assert_close(score, torch.tensor([[1 / 8, -1 / 16, 1 / 4, -1 / 4]]))
    torch.testing.assert_close(path, score)
    with pytest.raises(ValueError, match="0 or 1"):
        maxrl_coefficients(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="M >= 2"):
        maxrl_coefficients(torch.ones(3, 1))


# ----------------------------------------------------------------------------- GRPO-soft

def test_grpo_soft_worked_example():
    """By hand: w = [0.1, 0.2, 0.6], mean 0.3, unbiased std sqrt(0.14 / 2); eps is in units of max w = 0.6."""
    eps = 1e-3
    score, path = grpo_soft_coefficients(torch.tensor([[0.1, 0.2, 0.6]], dtype=torch.float64).log(), eps=eps)
    std = math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + (0.6 - 0.3) ** 2) / 2)
    hand = [(w - 0.3) / (std + eps * 0.6) / 3 for w in (0.1, 0.2, 0.6)]
    torch.testing.assert_close(score, torch.tensor([hand], dtype=torch.float64))
    assert (path == 0).all()  # no pathwise term


def test_grpo_soft_is_scale_free_and_q1_direction():
    log_w = torch.tensor([[-2.0, -1.0, -3.5, -1.2], [-0.1, -9.0, -INF, -4.0]], dtype=torch.float64)
    score, _ = grpo_soft_coefficients(log_w)
    # w scaled by e^-69 ~ 1e-30 (and by e^-690 ~ 1e-300): the same coefficients, P's scale is gone.
    for shift in (69.0, 690.0):
        torch.testing.assert_close(grpo_soft_coefficients(log_w - shift)[0], score, rtol=1e-12, atol=1e-15)
    assert (score.abs() > 0.05).any(dim=-1).all()  # not washed out by eps
    # Per group: q = 1's centred weight (w / w_bar - 1) times w_bar / std(w) (eps = 0).
    w = log_w.exp()
    M = w.shape[-1]
    q1 = garl.garl_coefficients(log_w, 1.0)[0] * M  # (w / w_bar - 1) / M
    torch.testing.assert_close(grpo_soft_coefficients(log_w, eps=0.0)[0],
                               q1 * w.mean(-1, keepdim=True) / w.std(-1, keepdim=True))


def test_grpo_soft_trains_the_rationale_only_and_dead_rows():
    toy = Toy(seed=14)
    g = expected_gradient(toy, 3, grpo_soft_coefficients)
    assert (g[K_Z:] == 0).all() and g[:K_Z].abs().max() > 1e-3  # theta_y (the answer) never moves
    log_w = torch.tensor([[-1.0, -1.0, -1.0], [-INF] * 3, [0.0, -INF, -INF]])
    score, path = grpo_soft_coefficients(log_w)
    assert (score[:2] == 0).all() and (path == 0).all()  # equal weights (all -inf included): no signal
    torch.testing.assert_close(score[2], torch.tensor([2.0, -1.0, -1.0]) / math.sqrt(3) / 3, rtol=1e-3, atol=0)


# ----------------------------------------------------------------------------- RLPR

def test_rlpr_worked_example():
    """By hand, M = 3, answers of 2 tokens padded to 3 (the padding holds NaN: never read).

    r = mean token probability = [0.7, 0.3, 0.9]; r_base = mean(0.4, 0.6) = 0.5; r_hat = clip(r - 0.5, 0, 1)
    = [0.2, 0, 0.4] (the second is clipped); mean 0.2, unbiased std 0.2; A = [0, -1, 1] * 0.2 / (0.2 + eps).
    """
    nan = float("nan")
    lp = torch.tensor([[[0.5, 0.9, nan], [0.2, 0.4, nan], [0.9, 0.9, nan]]], dtype=torch.float64).log()
    mask = torch.tensor([[[1, 1, 0]] * 3])
    base, base_mask = torch.tensor([[0.4, 0.6, nan]], dtype=torch.float64).log(), torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(rlpr_rewards(lp, mask, base, base_mask), torch.tensor([[0.2, 0.0, 0.4]], dtype=torch.float64))
    eps = 1e-3
    score, path = rlpr_coefficients(lp, mask, base, base_mask, eps=eps)
    hand = torch.tensor([[0.0, -1.0, 1.0]], dtype=torch.float64) * 0.2 / (0.2 + eps) / 3
    torch.testing.assert_close(score, hand)
    assert (path == 0).all()


def test_rlpr_std_filter():
    # Group 0: r_hat = [0.2, 0.0, 0.4] (std 0.2); group 1: r_hat = [0.10, 0.05, 0.00] (std 0.05). Base prob 0.
    p = torch.tensor([[0.2, 0.0, 0.4], [0.10, 0.05, 0.00]], dtype=torch.float64)
    lp, mask = p.log()[..., None], torch.ones(2, 3, 1)
    base, base_mask = torch.full((2, 1), -INF, dtype=torch.float64), torch.ones(2, 1)
    unfiltered, _ = rlpr_coefficients(lp, mask, base, base_mask)
    assert (unfiltered.abs() > 1e-12).sum() == 4  # each group's median sample has A = 0
    filtered, _ = rlpr_coefficients(lp, mask, base, base_mask, std_threshold=0.1)
    torch.testing.assert_close(filtered[0], unfiltered[0])  # std 0.2 >= 0.1: kept as is
    assert (filtered[1] == 0).all()  # std 0.05 < 0.1: contributes nothing
    equal = torch.full((1, 3, 1), math.log(0.3), dtype=torch.float64)
    assert (rlpr_coefficients(equal, torch.ones(1, 3, 1), base[:1], base_mask[:1])[0] == 0).all()  # all-equal rewards


def test_rlpr_reward_is_not_a_function_of_w():
    """AM-GM: the mean token probability is at least w^(1/T); with one token and no base it is w itself,
    and then RLPR's coefficients are GRPO-soft's (eps = 0)."""
    g = torch.Generator().manual_seed(0)
    lp = -5 * torch.rand(4, 3, 5, generator=g, dtype=torch.float64)  # [B, M, T]
    no_base, ones = torch.full((4, 1), -INF, dtype=torch.float64), torch.ones(4, 1)
    r = rlpr_rewards(lp, torch.ones_like(lp), no_base, ones)
    assert (r > lp.mean(-1).exp() + 1e-3).all() and (r > 10 * lp.sum(-1).exp()).all()  # > geometric mean > w
    torch.testing.assert_close(rlpr_coefficients(lp[..., :1], torch.ones(4, 3, 1), no_base, ones, eps=0.0)[0],
                               grpo_soft_coefficients(lp[..., 0], eps=0.0)[0])


def test_rlpr_bad_shapes():
    lp, mask = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    base, base_mask = torch.zeros(2, 4), torch.ones(2, 4)
    with pytest.raises(ValueError, match=r"\[B, M, T\]"):
        rlpr_coefficients(lp, mask[..., :3], base, base_mask)
    with pytest.raises(ValueError, match=r"\[B, T'\]"):
        rlpr_coefficients(lp, mask, base[:1], base_mask[:1])
    with pytest.raises(ValueError, match="at least one token"):
        rlpr_coefficients(lp, torch.zeros_like(mask), base, base_mask)
    with pytest.raises(ValueError, match="M >= 2"):
        rlpr_coefficients(lp[:, :1], mask[:, :1], base, base_mask)


def test_rlpr_threshold_worked_example_and_resume():
    """RLPR's defaults (beta 0.5, decay 0.99, window 6-10, filter from batch 11), by hand. Batches 1-5 are not
    recorded; batches 6-10's mean stds [0.1 .. 0.5] average to 0.3; batch 11's threshold is 0.5 x 0.3 = 0.15 (from
    the batches before it: its own 0.9 does not count), then ema = 0.99 x 0.3 + 0.01 x 0.9 = 0.306; batch 12's
    threshold is 0.153, then ema = 0.99 x 0.306 + 0.01 x 0.1 = 0.30394; batch 13's is 0.15197."""
    stds = [1.0] * 5 + [0.1, 0.2, 0.3, 0.4, 0.5] + [0.9, 0.1, 0.7]
    threshold = related.RLPRThreshold()
    got = [threshold.update(s) for s in stds]
    assert got[:10] == [0.0] * 10
    assert got[10:] == pytest.approx([0.15, 0.153, 0.15197], abs=1e-12)
    again = related.RLPRThreshold()  # --resume after batch 11: the state carries the moving average over
    for s in stds[:11]:
        again.update(s)
    resumed = related.RLPRThreshold()
    resumed.load_state_dict(again.state_dict())
    assert [resumed.update(s) for s in stds[11:]] == got[11:]
    with pytest.raises(ValueError, match="warmup < start"):
        related.RLPRThreshold(warmup=11, start=11)


# ----------------------------------------------------------------------------- all of them

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(dtype):
    B, M, T = 2, 4, 3
    log_w = -torch.rand(B, M, dtype=dtype) * 3
    lp = -torch.rand(B, M, T, dtype=dtype)
    outs = {"latro": latro_coefficients(log_w), "grpo_soft": grpo_soft_coefficients(log_w),
            "maxrl": maxrl_coefficients((log_w > -1.5).to(dtype)),
            "rlpr": rlpr_coefficients(lp, torch.ones(B, M, T), -torch.rand(B, T, dtype=dtype), torch.ones(B, T))}
    for name, (score, path) in outs.items():
        assert score.shape == path.shape == (B, M), name
        assert score.dtype == path.dtype == dtype, name
        assert torch.isfinite(score).all() and torch.isfinite(path).all(), name


def test_docstring_examples():
    results = doctest.testmod(related)
    assert results.failed == 0 and results.attempted >= 8


def test_train_py_dispatches_each_name_to_its_estimator():
    """train.py --estimator NAME reaches related_coefficients(NAME, ...): each name gives its own function's
    coefficients, and the verifier methods (grpo, maxrl) are the ones whose rollouts write answers (verified)."""
    log_w = torch.tensor([[-1.0, -3.0, -2.0], [-0.5, -0.5, -4.0]], dtype=torch.float64)  # [B, M]
    reward = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)  # [B, M]
    for name, expected in [("latro", related.latro_coefficients(log_w)),
                           ("grpo-soft", related.grpo_soft_coefficients(log_w)),
                           ("maxrl", related.maxrl_coefficients(reward))]:
        got = related.related_coefficients(name, log_w=log_w, reward=reward)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), name
    assert [related.verified(n) for n in ("garl", "paft", "grpo", "latro", "maxrl", "grpo-soft")] == \
        [False, False, True, False, True, False]
    with pytest.raises(ValueError, match="call rlpr_coefficients"):  # RLPR takes per-token log-probs, not log w
        related.related_coefficients("rlpr", log_w=log_w)
    with pytest.raises(ValueError, match="unknown related estimator"):
        related.related_coefficients("ppo", log_w=log_w)
