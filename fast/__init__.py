"""Opt-in fast paths, each tested equal to the reference.

Every module here computes what a plain function at the top level defines, one flag away from it, and its
tests check that the numbers are the plain path's. The caller chooses (train.py's `implementations`, eval.py's
main): the core (rollout.py, logprobs.py) never imports this folder. Read the plain code first; come here for
what makes it fit a GPU.
    fast/decode.py     generate: rollout.generate's arguments and tokens (train.py --decode fast): Hugging Face's
                       generate draws, with a shared prefill, a static cache in the compute dtype sized once per
                       run, and one compiled step (tests/test_fast_decode.py)
    fast/logprobs.py   sequence_logprobs, log_weights: logprobs.py's (train.py --logprobs fast): the same log-probs
                       and gradients, without [N, T, V] logits and with each prompt run once for its samples
                       (tests/test_fast_logprobs.py)
"""
