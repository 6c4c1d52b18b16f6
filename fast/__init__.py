"""Opt-in fast paths, each tested equal to the reference: fast/decode.py draws the tokens rollout.py's
`generate` (Hugging Face's generate) draws, with a static cache in the compute dtype, attention over its
filled part, and one compiled step (`generate(..., decode="fast")`; tests/test_fast_decode.py)."""
