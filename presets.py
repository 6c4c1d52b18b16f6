"""Every default that depends on the setup, in one place: train.py's --preset, the paper's thinking budgets, and
q's schedule over a run (--q-schedule).

    PRESETS["paper"]    the paper's setup (Sec. 7) on one GPU; what the paper leaves out (lr, batch, steps) is ours
    PRESETS["cpu"]      a real 135M model that visibly learns on real HotPotQA rows within minutes on 2 cores
    PRESETS["cpu-heldout"]  the same model learns fresh fictional questions, validated on held-out ones

train.py (and scale/train_trl.py) fill every flag left unset from the preset (default: "paper" on CUDA, "cpu"
otherwise); scale/memory.py plans with the paper preset's values. Both read them here, so neither imports
the other.
"""

# The paper's thinking budgets (Sec. 7): 4096 / 3072 / 2048 tokens in all, of which 128 are kept for the answer.
PAPER_THINK_BUDGETS = {"finqa": 4096 - 128, "hotpotqa": 3072 - 128, "musique": 2048 - 128}

PRESETS = {
    # paper: validation on a fixed 100 of the val questions every 50 steps keeps it at ~20% of the run's decoding
    # time; the paper's protocol (all 872 FinQA val questions every 25 steps) is --val-size 0 --eval-every 25, ~80%.
    "paper": dict(model="Qwen/Qwen3-0.6B", task="finqa", data="hub", M=32, think_budget=None, answer_budget=128,
                  context_chars=0, steps=200, B=4, micro_batch=4, gen_batch=1, lr=1e-6,
                  eval_every=50, eval_n=16, eval_batch=2, val_size=100, train_size=0, val_subset=0, save_every=25,
                  precision="bf16", grad_ckpt=True, decode="fast", logprobs="fast"),
    # cpu: a sanity check that the pipeline learns, on 4 real HotPotQA questions seen at every step: short contexts
    # and rationales, and a learning rate a 135M model needs to move visibly within minutes. The fast paths (the
    # same numbers): with the reference ones a step costs 2.4x the CPU time (147 vs 62 s, docs/performance.md).
    "cpu": dict(model="smollm2", task="hotpotqa", data="sample", M=4, think_budget=16, answer_budget=16,
                context_chars=200, steps=10, B=4, micro_batch=4, gen_batch=0, lr=3e-4,
                eval_every=0, eval_n=4, eval_batch=4, val_size=4, train_size=4, val_subset=0, save_every=0,
                precision="fp32", grad_ckpt=False, decode="fast", logprobs="fast"),
    # cpu-heldout: the same model learns questions it has never seen: 10 steps of 8 fictional one-hop questions,
    # each seen once (--data synth: samples/synth_musique_train.jsonl), M = 2 rationales each, validated before and
    # after on the first 32 of samples/synth_musique_test.jsonl, which it never trains on. Over 8 seeds its held-out
    # p@1 rose 10+ points in 7 (docs/heldout.md, "The CPU preset"); B = 8 x M = 2 reads twice as many questions as
    # B = 4 x M = 4 for the same 16 sequences per step. Not the default: it takes 1.8x the cpu preset's time.
    "cpu-heldout": dict(model="smollm2", task="musique", data="synth", M=2, think_budget=16, answer_budget=10,
                        context_chars=0, steps=10, B=8, micro_batch=16, gen_batch=0, lr=3e-4,
                        eval_every=0, eval_n=4, eval_batch=8, val_size=32, train_size=0, val_subset=0, save_every=0,
                        precision="fp32", grad_ckpt=False, decode="fast", logprobs="fast"),
}


def q_at(step: int, schedule: str, q: float, q_final: float, q_steps: int) -> float:
    """q at a training step (train.py's --q-schedule): constant, a switch to q_final after q_steps steps
    (q = 1 then 0 is SFT-then-RLVR), or a linear ramp from q to q_final over q_steps steps.

    >>> [q_at(s, "linear", 1.0, 0.0, 4) for s in (0, 2, 4, 9)]
    [1.0, 0.5, 0.0, 0.0]
    """
    if schedule == "constant":
        return q
    if schedule == "switch":
        return q if step < q_steps else q_final
    return q + (q_final - q) * min(step / q_steps, 1.0)
