"""Test-wide setup: run fully offline, with a throwaway Hugging Face cache.

Set before any test module imports transformers or datasets, so nothing can download weights or
data at test time (a test that tries fails loudly instead).
"""
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_home_"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (the README's test command runs `-n 2`: one worker per core) each worker is a process of
# its own: one torch thread each, so that two workers do not run four threads on two cores and stall each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
