"""Tests for theory.py: escape times (Thm 5.1/5.2, App. C.1), noise equilibrium (Prop. C.2), escort (Thm 3.1)."""
import builtins
import json
import math

import pytest
import torch

from experiments import theory

H = 0.05  # coarse RK4 step in theta: enough for the tolerances below and keeps the file fast


def test_fit_slope_recovers_a_line():
    x = [0.3 * i for i in range(6)]
    assert theory.fit_slope(x, [2.5 * v - 1.0 for v in x]) == pytest.approx(2.5, abs=1e-12)


@pytest.mark.parametrize("p0", [1e-1, 1e-3, 1e-5])
def test_sigmoid_integral_matches_elementary_antiderivatives(p0):
    # Partial fractions: 1/(u^2 (1-u)^2) = 1/u^2 + 2/u + 2/(1-u) + 1/(1-u)^2 and 1/(u (1-u)^2) = 1/u + 1/(1-u) + 1/(1-u)^2.
    F = {0.0: lambda u: -1 / u + 2 * math.log(u / (1 - u)) + 1 / (1 - u),
         1.0: lambda u: math.log(u / (1 - u)) + 1 / (1 - u)}
    d = theory.DELTA
    for q, f in F.items():
        exact = f(d) - f(p0)
        assert theory.sigmoid_escape_time_integral(p0, q) == pytest.approx(exact, rel=1e-9)
        assert theory.sigmoid_escape_time_series(p0, q) == pytest.approx(exact, rel=1e-12)
    for q in (0.25, 0.5, 0.75):  # no elementary form needed: quadrature and series are independent routes
        assert theory.sigmoid_escape_time_integral(p0, q) == pytest.approx(theory.sigmoid_escape_time_series(p0, q), rel=1e-9)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_sigmoid_flow_agrees_with_integral(q):
    for p0 in (1e-2, 1e-4):
        flow = theory.sigmoid_escape_time_flow(p0, q, h=H)
        assert flow == pytest.approx(theory.sigmoid_escape_time_integral(p0, q), rel=1e-3)


def test_categorical_cold_start_has_success_p0():
    for p0 in (1e-1, 1e-4):
        theta0, log_lik, s2 = theory.categorical_model(p0)
        assert torch.logsumexp(torch.log_softmax(theta0, 0) + log_lik, 0).exp().item() == pytest.approx(p0, rel=1e-12)
        th = theta0.clone().requires_grad_(True)  # Eq. 6's |grad log P|^2, by autograd instead of e_0 - pi
        (s,) = torch.autograd.grad(torch.logsumexp(torch.log_softmax(th, 0) + log_lik, 0), th)
        assert s2 == pytest.approx((s**2).sum().item(), rel=1e-12)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.75])
def test_escape_slope_is_one_minus_q(q):
    p0s = [1e-3, 1e-4, 1e-5]
    for T in ([theory.sigmoid_escape_time_integral(p, q) for p in p0s],
              [theory.sigmoid_escape_time_flow(p, q, h=H) for p in p0s],
              [theory.categorical_escape_time(p, q, h=H) for p in p0s]):
        assert theory.escape_fits(p0s, T)["loglog"] == pytest.approx(1.0 - q, abs=0.1)


def test_q1_escape_time_grows_like_log():
    p0s = [1e-2, 1e-3, 1e-4, 1e-5]
    for T in ([theory.sigmoid_escape_time_integral(p, 1.0) for p in p0s],
              [theory.categorical_escape_time(p, 1.0, h=H) for p in p0s]):
        steps = [b - a for a, b in zip(T, T[1:])]  # increment per decade of 1/p0
        assert max(steps) / min(steps) < 1.05
        assert 0 < theory.escape_fits(p0s, T)["linear_in_log"] < 2.0
    # the sigmoid's coefficient is exactly 1 per e-fold: T_1 = ln(1/p0) + O(1)
    assert steps[-1] == pytest.approx(math.log(10), rel=0.15)


def test_q0_needs_order_one_over_p0():
    for p0 in (1e-3, 1e-4):
        assert theory.sigmoid_escape_time_integral(p0, 0.0) * p0 == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("q", [0.25, 0.5, 0.75, 1.0])
def test_noise_equilibrium_matches_formula(q):
    for eps in (0.05, 0.2):
        odds, formula = theory.noise_equilibrium(eps, q)
        assert formula == pytest.approx((eps / (1 - eps)) ** (1 / q), rel=1e-12)
        assert odds == pytest.approx(formula, rel=1e-6)
        if q == 1.0:
            assert odds / (1 + odds) == pytest.approx(eps, rel=1e-9)  # q = 1 memorizes the noise exactly


def test_noise_contamination_falls_with_smaller_q():
    odds = [theory.noise_equilibrium(0.1, q)[0] for q in (1.0, 0.75, 0.5, 0.25)]
    assert all(b < a for a, b in zip(odds, odds[1:]))


def test_rlvr_never_memorizes_noise():
    eps, ck = 0.1, [10, 100, 1000]
    c = theory.rlvr_noise_contamination(eps, ck)
    assert all(b < a for a, b in zip(c, c[1:]))
    assert (1 - 2 * eps) * ck[-1] * c[-1] == pytest.approx(1.0, rel=0.1)  # decays like 1/((1-2eps) t) -> 0


@pytest.mark.parametrize("q", [0.25, 0.5, 0.75, 1.0])
def test_escort_minimizer_matches_a_power_one_over_q(q):
    g = torch.Generator().manual_seed(0)
    for a in (torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64) + 0.05):
        a = a / a.sum()
        theta, formula, err = theory.escort_minimizer(a, q)
        w = a ** (1 / q)
        assert torch.allclose(torch.tensor(theta, dtype=torch.float64), w / w.sum(), atol=1e-8)
        assert err < 1e-8


def test_main_quick_writes_json(tmp_path, capsys):
    theory.main(["--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "theory.json").read_text())
    assert {"settings", "escape_times", "checks", "fits", "theta_constants", "noise_equilibrium",
            "rlvr_noise_contamination", "escort", "seconds"} <= set(res)
    n = len(res["settings"]["p0_grid"])
    for key in ("sigmoid_integral", "sigmoid_series", "sigmoid_flow", "categorical"):
        assert set(res["escape_times"][key]) == {"0", "0.25", "0.5", "0.75", "1"}
        assert all(len(v) == n for v in res["escape_times"][key].values())
    assert max(res["checks"]["flow_vs_integral_max_rel_diff"].values()) < 1e-3
    assert "predicted" in capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "theory.png").exists()
    except ImportError:
        assert not (tmp_path / "theory.png").exists()


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("matplotlib hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert theory.plot({}, str(tmp_path / "x.png")) is None
    assert "skipped" in capsys.readouterr().out
