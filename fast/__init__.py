"""Opt-in fast paths, each tested equal to the reference.

Every module here computes what a plain function elsewhere in the project defines (fast/logprobs.py:
logprobs.py's log-probs), one flag away from it (fast=True), and its tests check that the numbers and
gradients are the plain path's. Read the plain code first; come here for what makes it fit a GPU.
"""
