"""Escape times and equilibria of the J_Q loss family, reproduced numerically (paper Sec. 5 and App. C).

Paper: Lin & Ie, "How Fast Should a Model Commit to Supervision?", arXiv 2604.25907.

  Eq. 6       gradient flow on l_q:        dP/dt = P^(2-q) |grad log P|^2
  Thm 5.1/5.2 escape time from P(0) = p0:  T_q = Theta(p0^-(1-q) / (1-q)) for q < 1, T_1 = Theta(log 1/p0)
  App. C.1    sigmoid example P = sigmoid(theta):  T_q = int_{p0}^{delta} du / (u^(2-q) (1-u)^2)
  Prop. C.2   label-flip rate eps: stable contamination (eps/(1-eps))^(1/q)
  Thm 3.1     escort minimizer of sum_j a_j (-ln_q theta_j):  theta_j proportional to a_j^(1/q)

    python experiments/theory.py [--out runs/theory] [--quick]

writes OUT/theory.json (every number) and OUT/theory.png (only if matplotlib imports) and prints the tables.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the library is the top-level folder

import torch

from qlog import q_loss, q_loss_of_log

DTYPE = torch.float64  # float64 throughout: P goes down to 1e-12 and times up to 1e12
QS = (0.0, 0.25, 0.5, 0.75, 1.0)
DELTA = 0.5  # Project choice: "escaped" means P reached 1/2 (the paper's delta is any fixed constant < 1)
FIT_MAX_P0 = 1e-3  # Project choice: fit slopes on p0 <= 1e-3, where the p0^-(1-q) term dominates T (see fit_slope)
CAT_K, CAT_LIK = 8, 0.9  # Project choice: 8 latent rationales; only rationale 0 yields y*, with p(y*|z) = 0.9


# ---------------------------------------------------------------- App. C.1: the exact sigmoid example
def sigmoid_escape_time_integral(p0, q, delta=DELTA, n=4000):
    """T_q = int_{p0}^{delta} du / (u^(2-q) (1-u)^2)  (App. C.1), by composite Simpson in s = log u.

    Why s = log u: the integrand u^(q-2) spans 10 decades near u = p0; in s it becomes
    e^((q-1)s) / (1-e^s)^2, smooth, and n = 4000 panels make Simpson accurate to ~1e-12.
    >>> round(sigmoid_escape_time_integral(0.01, 1.0), 6)   # log(u/(1-u)) + 1/(1-u) from 0.01 to 0.5
    5.585019
    """
    s = torch.linspace(math.log(p0), math.log(delta), n + 1, dtype=DTYPE)  # n even
    g = torch.exp((q - 1.0) * s) / (-torch.expm1(s)) ** 2  # du = e^s ds absorbed into the exponent
    w = torch.ones(n + 1, dtype=DTYPE)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return ((s[1] - s[0]) / 3.0 * (w * g).sum()).item()


def sigmoid_escape_time_series(p0, q, delta=DELTA, terms=80):
    """The same integral in closed form: (1-u)^-2 = sum_k (k+1) u^k, integrated term by term.

    T_q = sum_k (k+1) (delta^e - p0^e)/e with e = k+q-1, and (k+1) log(delta/p0) where e = 0.
    Converges like delta^k (1e-24 after 80 terms at delta = 1/2); the leading k = 0 term is
    p0^-(1-q)/(1-q), the Thm 5.1 rate with constant exactly 1.
    >>> round(sigmoid_escape_time_series(0.01, 0.0), 6)   # -1/u + 2 log(u/(1-u)) + 1/(1-u) from 0.01 to 0.5
    108.180139
    """
    total = 0.0
    for k in range(terms):
        e = k + q - 1.0
        total += (k + 1) * (math.log(delta / p0) if abs(e) < 1e-12 else (delta**e - p0**e) / e)
    return total


def flow_escape_time(loss_of_theta, log_success, theta0, delta=DELTA, h=0.01, max_steps=10**6):
    """Continuous time t for the gradient flow d theta/dt = -grad loss(theta) to lift P from P(0) to delta.

    Project choice: classical RK4 with an adaptive step dt = h / max|d theta/dt|, so theta moves
    about h per step whatever the speed. A fixed dt would need ~1/p0 steps at q = 0 (the plateau
    the theorem is about); here the step count is ~|theta path|/h, independent of p0's time scale.
    The crossing of delta inside the last step is located by linear interpolation in log P.
    """
    def velocity(theta):
        theta = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of_theta(theta), theta)
        return -g

    theta, t, lp, target = theta0.clone(), 0.0, log_success(theta0), math.log(delta)
    for step in range(max_steps):
        if lp >= target:
            return t, step
        k1 = velocity(theta)
        dt = h / k1.abs().max().item()
        k2 = velocity(theta + 0.5 * dt * k1)
        k3 = velocity(theta + 0.5 * dt * k2)
        k4 = velocity(theta + dt * k3)
        new = theta + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        lp_new = log_success(new)
        if lp_new >= target:
            return t + dt * (target - lp) / (lp_new - lp), step + 1
        theta, t, lp = new, t + dt, lp_new
    raise RuntimeError(f"no escape within {max_steps} steps")


def sigmoid_escape_time_flow(p0, q, delta=DELTA, h=0.01):
    """App. C.1 by simulation: theta scalar, P = sigmoid(theta), flow on autograd of qlog.q_loss(P, q).

    Example: sigmoid_escape_time_flow(0.01, 1.0) gives 5.58503 vs the integral 5.58502 (rel. 2e-6,
    set by the linear interpolation at the crossing).
    """
    theta0 = torch.tensor([math.log(p0 / (1.0 - p0))], dtype=DTYPE)
    T, _ = flow_escape_time(lambda th: q_loss(torch.sigmoid(th), q).sum(),
                            lambda th: torch.nn.functional.logsigmoid(th).item(), theta0, delta, h)
    return T


# ---------------------------------------------------------------- a categorical latent-variable model
def categorical_model(p0, K=CAT_K, lik_star=CAT_LIK):
    """Cold start with P(0) = sum_z p(z) p(y*|z) = p0: prior softmax(theta) over K rationales.

    Rationale 0 yields y* with probability lik_star, the others never do (log-lik -inf: logsumexp
    gives them zero weight and zero gradient). Project choice: the K-1 wrong rationales get uneven
    logits linspace(0, 1) so the model is not a relabelled sigmoid; theta_0 is set so pi_0 = p0/lik_star.
    Returns (theta0, log_lik, |grad log P|^2 at t = 0), the last being Eq. 6's |s|^2.
    """
    others = torch.linspace(0.0, 1.0, K - 1, dtype=DTYPE)
    pi0 = p0 / lik_star
    theta_star = math.log(pi0) - math.log1p(-pi0) + torch.logsumexp(others, 0).item()
    theta0 = torch.cat([torch.tensor([theta_star], dtype=DTYPE), others])
    log_lik = torch.full((K,), -math.inf, dtype=DTYPE)
    log_lik[0] = math.log(lik_star)
    pi = torch.softmax(theta0, 0)
    s2 = ((1.0 - pi[0]) ** 2 + (pi[1:] ** 2).sum()).item()  # grad log P = e_0 - pi
    return theta0, log_lik, s2


def categorical_escape_time(p0, q, delta=DELTA, h=0.01, K=CAT_K, lik_star=CAT_LIK):
    """Gradient-flow time of exact l_q training (Eq. 3 via qlog.q_loss_of_log on log P) from P = p0 to delta.

    log P = logsumexp_z(log p(z) + log p(y*|z)), so P = 1e-12 costs no precision.
    Thm 5.1/5.2 with Eq. 6 predict T ~ p0^-(1-q) / ((1-q) |s|^2) for q < 1.
    """
    theta0, log_lik, _ = categorical_model(p0, K, lik_star)

    def log_p(th):
        return torch.logsumexp(torch.log_softmax(th, 0) + log_lik, 0)

    T, _ = flow_escape_time(lambda th: q_loss_of_log(log_p(th), q), lambda th: log_p(th).item(), theta0, delta, h)
    return T


# ---------------------------------------------------------------- Thm 5.1/5.2: slopes
def fit_slope(x, y):
    """Least-squares slope of y on x. Example: fit_slope([0, 1, 2], [1, 3, 5]) == 2.0.

    Used as fit_slope(log 1/p0, log T): T = p0^-(1-q)/(1-q) + C + o(1), so the local slope is
    (1-q) (1 - C/T); only where T >> |C| (small p0) does it approach 1 - q.
    """
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def escape_fits(p0s, Ts, p0_max=FIT_MAX_P0):
    """Slopes over the points with p0 <= p0_max: log-log (predicted 1 - q), and dT / d ln(1/p0) (q = 1)."""
    pts = [(math.log(1.0 / p), T) for p, T in zip(p0s, Ts) if p <= p0_max * (1 + 1e-9)]
    x, T = [a for a, _ in pts], [b for _, b in pts]
    return {"loglog": fit_slope(x, [math.log(b) for b in T]), "linear_in_log": fit_slope(x, T), "n_points": len(x)}


def theta_constant(p0, T, q):
    """T_q(p0) divided by the Thm 5.1/5.2 rate: p0^-(1-q)/(1-q) for q < 1, ln(1/p0) for q = 1."""
    return T / (math.log(1.0 / p0) if q == 1.0 else p0 ** -(1.0 - q) / (1.0 - q))


# ---------------------------------------------------------------- Thm 3.1 and Prop. C.2: equilibria
def minimize_categorical(a, q, iters=100):
    """argmin over the simplex of sum_j a_j l_q(theta_j), theta = softmax(logits)  (the Thm 3.1 objective).

    Project choice: damped Newton on the K-1 free logits (last fixed at 0), gradient and Hessian by
    autograd through qlog.q_loss_of_log. Plain gradient descent converges at a rate proportional to the
    smallest probability (~1e-5 in the noise problem: ~1e7 steps); Newton converges quadratically.
    Steps are capped at 1 in every logit (a full Newton step from the uniform start can overshoot to
    near a vertex, where softmax gradients vanish), and get Armijo backtracking outside the quadratic region.
    """
    a = torch.as_tensor(a, dtype=DTYPE)

    def loss(phi):
        return (a * q_loss_of_log(torch.log_softmax(torch.cat([phi, phi.new_zeros(1)]), 0), q)).sum()

    phi = torch.zeros(len(a) - 1, dtype=DTYPE)
    for _ in range(iters):
        g = torch.autograd.functional.jacobian(loss, phi)
        H = torch.autograd.functional.hessian(loss, phi)
        L, info = torch.linalg.cholesky_ex(H)
        newton = info.item() == 0
        d = torch.cholesky_solve(-g[:, None], L)[:, 0] if newton else -g
        d = d / max(1.0, d.abs().max().item())  # trust region: logits move <= 1 per step, never leap to a flat vertex
        step = 1.0
        if not (newton and d.abs().max() < 0.5):
            f0, slope = loss(phi).item(), (g @ d).item()
            while loss(phi + step * d).item() > f0 + 1e-4 * step * slope and step > 1e-10:
                step /= 2
        phi = phi + step * d
        if (step * d).abs().max() < 1e-12:
            break
    return torch.softmax(torch.cat([phi, phi.new_zeros(1)]), 0)


def escort_formula(a, q):
    """Thm 3.1: theta_j = a_j^(1/q) / sum_k a_k^(1/q). Example: a = [0.5, 0.5] -> [0.5, 0.5] for every q."""
    w = torch.as_tensor(a, dtype=DTYPE) ** (1.0 / q)
    return w / w.sum()


def escort_minimizer(a, q):
    """Thm 3.1 numerically: returns (minimizer, formula, max abs error). q = 1 is the MLE theta = a."""
    theta, formula = minimize_categorical(a, q), escort_formula(a, q)
    return theta.tolist(), formula.tolist(), (theta - formula).abs().max().item()


def noise_equilibrium(eps, q):
    """Prop. C.2: the odds of the flipped label at the minimizer of the expected loss under label noise.

    A fraction eps of the labels is flipped to a wrong answer; the model puts pi on the true answer:
    E[l_q] = (1-eps) l_q(pi) + eps l_q(1-pi). Setting the derivative to zero with l_q'(u) = -u^-q:
    (1-eps) pi^-q = eps (1-pi)^-q, so (1-pi)/pi = (eps/(1-eps))^(1/q): the formula is the odds of
    the noise label (a 2-way escort distribution, Thm 3.1 with a = (1-eps, eps)); contamination
    1-pi = odds/(1+odds). q = 1 fits the noise exactly (1-pi = eps); as q -> 0 the odds -> 0.
    Example: eps = 0.2, q = 0.5 gives odds 1/16. Returns (measured odds, formula odds).
    """
    pi = minimize_categorical([1.0 - eps, eps], q)
    return (pi[1] / pi[0]).item(), (eps / (1.0 - eps)) ** (1.0 / q)


def rlvr_noise_contamination(eps, checkpoints, lr=1.0):
    """q = 0 (RLVR): E[l_0] = (1-eps)(1-pi) + eps pi is linear in pi, so there is no interior equilibrium.

    Gradient descent on the logit drives the contamination 1-pi to 0 like 1/((1-2eps) t): it never
    memorizes the noise, the q -> 0 limit of (eps/(1-eps))^(1/q). Returns 1-pi at each checkpoint.
    """
    theta, out = torch.zeros(1, dtype=DTYPE, requires_grad=True), []
    for step in range(1, max(checkpoints) + 1):
        pi = torch.sigmoid(theta)
        (g,) = torch.autograd.grad(((1 - eps) * q_loss(pi, 0.0) + eps * q_loss(1 - pi, 0.0)).sum(), theta)
        theta = (theta - lr * g).detach().requires_grad_(True)
        if step in checkpoints:
            out.append(torch.sigmoid(-theta).item())
    return out


# ---------------------------------------------------------------- output
def plot(res, path):
    """Log-log escape time vs 1/p0, both models, predicted slopes as dashed lines. Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"theory.png skipped: matplotlib could not be imported ({e}); pip install matplotlib to get it")
        return None
    p0s = res["settings"]["p0_grid"]
    inv = [1.0 / p for p in p0s]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, (title, key) in zip(axes, [("sigmoid (App. C.1), flow; o = integral", "sigmoid_flow"),
                                       ("categorical latent model, flow", "categorical")]):
        for i, q in enumerate(QS):
            Ts, c = res["escape_times"][key][f"{q:g}"], f"C{i}"
            ax.loglog(inv, Ts, "s-", color=c, ms=4, label=f"q={q:g}")
            if key == "sigmoid_flow":
                ax.loglog(inv, res["escape_times"]["sigmoid_integral"][f"{q:g}"], "o", color=c, mfc="none", ms=8)
            ref = [Ts[-1] * (v / inv[-1]) ** (1 - q) if q < 1 else Ts[-1] * math.log(v) / math.log(inv[-1])
                   for v in inv]  # predicted rate, anchored at the smallest p0
            ax.loglog(inv, ref, "--", color=c, lw=0.8)
        ax.set(title=title, xlabel="1/p0")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(f"gradient-flow time to P = {DELTA}")
    axes[0].legend(title="dashed: p0^-(1-q), ln(1/p0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description="Reproduce the paper's escape-time and equilibrium theory numerically.")
    ap.add_argument("--out", default="runs/theory", help="output folder for theory.json and theory.png")
    ap.add_argument("--quick", action="store_true", help="small grid and coarse steps (smoke test, a few seconds)")
    args = ap.parse_args(argv)
    start = time.time()
    exps = [-1, -2, -3, -4, -5] if args.quick else [-1 - k / 2 for k in range(9)]  # p0 = 1e-1 .. 1e-5
    p0s = [10.0**e for e in exps]
    deep = [10.0**-e for e in (6, 8, 10, 12)]  # integral only: cheap, shows the asymptotic slope
    h = 0.05 if args.quick else 0.01
    settings = {"qs": list(QS), "p0_grid": p0s, "p0_deep_grid": deep, "delta": DELTA, "fit_max_p0": FIT_MAX_P0,
                "rk4_theta_step": h, "categorical_K": CAT_K, "categorical_lik_star": CAT_LIK, "quick": args.quick}
    T = {k: {} for k in ("sigmoid_integral", "sigmoid_series", "sigmoid_flow", "categorical", "sigmoid_integral_deep")}
    for q in QS:
        k = f"{q:g}"
        T["sigmoid_integral"][k] = [sigmoid_escape_time_integral(p, q) for p in p0s]
        T["sigmoid_series"][k] = [sigmoid_escape_time_series(p, q) for p in p0s]
        T["sigmoid_flow"][k] = [sigmoid_escape_time_flow(p, q, h=h) for p in p0s]
        T["categorical"][k] = [categorical_escape_time(p, q, h=h) for p in p0s]
        T["sigmoid_integral_deep"][k] = [sigmoid_escape_time_integral(p, q) for p in deep]
    rel = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b))  # noqa: E731
    checks = {"flow_vs_integral_max_rel_diff": {k: rel(T["sigmoid_flow"][k], v) for k, v in T["sigmoid_integral"].items()},
              "integral_vs_series_max_rel_diff": {k: rel(v, T["sigmoid_series"][k]) for k, v in T["sigmoid_integral"].items()}}
    fits = {m: {f"{q:g}": escape_fits(p0s, T[m][f"{q:g}"]) for q in QS} for m in ("sigmoid_integral", "sigmoid_flow", "categorical")}
    fits["sigmoid_integral_deep"] = {f"{q:g}": escape_fits(deep, T["sigmoid_integral_deep"][f"{q:g}"], 1.0) for q in QS}
    consts = {m: {f"{q:g}": [theta_constant(p, t, q) for p, t in zip(p0s, T[m][f"{q:g}"])] for q in QS}
              for m in ("sigmoid_integral", "categorical")}
    s2 = [categorical_model(p)[2] for p in p0s]
    eq_q, eq_eps = (0.25, 0.5, 0.75, 1.0), (0.05, 0.1, 0.2, 0.3)
    ckpts = [10, 100, 1000] if args.quick else [10, 100, 1000, 10000]
    noise = {f"{q:g}": {f"{e:g}": dict(zip(("odds", "formula"), noise_equilibrium(e, q))) for e in eq_eps} for q in eq_q}
    rlvr = {f"{e:g}": rlvr_noise_contamination(e, ckpts) for e in eq_eps}
    escort = {str(a): {f"{q:g}": dict(zip(("minimizer", "formula", "max_abs_err"), escort_minimizer(a, q))) for q in eq_q}
              for a in ([0.5, 0.3, 0.2], [0.4, 0.25, 0.15, 0.12, 0.08])}
    res = {"settings": settings, "escape_times": T, "checks": checks, "fits": fits, "theta_constants": consts,
           "categorical_s2_at_start": s2, "noise_equilibrium": noise,
           "rlvr_noise_contamination": {"checkpoints": ckpts, "by_eps": rlvr}, "escort": escort}

    def row(cells, w=12):
        return " | ".join(f"{c:>{w}}" if isinstance(c, str) else f"{c:>{w}.4g}" for c in cells)
    print(f"Escape time to P = {DELTA}; slopes fitted on p0 <= {FIT_MAX_P0:g} ({fits['sigmoid_flow']['0']['n_points']} points), "
          f"deep = integral on p0 in 1e-6..1e-12")
    print(row(["q", "predicted", "sig integral", "sig flow", "categorical", "sig deep"]))
    for q in QS:
        k = f"{q:g}"
        print(row([k, 1 - q] + [fits[m][k]["loglog"] for m in ("sigmoid_integral", "sigmoid_flow", "categorical", "sigmoid_integral_deep")]))
    print("q = 1, dT/d ln(1/p0) (equal increments per e-fold; sigmoid predicts 1, categorical 1/|s|^2):")
    print(row(["", "sig integral", "sig flow", "categorical", "sig deep"]))
    print(row(["q = 1"] + [fits[m]["1"]["linear_in_log"] for m in ("sigmoid_integral", "sigmoid_flow", "categorical", "sigmoid_integral_deep")]))
    print(f"categorical 1/|s|^2 at start: {1 / s2[-1]:.4g} (p0 = {p0s[-1]:g}) .. {1 / s2[0]:.4g} (p0 = {p0s[0]:g})")
    for m in ("sigmoid_integral", "categorical"):
        print(f"Theta constant T / rate ({m}); rate = p0^-(1-q)/(1-q), or ln(1/p0) at q = 1:")
        print(row(["q \\ p0"] + [f"{p:.1e}" for p in p0s], 8))
        for q in QS:
            print(row([f"{q:g}"] + consts[m][f"{q:g}"], 8))
    print("sigmoid flow vs integral, max rel diff per q:", {k: f"{v:.1e}" for k, v in checks["flow_vs_integral_max_rel_diff"].items()},
          "| integral vs series:", f"{max(checks['integral_vs_series_max_rel_diff'].values()):.1e}")
    print("Prop. C.2 noise odds at the minimizer: measured / (eps/(1-eps))^(1/q)")
    print(row(["q \\ eps"] + [f"{e:g}" for e in eq_eps], 23))
    for q in eq_q:
        print(row([f"{q:g}"] + [f"{d['odds']:.5g} / {d['formula']:.5g}" for d in noise[f"{q:g}"].values()], 23))
    print(f"max relative error of the odds: {max(abs(d['odds'] / d['formula'] - 1) for r in noise.values() for d in r.values()):.1e}")
    print(f"q = 0: contamination 1-pi after {ckpts} GD steps (lr 1): " +
          "; ".join(f"eps={e}: " + ", ".join(f"{c:.2g}" for c in v) for e, v in rlvr.items()))
    print("Thm 3.1 escort minimizer, max |theta - a^(1/q)/sum|:")
    for a, d in escort.items():
        print(f"  a = {a}: " + ", ".join(f"q={k}: {v['max_abs_err']:.1e}" for k, v in d.items()))
    os.makedirs(args.out, exist_ok=True)
    res["seconds"] = time.time() - start
    with open(os.path.join(args.out, "theory.json"), "w") as f:
        json.dump(res, f, indent=1)
    png = plot(res, os.path.join(args.out, "theory.png"))
    print(f"wrote {os.path.join(args.out, 'theory.json')}" + (f" and {png}" if png else "") + f" in {time.time() - start:.1f} s")
    return res


if __name__ == "__main__":
    main()
