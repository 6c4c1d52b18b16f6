"""Tests for data.py on the shipped samples (samples/), synthetic bad inputs and a faked hub."""

import doctest
import json
from pathlib import Path

import datasets
import pytest

import data

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
FILES = {
    "finqa": SAMPLES / "finqa_dev_sample.json",
    "hotpotqa": SAMPLES / "hotpotqa_dev_distractor_sample.json",
    "musique": SAMPLES / "musique_ans_dev_sample.jsonl",
}


def raw_rows(task):
    text = FILES[task].read_text(encoding="utf-8")
    return json.loads(text) if task != "musique" else [json.loads(l) for l in text.splitlines() if l.strip()]


def write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_doctests_pass():
    result = doctest.testmod(data)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- shipped samples

@pytest.mark.parametrize("task", data.TASKS)
def test_every_sample_row_loads(task):
    examples = data.load_examples(task, path=FILES[task])
    raw = raw_rows(task)
    assert len(examples) == len(raw) == 40
    for ex, row in zip(examples, raw):
        assert set(ex) == {"id", "question", "context", "answer", "aliases"}
        assert ex["id"] == row.get("_id", row.get("id"))
        assert isinstance(ex["context"], str) and ex["context"]
        assert isinstance(ex["aliases"], list) and all(isinstance(a, str) for a in ex["aliases"])
        assert ex["answer"] and "\\" not in ex["answer"]


def test_spot_checked_golds():
    finqa = data.load_examples("finqa", path=FILES["finqa"])
    assert (finqa[0]["id"], finqa[0]["answer"]) == ("V/2008/page_17.pdf-1", "127.40")
    assert finqa[0]["question"] == "what is the average payment volume per transaction for american express?"
    assert finqa[1]["answer"] == "56%"
    assert finqa[28]["answer"] == "no"
    hotpot = data.load_examples("hotpotqa", path=FILES["hotpotqa"])
    assert [e["answer"] for e in hotpot[:3]] == ["Rush", "Spurs", "1974"]
    assert [e["answer"] for e in hotpot] == [r["answer"] for r in raw_rows("hotpotqa")]
    musique = data.load_examples("musique", path=FILES["musique"])
    assert musique[0]["answer"] == "Stanley" and musique[0]["aliases"] == []
    assert musique[2]["answer"] == "Pittsburgh Pirates"
    assert musique[2]["aliases"] == ["Orioles", "Pirates", "Baltimore Orioles", "New York Mets", "Mets"]
    assert [e["aliases"] for e in musique] == [r["answer_aliases"] for r in raw_rows("musique")]


def test_finqa_backslash_n_answer_is_cleaned():
    raw = raw_rows("finqa")
    quirky = [i for i, r in enumerate(raw) if "\\n" in r["qa"]["answer"]]
    assert quirky, "the sample is known to hold a literal backslash-n answer"
    examples = data.load_examples("finqa", path=FILES["finqa"])
    for i in quirky:
        assert examples[i]["answer"] == raw[i]["qa"]["answer"].split("\\")[0]
    assert examples[7]["answer"] == "4.9"


def test_finqa_context_has_text_and_linearized_table():
    row = raw_rows("finqa")[0]
    context = data.load_examples("finqa", path=FILES["finqa"])[0]["context"]
    assert row["pre_text"][0] in context and row["post_text"][-1] in context
    assert "american express | 637 | 647 | 5.0 | 86" in context.splitlines()
    assert context.index(row["pre_text"][-1]) < context.index("mastercard | 1697") < context.index(row["post_text"][0])


def test_finqa_empty_answer_falls_back_to_exe_ans(tmp_path):
    rows = raw_rows("finqa")[:3]
    rows[0]["qa"]["answer"], rows[1]["qa"]["answer"] = "", ""
    examples = data.load_examples("finqa", path=write_json(tmp_path / "f.json", rows))
    assert [e["answer"] for e in examples[:2]] == [data.format_exe_ans(rows[0]["qa"]["exe_ans"]),
                                                   data.format_exe_ans(rows[1]["qa"]["exe_ans"])]
    assert examples[0]["answer"] == "127.4" and examples[1]["answer"] == "0.56197"
    assert data.format_exe_ans(114.0) == "114" and data.format_exe_ans("yes") == "yes"


def test_hotpotqa_context_has_all_titled_paragraphs():
    row = raw_rows("hotpotqa")[0]
    context = data.load_examples("hotpotqa", path=FILES["hotpotqa"])[0]["context"]
    paragraphs = context.split("\n\n")
    assert len(paragraphs) == len(row["context"]) == 10
    for paragraph, (title, sentences) in zip(paragraphs, row["context"]):
        assert paragraph.startswith(f"{title}: ")
        assert sentences[-1].strip() in paragraph
    assert "Neil Peart: Neil Ellwood Peart" in context


def test_musique_context_has_all_twenty_titles():
    for ex, row in zip(data.load_examples("musique", path=FILES["musique"]), raw_rows("musique")):
        paragraphs = ex["context"].split("\n\n")
        assert len(paragraphs) == len(row["paragraphs"]) == 20
        for paragraph, p in zip(paragraphs, row["paragraphs"]):
            assert paragraph == f"{p['title']}: {p['paragraph_text'].strip()}"


# ---------------------------------------------------------------- paper subsets

def ids(examples):
    return [e["id"] for e in examples]


@pytest.mark.parametrize("task", data.TASKS)
def test_subset_is_deterministic_and_seed_dependent(task):
    a = data.load_examples(task, "val", path=FILES[task], seed=0)
    b = data.load_examples(task, "val", path=FILES[task], seed=0)
    c = data.load_examples(task, "val", path=FILES[task], seed=1)
    assert ids(a) == ids(b)
    if task == "finqa":  # 40 rows < 872: val is the whole file whatever the seed
        assert sorted(ids(a)) == sorted(ids(c))
    else:
        assert set(ids(a)) != set(ids(c))


@pytest.mark.parametrize("task", ["hotpotqa", "musique"])
def test_dev_carved_val_and_test_are_disjoint_and_capped(task, capsys):
    val = data.load_examples(task, "val", path=FILES[task], seed=3)
    test = data.load_examples(task, "test", path=FILES[task], seed=3)
    out = capsys.readouterr().out
    sizes = data.PAPER_SIZES[task]
    assert not set(ids(val)) & set(ids(test))
    assert len(val) + len(test) == 40 and len(val) > 0 and len(test) > 0
    assert len(val) == round(40 * sizes["val"] / (sizes["val"] + sizes["test"]))
    assert out.count("fewer than the paper's") == 2
    assert f"{sizes['val']} val + {sizes['test']} test" in out and "has 40 usable rows" in out


def test_finqa_split_capped_with_note(capsys):
    examples = data.load_examples("finqa", "test", path=FILES["finqa"])
    out = capsys.readouterr().out
    assert len(examples) == 40
    assert "40 usable rows" in out and str(data.PAPER_SIZES["finqa"]["test"]) in out


def fake_examples(n):
    return [{"id": str(i), "question": "q", "context": "c", "answer": "a", "aliases": []} for i in range(n)]


@pytest.mark.parametrize("task", data.TASKS)
def test_full_size_subsets_have_paper_sizes(task, capsys):
    sizes = data.PAPER_SIZES[task]
    train = data.carve_paper_subset(fake_examples(sizes["train"] + 500), task, "train", seed=0)
    assert len(train) == sizes["train"]
    dev = fake_examples(2000)
    val = data.carve_paper_subset(dev, task, "val", seed=0)
    test = data.carve_paper_subset(dev, task, "test", seed=0)
    assert (len(val), len(test)) == (sizes["val"], sizes["test"])
    if data.SOURCE_SPLIT[task]["val"] == data.SOURCE_SPLIT[task]["test"]:
        assert not set(ids(val)) & set(ids(test))
    assert ids(train) == sorted(ids(train), key=int)  # file order kept within the subset
    assert capsys.readouterr().out == ""  # no cap note when the split is big enough


# ---------------------------------------------------------------- hub path (faked)

def hotpot_to_hub_layout(row):
    return {
        "id": row["_id"], "question": row["question"], "answer": row["answer"],
        "type": row["type"], "level": row["level"],
        "supporting_facts": {"title": [t for t, _ in row["supporting_facts"]],
                             "sent_id": [i for _, i in row["supporting_facts"]]},
        "context": {"title": [t for t, _ in row["context"]], "sentences": [s for _, s in row["context"]]},
    }


HOTPOT_HUB_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "question": datasets.Value("string"),
    "answer": datasets.Value("string"), "type": datasets.Value("string"), "level": datasets.Value("string"),
    "supporting_facts": datasets.Sequence({"title": datasets.Value("string"), "sent_id": datasets.Value("int32")}),
    "context": datasets.Sequence({"title": datasets.Value("string"),
                                  "sentences": datasets.Sequence(datasets.Value("string"))}),
})


def hotpot_hub_dataset():
    return datasets.Dataset.from_list([hotpot_to_hub_layout(r) for r in raw_rows("hotpotqa")],
                                      features=HOTPOT_HUB_FEATURES)


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset with the shipped samples in the hub copies' layout.

    FinQA and MuSiQue hub copies are plain JSON / JSONL files read by datasets' json builder, so the
    fake reads the sample files with that same builder; HotPotQA is built with the card's features.
    """
    real_load_dataset = datasets.load_dataset
    calls = []

    def fake_load_dataset(path, name=None, *, data_files=None, split=None, **kwargs):
        calls.append((path, name, data_files, split))
        if path == data.HOTPOTQA_HUB_ID:
            assert name == data.HOTPOTQA_HUB_CONFIG
            return hotpot_hub_dataset()
        task = {data.FINQA_HUB_ID: "finqa", data.MUSIQUE_HUB_ID: "musique"}[path]
        files = data.FINQA_HUB_FILES if task == "finqa" else data.MUSIQUE_HUB_FILES
        assert data_files == {split: files[split]}
        return real_load_dataset("json", data_files={split: str(FILES[task])}, split=split)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


@pytest.mark.parametrize("task", data.TASKS)
@pytest.mark.parametrize("split", data.SPLITS)
def test_hub_path_matches_local_path(task, split, fake_hub):
    hub = data.load_examples(task, split, seed=5)
    local = data.load_examples(task, split, path=FILES[task], seed=5)
    assert hub == local and len(hub) > 0
    assert fake_hub[-1][3] == data.SOURCE_SPLIT[task][split]


def test_hub_mode_needs_a_split():
    with pytest.raises(ValueError, match="split"):
        data.load_examples("musique")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".records.jsonl"])
def test_hotpotqa_local_file_in_hub_layout(tmp_path, suffix):
    path = tmp_path / f"hotpot{suffix}"
    ds = hotpot_hub_dataset()
    if suffix == ".records.jsonl":  # list-of-dicts form, as pyarrow's to_pylist writes it
        rows = [hotpot_to_hub_layout(r) for r in raw_rows("hotpotqa")]
        for r in rows:
            r["context"] = [{"title": t, "sentences": s}
                            for t, s in zip(r["context"]["title"], r["context"]["sentences"])]
        write_jsonl(path, rows)
    elif suffix == ".parquet":
        ds.to_parquet(str(path))
    elif suffix == ".jsonl":
        ds.to_json(str(path))  # datasets writes JSON Lines
    else:
        write_json(path, [hotpot_to_hub_layout(r) for r in raw_rows("hotpotqa")])
    assert data.load_examples("hotpotqa", path=path) == data.load_examples("hotpotqa", path=FILES["hotpotqa"])


def test_musique_dict_of_lists_paragraphs_are_converted():
    row = raw_rows("musique")[0]
    columns = {key: [p[key] for p in row["paragraphs"]] for key in row["paragraphs"][0]}
    assert data.to_original_format("musique", dict(row, paragraphs=columns)) == row


# ---------------------------------------------------------------- bad inputs

def test_hub_layout_with_mismatched_columns(tmp_path):
    row = hotpot_to_hub_layout(raw_rows("hotpotqa")[0])
    row["context"]["title"].pop()
    with pytest.raises(ValueError, match=r"row 0 \(id '5a7f6fd75542992e7d278cfa'\), line 1: hub field"):
        data.load_examples("hotpotqa", path=write_jsonl(tmp_path / "h.jsonl", [row]))


def test_unknown_task_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        data.load_examples("squad", path=FILES["finqa"])
    assert "'squad'" in str(err.value) and all(t in str(err.value) for t in data.TASKS)


def test_unknown_split():
    with pytest.raises(ValueError, match="'dev'"):
        data.load_examples("finqa", "dev", path=FILES["finqa"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        data.load_examples("finqa", path=tmp_path / "nope.json")


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"id": "a",\n "qa": }\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON at line 3"):
        data.load_examples("finqa", path=path)


def test_malformed_jsonl_line_names_the_line(tmp_path):
    lines = FILES["musique"].read_text(encoding="utf-8").splitlines()[:3]
    lines[2] = lines[2][:50]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 3: malformed"):
        data.load_examples("musique", path=path)


def test_row_missing_question_names_row_and_id(tmp_path):
    rows = raw_rows("hotpotqa")[:3]
    del rows[1]["question"]
    path = write_json(tmp_path / "h.json", rows)
    with pytest.raises(ValueError) as err:
        data.load_examples("hotpotqa", path=path)
    message = str(err.value)
    assert "h.json" in message and "row 1" in message and rows[1]["_id"] in message
    assert "'question'" in message


def test_finqa_row_missing_answer(tmp_path):
    rows = raw_rows("finqa")[:2]
    del rows[1]["qa"]["answer"]
    with pytest.raises(ValueError, match=r"row 1 \(id 'PKG/2009/page_65.pdf-4'\): missing field 'qa.answer'"):
        data.load_examples("finqa", path=write_json(tmp_path / "f.json", rows))


def test_field_of_wrong_type_names_row_id_and_line(tmp_path):
    rows = raw_rows("musique")[:4]
    rows[3]["answer_aliases"] = "Pirates"
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ValueError) as err:
        data.load_examples("musique", path=path)
    message = str(err.value)
    assert "row 3" in message and rows[3]["id"] in message and "line 4" in message
    assert "'answer_aliases'" in message and "list" in message


def test_finqa_table_of_wrong_shape(tmp_path):
    rows = raw_rows("finqa")[:1]
    rows[0]["table"] = "a | b"
    with pytest.raises(ValueError, match="'table' should be list"):
        data.load_examples("finqa", path=write_json(tmp_path / "f.json", rows))


def test_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "m.jsonl"
    first = FILES["musique"].read_text(encoding="utf-8").splitlines()[0]
    path.write_text(first + '\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="row 1, line 2: expected a JSON object, got list"):
        data.load_examples("musique", path=path)


def test_unanswerable_musique_rows_are_skipped_with_a_count(tmp_path, capsys):
    rows = raw_rows("musique")[:6]
    for i in (1, 4):
        rows[i]["answerable"] = False
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    examples = data.load_examples("musique", path=path)
    assert ids(examples) == [r["id"] for i, r in enumerate(rows) if i not in (1, 4)]
    assert f"skipped 2 unanswerable rows of {path}" in capsys.readouterr().out


def test_empty_gold_rows_are_skipped_with_a_count(tmp_path, capsys):
    rows = raw_rows("hotpotqa")[:5]
    rows[2]["answer"] = "  "
    examples = data.load_examples("hotpotqa", path=write_json(tmp_path / "h.json", rows))
    assert len(examples) == 4 and rows[2]["_id"] not in ids(examples)
    assert "skipped 1 rows with an empty question or gold answer of" in capsys.readouterr().out


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.jsonl: no rows"):
        data.load_examples("musique", path=path)


# ---------------------------------------------------------------- hub unreachable

def offline_error(hub_id):
    from huggingface_hub.errors import OfflineModeIsEnabled
    return OfflineModeIsEnabled(f"Couldn't reach '{hub_id}' on the Hub (OfflineModeIsEnabled)")


@pytest.mark.parametrize("task", data.TASKS)
@pytest.mark.parametrize("make_error", [
    lambda hub_id: ConnectionError(f"Couldn't reach '{hub_id}' on the Hub (LocalEntryNotFoundError)"),
    offline_error,
    lambda hub_id: datasets.exceptions.DatasetNotFoundError(f"Dataset '{hub_id}' doesn't exist on the Hub"),
])
def test_unreachable_hub_is_one_clear_error(task, make_error, monkeypatch):
    hub_id = {"finqa": data.FINQA_HUB_ID, "hotpotqa": data.HOTPOTQA_HUB_ID, "musique": data.MUSIQUE_HUB_ID}[task]
    error = make_error(hub_id)

    def unreachable(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(data.HubUnavailableError) as info:
        data.load_examples(task, "val")
    message = str(info.value)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is error
    assert f"could not load the {task} val questions" in message and repr(hub_id) in message
    assert f"split={data.SOURCE_SPLIT[task]['val']!r}" in message
    assert f"{type(error).__name__}: {str(error)}" in message  # what failed
    assert "--data FILE" in message and "--val-data FILE" in message  # what to pass instead
    assert "HF_DATASETS_OFFLINE" in message  # conftest sets it: the message says so
    assert "\n" not in message


def test_interrupt_while_loading_is_not_swallowed(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "load_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.load_examples("hotpotqa", "test")


@pytest.fixture
def no_model_load(monkeypatch):
    """eval.py must fail on data before it loads any model."""
    import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data error")

    monkeypatch.setattr(models, "load_model", refuse)


def test_eval_without_network_exits_with_the_message_before_loading_a_model(no_model_load, capsys):
    """The real datasets.load_dataset, offline (conftest sets HF_DATASETS_OFFLINE=1 and an empty HF_HOME)."""
    import eval as evaluator

    with pytest.raises(SystemExit) as info:
        evaluator.main(["--model", "tiny", "--task", "hotpotqa"])
    message = str(info.value.code)
    assert message.startswith("eval.py: could not load the hotpotqa test questions from the Hugging Face hub")
    assert repr(data.HOTPOTQA_HUB_ID) in message and "ConnectionError" in message and "--data FILE" in message
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("content, expected", [
    ('[{"id": "a",', "bad.jsonl: malformed JSON at line"),
    (json.dumps(dict(json.loads(FILES["musique"].read_text(encoding="utf-8").splitlines()[0]), answerable=False)),
     "no musique questions to evaluate"),
])
def test_eval_bad_data_file_exits_with_the_message(content, expected, tmp_path, no_model_load):
    import eval as evaluator

    path = tmp_path / "bad.jsonl"
    path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        evaluator.main(["--model", "tiny", "--task", "musique", "--data", str(path)])
    assert str(info.value.code).startswith("eval.py: ") and expected in str(info.value.code)
