"""Opt-in fast paths, each tested equal to the reference.

Every module here computes what a plain function at the top level defines, one flag away from it, and its
tests check that the numbers are the plain path's. Read the plain code first; come here for what makes it
fit a GPU.
    fast/decode.py     rollout.generate(..., decode="fast"), train.py --decode fast: the tokens Hugging Face's
                       generate draws, with a shared prefill, a static cache in the compute dtype sized once per
                       run, and one compiled step (tests/test_fast_decode.py)
    fast/logprobs.py   logprobs.sequence_logprobs(..., fast=True), train.py --logprobs fast: the same log-probs
                       and gradients, without [N, T, V] logits and with each prompt run once for its samples
                       (tests/test_fast_logprobs.py)
"""
