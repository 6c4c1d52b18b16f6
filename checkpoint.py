"""Checkpoints that survive a kill, and the state a resumed run needs to continue exactly.

    start_run(out, config)                                      a new run directory: (start step 0, best -inf)
    save_checkpoint(out, name, model, tokenizer, state, link)   write out/checkpoints/<name>, repoint out/<link>
    trainer_state(optimizer, batches, step, best, config, rlpr)  what --resume needs besides the weights
    resume(out, optimizer, batches, rlpr)                       restore it: (start step, best so far)
    resume_problem(out, config, may_change)                      why --resume cannot continue out (None: it can)
    rng_state() / set_rng_state(state)                           every random number generator a step uses

A run directory holds checkpoints/ and two symlinks, latest and best. A checkpoint is written in full
under a temporary name, renamed (atomic), and only then is its link swapped (atomic too): a run killed
at any moment leaves the previous checkpoint and its link intact.
"""
import json
import math
import os
import random
import shutil
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging


def point(link: Path, target: Path):
    """Make `link` a symlink to `target`, atomically (os.replace of a fresh link)."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def save_checkpoint(out: Path, name: str, model, tokenizer, state: dict | None, link: str):
    """Write checkpoints/<name> completely under a temporary name, rename it, then repoint DIR/<link>.

    A run killed at any moment leaves the previous checkpoint and its link intact: the rename and
    the link swap are atomic, and a half-written .tmp directory is never pointed at.
    """
    final, tmp = out / "checkpoints" / name, out / "checkpoints" / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    transformers_logging.disable_progress_bar()  # one progress bar per run: not "Writing model shards" at every save
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    point(out / link, final)
    keep = {os.path.realpath(out / p) for p in ("latest", "best") if (out / p).exists()}
    for old in (out / "checkpoints").iterdir():  # drop checkpoints no link points at any more
        if not old.name.startswith(".") and os.path.realpath(old) not in keep:
            shutil.rmtree(old)


def rng_state() -> dict:
    """Python's and torch's generator states (CUDA's too): rollouts and PAFT's resampling draw from them."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Restore what rng_state() saved, so that a resumed run draws the same numbers as an uninterrupted one."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def start_run(out: Path, config: dict) -> tuple[int, float]:
    """A new run in `out`: its configuration written to run_config.json. Returns (start step, best maj@n)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(config, indent=2))
    return 0, -math.inf


def trainer_state(optimizer, batches, step: int, best: float, config: dict, rlpr_threshold=None) -> dict:
    """Everything but the weights that a resumed run needs to continue exactly where this one stops
    (rlpr_threshold: an RLPR run's related.RLPRThreshold, its std filter's moving average)."""
    state = {"optimizer": optimizer.state_dict(), "data": batches.state_dict(), "rng": rng_state(),
             "step": step, "best": best, "args": config}
    if rlpr_threshold is not None:
        state["rlpr_threshold"] = rlpr_threshold.state_dict()
    return state


def resume_problem(out: Path, config: dict, may_change: set) -> str | None:
    """What stops `config` from continuing the run in `out` (None: nothing): no checkpoint there, or
    settings that differ from the saved run's in a key outside `may_change`.

    >>> resume_problem(Path("/nonexistent"), {}, set())
    '--resume: /nonexistent has no checkpoint to resume (no /nonexistent/latest)'
    """
    if not (out / "latest").exists():
        return f"--resume: {out} has no checkpoint to resume (no {out / 'latest'})"
    saved = json.loads((out / "run_config.json").read_text())
    diff = {k: (saved.get(k), v) for k, v in config.items() if k not in may_change and saved.get(k) != v}
    if diff:
        given = ", ".join(f"--{k.replace('_', '-')} {a} vs {b}" for k, (a, b) in diff.items())
        return f"--resume with different settings (saved vs given): {given}"
    return None


def resume(out: Path, optimizer, batches, rlpr_threshold=None) -> tuple[int, float]:
    """Restore optimizer, data order and RNGs (and an RLPR run's threshold state) from out/latest (the model was
    loaded from it already).

    Returns (start step, best maj@n). Lines of metrics.jsonl logged after that checkpoint (a run killed
    mid-step) are dropped: those steps will be redone, and draw the same random numbers again.
    """
    latest = os.path.realpath(out / "latest")
    state = torch.load(Path(latest) / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    batches.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    if rlpr_threshold is not None:
        rlpr_threshold.load_state_dict(state["rlpr_threshold"])
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    (out / "metrics.jsonl").write_text("".join(l + "\n" for l in lines if json.loads(l)["step"] < state["step"]))
    print(f"resumed from {latest} at step {state['step']}")
    return state["step"], state["best"]
