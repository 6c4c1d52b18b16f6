"""Plot training curves from one or more runs' metrics.jsonl, overlaid, into one PNG.

    python tools/plot.py runs/hotpotqa-paft-q0.75-warm                      # one run -> runs/.../curves.png
    python tools/plot.py runs/a runs/b runs/c --out q-sweep.png             # several q (or estimators) compared

Panels, against the training step (names as train.py logs them, README "What a run writes"):
    w_bar_mean   the estimate of P = p(y*|x) on the step's questions (GARL/PAFT); GRPO: reward_mean
    j_q          the J_Q loss estimate, l_q of w_bar, averaged over the step's questions (GARL/PAFT)
    grad_norm    the gradient norm before clipping
    val/maj@n    validation majority-vote accuracy, at the steps that validated
Each run is labelled with its estimator and q (from its run_config.json) unless --labels says otherwise.
Noisy per-step curves get a running mean over --smooth steps (the raw curve is drawn faint behind it).
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # as a script from anywhere: the library is the top-level folder

PANELS = [("w_bar_mean", "w_bar (estimate of P)", "log"), ("j_q", "J_Q", "linear"),
          ("grad_norm", "gradient norm", "log"), ("val/maj@", "validation maj@n (%)", "linear")]


def load_run(run_dir: Path) -> tuple[str, list[dict]]:
    """(label, metrics rows) of one run directory; the label is 'estimator q=...' from run_config.json."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"{run_dir}: no metrics.jsonl (is this a train.py run directory?)")
    rows = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise SystemExit(f"{metrics}, line {n}: not JSON (a run killed while writing?)") from None
    config_file = run_dir / "run_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    label = run_dir.name
    if "estimator" in config:
        label = config["estimator"] + ("" if config["estimator"] == "grpo" else f" q={config['q']}")
    return label, rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged quantity. A key ending in '@' matches 'val/maj@16' etc.; GRPO's
    reward_mean stands in for w_bar_mean (both estimate P on the step's questions).

    >>> series([{"step": 0, "j_q": 2.0}, {"step": 1}, {"step": 2, "j_q": 1.5}], "j_q")
    ([0, 2], [2.0, 1.5])
    """
    steps, values = [], []
    for row in rows:
        names = [k for k in row if k == key or (key.endswith("@") and k.startswith(key))]
        if not names and key == "w_bar_mean" and "reward_mean" in row:
            names = ["reward_mean"]
        if names:
            steps.append(row["step"])
            values.append(row[names[0]])
    return steps, values


def running_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` points.

    >>> running_mean([1.0, 3.0, 5.0], 2)
    [1.0, 2.0, 4.0]
    """
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def plot(runs: list[tuple[str, list[dict]]], out: Path, smooth: int = 1) -> Path:
    """Draw every run on the four panels and save the PNG. Panels that no run logged say so."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title, scale) in zip(axes, PANELS):
        drawn = False
        for i, (label, rows) in enumerate(runs):
            steps, values = series(rows, key)
            if not values:
                continue
            color = f"C{i}"
            if key.startswith("val/"):  # a few points: markers, no smoothing
                ax.plot([s + 1 for s in steps], values, "o-", color=color, label=label)
            else:
                if smooth > 1:
                    ax.plot([s + 1 for s in steps], values, color=color, alpha=0.25, linewidth=0.8)
                ax.plot([s + 1 for s in steps], running_mean(values, smooth), color=color, label=label)
            drawn = True
        if drawn and scale == "log" and all(v > 0 for _, rows in runs for v in series(rows, key)[1]):
            ax.set_yscale("log")
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (each with a metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG to write (default: curves.png in the first run directory)")
    p.add_argument("--labels", default=None, help="comma-separated legend labels, one per run")
    p.add_argument("--smooth", type=int, default=1, help="running mean over this many steps (1: raw curves)")
    args = p.parse_args(argv)
    if args.smooth < 1:
        p.error(f"--smooth must be >= 1, got {args.smooth}")
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.runs):
        p.error(f"--labels has {len(labels)} labels for {len(args.runs)} runs")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("tools/plot.py needs matplotlib: pip install matplotlib (in requirements.txt)")
    runs = [load_run(Path(r)) for r in args.runs]
    if labels:
        runs = [(label, rows) for label, (_, rows) in zip(labels, runs)]
    out = plot(runs, Path(args.out) if args.out else Path(args.runs[0]) / "curves.png", args.smooth)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
