"""Exact checks of the q-logarithm and the GARL, PAFT and GRPO estimators.

The workhorse is a latent-variable model small enough to enumerate: K_Z latent "rationales" z with
prior softmax(theta_z), and an answer distribution softmax(theta_y[z]) over K_Y answers; the gold
answer is y* = 0. Then P = sum_z p(z) p(y*|z) is exact, autograd gives the exact gradient of
l_q = -ln_q(P), and the expectation of an estimator over all M-tuples of rationales is a finite sum.
"""
import doctest
import itertools
import math
import re
from pathlib import Path

import pytest
import torch

import garl
import grpo
import paft
import presets
import qlog
from garl import garl_coefficients, garl_loss, garl_stats
from grpo import grpo_advantages, grpo_coefficients, grpo_loss
from paft import paft_coefficients, paft_loss, paft_resample
from qlog import exp_q, ln_q, log_mean_exp, loo_log_mean_exp, q_loss, q_loss_of_log

K_Z, K_Y = 3, 2
QS = [0.0, 0.25, 0.5, 0.75, 1.0]


class Toy:
    """p(z) = softmax(theta_z), p(y|z) = softmax(theta_y[z]); all float64."""

    def __init__(self, seed=0, scale=1.0):
        g = torch.Generator().manual_seed(seed)
        self.theta = (scale * torch.randn(K_Z + K_Z * K_Y, generator=g, dtype=torch.float64)).requires_grad_()

    def logp_z_all(self):  # [K_Z]  log p(z)
        return torch.log_softmax(self.theta[:K_Z], -1)

    def logp_y_all(self):  # [K_Z]  log p(y*=0 | z)
        return torch.log_softmax(self.theta[K_Z:].view(K_Z, K_Y), -1)[:, 0]

    def P(self):
        return torch.exp(self.logp_z_all() + self.logp_y_all()).sum()

    def grad(self, scalar):
        (g,) = torch.autograd.grad(scalar, self.theta, retain_graph=True)
        return g

    def exact_grad(self, q):  # grad of l_q = -ln_q(P)
        return self.grad(q_loss(self.P(), q))

    def per_value_grads(self):  # G_z[k] = grad log p(z=k), G_y[k] = grad log p(y*|z=k); [K_Z, D] each
        lz, ly = self.logp_z_all(), self.logp_y_all()
        return (torch.stack([self.grad(lz[k]) for k in range(K_Z)]),
                torch.stack([self.grad(ly[k]) for k in range(K_Z)]))


def expected_gradient(toy, M, coef_fn):
    """Exact E over z_1..z_M ~ p(z) of -(sum_m s_m grad log p(z_m) + p_m grad log p(y*|z_m)).

    The estimators depend on the multiset of sampled values only, so we sum over count vectors
    (n_0..n_{K-1}) with multinomial probabilities instead of over K^M tuples. The gradient is
    linear in the coefficients: accumulate them per latent value, then contract with G_z, G_y.
    """
    Gz, Gy = toy.per_value_grads()
    with torch.no_grad():
        logp_z, logp_y = toy.logp_z_all(), toy.logp_y_all()
    counts = [c for c in itertools.product(range(M + 1), repeat=K_Z) if sum(c) == M]
    z = torch.tensor([[k for k in range(K_Z) for _ in range(c[k])] for c in counts])  # [C, M]
    n = torch.tensor(counts, dtype=torch.float64)  # [C, K_Z]
    log_prob = math.lgamma(M + 1) - torch.lgamma(n + 1).sum(-1) + (n * logp_z).sum(-1)  # [C] multinomial
    score, path = coef_fn(logp_y[z])  # [C, M] each
    onehot = torch.nn.functional.one_hot(z, K_Z).to(torch.float64)  # [C, M, K_Z]
    A_z = torch.einsum("c,cm,cmk->k", log_prob.exp(), score.double(), onehot)
    A_y = torch.einsum("c,cm,cmk->k", log_prob.exp(), path.double(), onehot)
    return -(A_z @ Gz + A_y @ Gy)


def garl_grad_for_tuple(toy, zs, q):
    """Gradient of garl_loss for one fixed tuple of sampled rationales."""
    idx = torch.tensor(zs)
    return toy.grad(garl_loss(toy.logp_z_all()[idx][None], toy.logp_y_all()[idx][None], q))


# ----------------------------------------------------------------------------- q-logarithm

def test_ln_q_endpoints_and_derivative():
    for u in [1e-6, 0.1, 0.5, 1.0, 3.0]:
        assert ln_q(u, 0.0) == pytest.approx(u - 1.0, abs=1e-12)
        assert ln_q(u, 1.0) == pytest.approx(math.log(u), rel=1e-12)
        assert q_loss(u, 0.0) == pytest.approx(1.0 - u, abs=1e-12)
    for q in QS:  # d/du ln_q(u) = u^-q, through autograd
        u = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(ln_q(u, q).sum(), u)
        torch.testing.assert_close(g, u.detach() ** -q)
        assert exp_q(ln_q(0.3, q), q) == pytest.approx(0.3, rel=1e-12)  # exp_q inverts ln_q


def test_ln_q_is_stable_next_to_q_equal_one():
    q = 1.0 - 1e-9
    for u in [1e-8, 0.3, 1.0, 10.0]:
        assert ln_q(u, q) == pytest.approx(math.log(u), abs=1e-6)
    # Far out, ln_q and log differ for real, by (1-q) log(u)^2 / 2 + ...: match that series exactly.
    eps, L = 1.0 - q, math.log(1e-300)
    assert ln_q(1e-300, q) == pytest.approx(L + eps * L**2 / 2 + eps**2 * L**3 / 6, rel=1e-12)
    log_p = torch.tensor([-500.0, -1e-3], dtype=torch.float64)  # P = e^-500 underflows nothing in log space
    torch.testing.assert_close(q_loss_of_log(log_p, q), -log_p, atol=0, rtol=1e-6)
    assert ln_q(0.0, 0.5) == -2.0 and ln_q(0.0, 1.0) == -math.inf
    assert exp_q(-3.0, 0.5) == 0.0  # below the support of exp_q
    assert isinstance(ln_q(0.5, 0.5), float) and isinstance(ln_q(torch.tensor(0.5), 0.5), torch.Tensor)


def test_q_outside_unit_interval_and_negative_u_fail():
    for bad in [-0.1, 1.5]:
        with pytest.raises(ValueError, match="q must be in"):
            ln_q(0.5, bad)
        with pytest.raises(ValueError, match="q must be in"):
            garl_coefficients(torch.zeros(2), bad)
    with pytest.raises(ValueError, match="u >= 0"):
        ln_q(-0.1, 0.5)


def test_log_space_helpers_match_direct_formulas():
    w = torch.rand(4, 5, dtype=torch.float64) + 0.01
    torch.testing.assert_close(log_mean_exp(w.log()).exp(), w.mean(-1))
    loo = (w.sum(-1, keepdim=True) - w) / 4
    torch.testing.assert_close(loo_log_mean_exp(w.log()).exp(), loo)
    torch.testing.assert_close(loo_log_mean_exp(w.T.log(), dim=0).exp(), loo.T)
    # One dominant weight: log(sum - w_m) would cancel; the masked logsumexp stays exact.
    lw = torch.tensor([0.0, -60.0, -61.0], dtype=torch.float64)
    assert loo_log_mean_exp(lw)[0].item() == pytest.approx(math.log((math.exp(-60) + math.exp(-61)) / 2), rel=1e-12)
    assert log_mean_exp(torch.full((3,), -math.inf)).item() == -math.inf
    with pytest.raises(ValueError, match="at least 2"):
        loo_log_mean_exp(torch.zeros(1))


def test_gradient_identity():
    """Prop. 4.1: grad l_q = P^-q grad l_0 = P^(1-q) grad l_1: one direction, a per-example scale."""
    toy = Toy(seed=1)
    P = toy.P().item()
    g0, g1 = toy.exact_grad(0.0), toy.exact_grad(1.0)
    for q in QS:
        gq = toy.exact_grad(q)
        torch.testing.assert_close(gq, P ** -q * g0)
        torch.testing.assert_close(gq, P ** (1 - q) * g1)


# ----------------------------------------------------------------------------- GARL

@pytest.mark.parametrize("M", [2, 3])
def test_garl_q0_is_unbiased_for_grad_of_one_minus_p(M):
    """Enumerate all K_Z^M tuples: E[GARL at q=0] = grad(1 - P) exactly."""
    toy = Toy(seed=2)
    p_z = toy.logp_z_all().exp().detach()
    expected = torch.zeros_like(toy.theta)
    for zs in itertools.product(range(K_Z), repeat=M):
        prob = math.prod(p_z[z].item() for z in zs)
        expected += prob * garl_grad_for_tuple(toy, zs, 0.0)
    torch.testing.assert_close(expected, toy.exact_grad(0.0))
    # The count-vector enumeration used below agrees with the tuple enumeration.
    torch.testing.assert_close(expected_gradient(toy, M, lambda lw: garl_coefficients(lw, 0.0)), expected)


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_garl_loss_gradient_is_algorithm_1(q):
    """For a fixed tuple, autograd of garl_loss equals Algorithm 1 written out by hand."""
    toy = Toy(seed=3)
    zs = [0, 2, 2, 1]
    M = len(zs)
    lz, ly = toy.logp_z_all(), toy.logp_y_all()
    w = [math.exp(ly[z].item()) for z in zs]
    w_bar = sum(w) / M
    hand = torch.zeros_like(toy.theta)
    for m, z in enumerate(zs):
        w_bar_minus_m = (sum(w) - w[m]) / (M - 1)
        c_m = w[m] / w_bar**q - w_bar_minus_m ** (1 - q)
        grad_log_pz = toy.grad(lz[z])
        grad_log_py = toy.grad(ly[z])
        hand += (1 / M**q) * (1 / M) * (-c_m * grad_log_pz - (w[m] / w_bar**q) * grad_log_py)
    torch.testing.assert_close(garl_grad_for_tuple(toy, zs, q), hand)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_rloo_baseline_leaves_expectation_unchanged(q):
    """Enumerated: the score coefficient c_m vs w_m / w_bar^q (no baseline) give the same mean."""
    toy = Toy(seed=4)
    with_baseline = expected_gradient(toy, 3, lambda lw: garl_coefficients(lw, q))
    without = expected_gradient(toy, 3, lambda lw: (garl_coefficients(lw, q)[1],) * 2)  # score := path
    torch.testing.assert_close(with_baseline, without)


def test_garl_bias_falls_like_one_over_m():
    """M^q E[GARL_M] -> grad l_q with bias O(1/M) (Sec. 6.1); exact expectations, no sampling noise."""
    toy = Toy(seed=5)
    for q in [0.25, 0.5, 0.75, 1.0]:
        exact = toy.exact_grad(q)
        bias = {}
        for M in [8, 16, 32, 64]:
            est = M**q * expected_gradient(toy, M, lambda lw: garl_coefficients(lw, q))
            bias[M] = (est - exact).norm().item() / exact.norm().item()
        assert bias[64] < 0.02, (q, bias)
        for M in [8, 16, 32]:
            assert 0.4 < bias[2 * M] / bias[M] < 0.6, (q, bias)  # doubling M halves the bias
    assert (expected_gradient(toy, 8, lambda lw: garl_coefficients(lw, 0.0)) - toy.exact_grad(0.0)).norm() < 1e-12


def test_garl_monte_carlo_approaches_exact_gradient():
    """Sampled, through garl_loss: B independent M-tuples averaged by the loss's mean over B."""
    toy = Toy(seed=6)
    g = torch.Generator().manual_seed(0)
    p_z = toy.logp_z_all().exp().detach()
    for q in [0.25, 0.5, 0.75, 1.0]:
        exact = toy.exact_grad(q)
        errors = []
        for M in [2, 32]:
            zs = torch.multinomial(p_z, 20000 * M, replacement=True, generator=g).view(20000, M)
            est = M**q * toy.grad(garl_loss(toy.logp_z_all()[zs], toy.logp_y_all()[zs], q))
            errors.append((est - exact).norm().item() / exact.norm().item())
        assert errors[1] < 0.03 and errors[1] < errors[0], (q, errors)


def test_garl_endpoints():
    w = torch.tensor([[0.1, 0.4, 0.0, 0.3]], dtype=torch.float64)
    M = w.shape[-1]
    # q = 0: RB-RLOO (VeriFree): score = (w_m - mean_{-m} w) / M, path = w_m / M.
    score, path = garl_coefficients(w.log(), 0.0)
    torch.testing.assert_close(score, (w - (w.sum() - w) / (M - 1)) / M)
    torch.testing.assert_close(path, w / M)
    # q = 1: the self-normalized importance weights w_m / sum_j w_j, times the paper's 1/M^q = 1/M;
    # the baseline is the constant 1 (w_bar_{-m}^0), i.e. 1/M^2 after normalization.
    score, path = garl_coefficients(w.log(), 1.0)
    torch.testing.assert_close(path, w / w.sum() / M)
    torch.testing.assert_close(score, path - 1 / M**2)


def test_garl_q1_expectation_is_snis_gradient_of_log_p():
    """At q = 1, M * E[GARL] = E[SNIS estimate of grad(-log P)] (the baseline has zero mean)."""
    toy = Toy(seed=7)
    Gz, Gy = toy.per_value_grads()
    p_z = toy.logp_z_all().exp().detach()
    w_all = toy.logp_y_all().exp().detach()
    M = 3
    snis = torch.zeros_like(toy.theta)
    for zs in itertools.product(range(K_Z), repeat=M):
        w = w_all[list(zs)]
        prob = math.prod(p_z[z].item() for z in zs)
        snis += prob * -sum((w[m] / w.sum()) * (Gz[z] + Gy[z]) for m, z in enumerate(zs))
    torch.testing.assert_close(M * expected_gradient(toy, M, lambda lw: garl_coefficients(lw, 1.0)), snis)


def test_garl_numerics_extreme_and_dead_rows():
    inf = float("inf")
    log_w = torch.tensor([[-1e4, -1e4 + 1.0, -1e4],  # tiny but positive weights
                          [0.0, -inf, -inf],  # one live sample
                          [-inf, -inf, -inf],  # no rationale can produce y*
                          [-2.0, -1e4, -inf]])
    for q in QS + [1.0 - 1e-9]:
        score, path = garl_coefficients(log_w, q)
        assert torch.isfinite(score).all() and torch.isfinite(path).all(), q
        assert (score[2] == 0).all() and (path[2] == 0).all()
    # Uniformly tiny weights are a scaled copy of moderate ones: w / w_bar^q is scale^(1-q) times.
    s_tiny, _ = garl_coefficients(log_w[:1].double(), 1.0)
    s_mod, _ = garl_coefficients(log_w[:1].double() + 1e4, 1.0)
    torch.testing.assert_close(s_tiny, s_mod)
    # Continuity into q = 1 for rows whose leave-one-out means are positive.
    near = garl_coefficients(log_w[[0]] + 1e4 - 3.0, 1.0 - 1e-9)
    at = garl_coefficients(log_w[[0]] + 1e4 - 3.0, 1.0)
    torch.testing.assert_close(near, at, atol=1e-6, rtol=1e-6)
    # bf16 log-weights come back as float32 coefficients.
    assert garl_coefficients(log_w[:2].bfloat16(), 0.5)[0].dtype == torch.float32
    with pytest.raises(ValueError, match="at least M=2"):
        garl_coefficients(torch.zeros(3, 1), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        garl_coefficients(torch.tensor([0.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        garl_loss(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)


def test_garl_stats_reports_w_bar_and_max_amplified_advantage():
    log_w = torch.tensor([[0.2, 0.6], [0.1, 0.1]]).log()
    stats = garl_stats(log_w, q=0.5)
    assert stats["w_bar_mean"] == pytest.approx(0.25)
    assert (stats["w_bar_min"], stats["w_bar_max"]) == (pytest.approx(0.1), pytest.approx(0.4))
    c = 0.6 / 0.4**0.5 - 0.2**0.5  # the largest centred weight
    assert stats["max_amplified_advantage"] == pytest.approx(c / 2**0.5, rel=1e-6)


# ----------------------------------------------------------------------------- PAFT

def test_paft_counts_are_integers_summing_to_k_and_reproducible():
    log_w = torch.randn(5, 8)
    for k in [None, 3, 8, 20]:
        n = paft_resample(log_w, 8 if k is None else k, torch.Generator().manual_seed(1))
        assert n.dtype == torch.long and (n >= 0).all() and (n.sum(-1) == (8 if k is None else k)).all()
    c1 = paft_coefficients(log_w, 0.5, generator=torch.Generator().manual_seed(3))
    c2 = paft_coefficients(log_w, 0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(c1, c2)
    # Default K = M: the coefficients of a row sum to w_bar^(1-q) / M^q.
    torch.testing.assert_close(c1.sum(-1), log_mean_exp(log_w).mul(0.5).exp() / 8**0.5)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_paft_mean_over_resampling_is_garl_plug_in_weight(q):
    """Prop. D.3: E[coef_m | pool] = w_m w_bar^-q / (M^q M), GARL's path coefficient."""
    log_w = torch.tensor([[-0.5, -2.0, -1.0, -4.0], [-3.0, -3.0, float("-inf"), -0.1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n_draws = 40000
    mean = paft_coefficients(log_w.expand(n_draws, 2, 4), q, k=4, generator=g).mean(0)
    _, path = garl_coefficients(log_w, q)
    torch.testing.assert_close(mean, path, atol=3e-3, rtol=1e-2)


def test_paft_counts_weighting_equals_plain_sum_over_resampled_indices():
    """Training each distinct sequence once with its count equals the sum over the K draws."""
    toy = Toy(seed=8)
    zs = torch.tensor([[0, 1, 2, 2, 1]])
    M, K, q = 5, 7, 0.75
    logp_z, logp_y = toy.logp_z_all()[zs], toy.logp_y_all()[zs]
    deduped = toy.grad(paft_loss(logp_z, logp_y, q, k=K, generator=torch.Generator().manual_seed(11)))
    # The same draw, written as Algorithm 2: r_k ~ Categorical(w / sum w), then SFT on each r_k.
    probs = torch.softmax(logp_y.detach()[0], -1)
    r = torch.multinomial(probs, K, replacement=True, generator=torch.Generator().manual_seed(11))
    w_bar = logp_y.detach().exp().mean()
    plain = -(w_bar ** (1 - q) / (M**q * K)) * sum(toy.grad(logp_z[0, k] + logp_y[0, k]) for k in r.tolist())
    torch.testing.assert_close(deduped, plain)


def test_paft_dead_rows_and_bad_k():
    log_w = torch.tensor([[float("-inf")] * 3, [0.0, -1.0, -2.0]])
    for q in QS:
        coef = paft_coefficients(log_w, q)
        assert (coef[0] == 0).all() and torch.isfinite(coef).all()
    with pytest.raises(ValueError, match="K >= 1"):
        paft_coefficients(log_w, 0.5, k=0)


# ----------------------------------------------------------------------------- GRPO

def test_grpo_advantages_and_equal_groups():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    a = grpo_advantages(r)
    torch.testing.assert_close(a[0], (r[0] - 0.5) / (r[0].std() + 1e-4))
    assert (a[1:] == 0).all()
    with pytest.raises(ValueError, match="M >= 2"):
        grpo_advantages(torch.ones(3, 1))


def test_grpo_loss_token_mean_and_coefficient_form_agree():
    torch.manual_seed(0)
    B, M, T = 2, 3, 5
    token_logp = torch.randn(B * M, T, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]] * B)
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    loss = grpo_loss(token_logp, mask, grpo_advantages(rewards).flatten())
    seq_sum = (token_logp * mask).sum(-1).view(B, M)
    coef = grpo_coefficients(rewards, mask.sum(-1).view(B, M)).double()
    torch.testing.assert_close(loss, -(coef * seq_sum).sum(-1).mean())
    (g,) = torch.autograd.grad(loss, token_logp)
    assert (g[M:] == 0).all()  # the all-correct group gives no gradient
    hand = -(grpo_advantages(rewards)[0, 0] / 3) / (B * M)  # first sequence, 3 tokens
    torch.testing.assert_close(g[0, 0], hand.double())


# ----------------------------------------------------------------------------- docs

def test_docstring_examples():
    for module in [qlog, garl, paft, grpo, presets]:
        assert doctest.testmod(module).failed == 0, module.__name__


def test_every_public_function_quotes_its_equation():
    cites = re.compile(r"Eq\. \d+|Sec\. \d|Algorithm \d|Alg\. \d|Prop\. \w")
    for module in [qlog, garl, paft]:
        for name, fn in vars(module).items():
            if callable(fn) and getattr(fn, "__module__", None) == module.__name__ and not name.startswith(("_", "check_")):
                assert fn.__doc__ and cites.search(fn.__doc__), f"{module.__name__}.{name} cites no equation"


def test_readme_snippet_runs_verbatim():
    """The README's 'Use the estimators in your own trainer' snippet, executed as written."""
    readme = (Path(__file__).parent / "README.md").read_text()
    section = readme.split("## Use the estimators in your own trainer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "garl_loss(" in code and "paft_loss(" in code and code.count("assert ") == 2  # both halves check themselves
    exec(compile(code, "README.md", "exec"), {})  # raises AssertionError if either estimator disagrees


def test_ci_runs_the_readmes_test_command():
    root = Path(__file__).parent
    readme = (root / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme.split("## Two commands", 1)[1].split("\n## ", 1)[0], re.S)
    train_command, test_command = commands
    assert train_command.endswith("python train.py --q 0.75 --estimator paft")
    assert test_command.endswith("python -m pytest -q -n 2")
    assert test_command in (root / ".ci" / "run").read_text().splitlines()


def test_docs_show_the_prompts_prompts_py_builds():
    from prompts import user_message
    doc = (Path(__file__).parent / "docs" / "data.md").read_text()
    shown = re.findall(r"```text\n(.*?)\n```", doc.split("## Prompts", 1)[1], re.S)
    context = ("Rush: Rush is a Canadian rock band.\n\n"
               "Counterparts (album): Counterparts is the fifteenth studio album by Rush.")
    example = {"question": 'Which Canadian rock band released a song called "Counterparts"?', "context": context}
    assert shown == [user_message(example, "hotpotqa", "warm"), user_message(example, "hotpotqa", "cold")]
