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
