"""Load FinQA, HotPotQA (distractor) and MuSiQue-Ans as flat question/context/answer examples.

    load_examples(task, split=None, path=None, seed=0) -> list of
    {"id": str, "question": str, "context": str, "answer": str, "aliases": list[str]}

path=None reads the Hugging Face hub with datasets.load_dataset (split required):
    finqa     TableQAKit/FinQA_retrieval, data_files train.json / dev.json / test.json
    hotpotqa  hotpotqa/hotpot_qa, config "distractor", splits train / validation
    musique   dgslibisey/MuSiQue, data_files musique_ans_v1.0_{train,dev}.jsonl
A path reads a local file in the dataset's original format (FinQA: JSON list, HotPotQA: JSON list,
MuSiQue: JSONL); HotPotQA also accepts the hub's layout (`id`, dict-of-lists) as .json/.jsonl/.parquet.
Hub rows are converted to the original format first, so one parser serves both.

Paper subsets (train/val/test): FinQA 6145/872/1132, HotPotQA 9067/342/343, MuSiQue 9985/579/445.
Project choice (the paper does not say how it drew them): shuffle the row indices of the official
split with random.Random(seed) and take a prefix. "train" comes from the official train split, FinQA
val/test from its official validation/test splits. HotPotQA and MuSiQue publish no test answers, so
their val and test are disjoint slices of the official dev split: val = first N_val shuffled rows,
test = the next N_test. A local file with split given is treated as the official split the subset is
drawn from; if it is too small, what there is comes back and one line says so (a short dev file is
shared between val and test in the paper's proportion). split=None returns every usable row in file
order. Subsets keep file order.

Bad-input policy (nothing is dropped silently):
    | condition                                           | action                                 |
    |-----------------------------------------------------|----------------------------------------|
    | unknown task or split; hub mode without a split     | ValueError                             |
    | hub dataset unreachable or failing to load          | HubUnavailableError (a ValueError):    |
    | (no network, offline mode, outage, ...)             | the load_dataset call, the error, and  |
    |                                                     | the flags to pass (--data, --val-data) |
    | missing file                                        | FileNotFoundError                      |
    | malformed JSON / JSONL line, not UTF-8, no rows     | ValueError naming the file (and line)  |
    | row not an object; field missing, null or mistyped  | ValueError naming file, row (0-based), |
    |                                                     | id and JSONL line                      |
    | MuSiQue row with answerable = false                 | skipped, count printed                 |
    | empty question or empty gold (after FinQA fallback) | skipped, count printed                 |
"""

import json
import os
import random
import re
from pathlib import Path

TASKS = ("finqa", "hotpotqa", "musique")
SPLITS = ("train", "val", "test")
SAMPLES = Path(__file__).resolve().parent / "samples"  # 40 real dev rows of each task, shipped (SOURCES.md)
SAMPLE_FILES = {"finqa": SAMPLES / "finqa_dev_sample.json", "hotpotqa": SAMPLES / "hotpotqa_dev_distractor_sample.json",
                "musique": SAMPLES / "musique_ans_dev_sample.jsonl"}
# Fictional one-hop questions in MuSiQue's format (experiments/synth_musique.py, SOURCES.md sections 4-5): 400 to
# train on and 64 held out. No model can know their answers beforehand, so a rise on the held-out ones is learning.
SYNTH_FILES = {"train": SAMPLES / "synth_musique_train.jsonl", "test": SAMPLES / "synth_musique_test.jsonl"}

# Hub copies. Evidence for each schema is noted where it was checked.
# FinQA: the official train/dev/test JSON files (78.2 / 11 / 14.4 MB, the sizes of czyssrs/FinQA's
# dataset/*.json) uploaded as plain files. Checked: the repo tree lists exactly these three files, and
# public code (hf_hub_download of its test.json) reads item["pre_text"], item["post_text"],
# item["table"], item["qa"]["question"/"answer"/"gold_inds"], item["id"], the original schema.
# Script-based copies (dreamerdeo/finqa, ibm-research/finqa) were ruled out: datasets >= 4 refuses
# dataset scripts ("Dataset scripts are no longer supported"). The json builder keeps the nesting;
# exe_ans mixes floats and "yes"/"no", which needs datasets >= 4.7 (its Json() type, PR #8027; older
# versions fail with an Arrow type error). Checked with datasets 5.2 on the shipped sample.
FINQA_HUB_ID = "TableQAKit/FinQA_retrieval"
FINQA_HUB_FILES = {"train": "train.json", "validation": "dev.json", "test": "test.json"}
# HotPotQA: the dataset card lists config "distractor" with features id, question, answer, type,
# level, supporting_facts {title, sent_id}, context {title, sentences}; splits train 90447 and
# validation 7405 (the test set has no public answers).
HOTPOTQA_HUB_ID, HOTPOTQA_HUB_CONFIG = "hotpotqa/hotpot_qa", "distractor"
# MuSiQue: the repo tree holds musique_ans_v1.0_train.jsonl and musique_ans_v1.0_dev.jsonl (30.4 MB,
# the official dev size; its test file was deleted). Public code loads it with split="validation" and
# reads ex["paragraphs"][i]["is_supporting"/"title"], ex["question"], i.e. the original JSONL rows.
MUSIQUE_HUB_ID = "dgslibisey/MuSiQue"
MUSIQUE_HUB_FILES = {"train": "musique_ans_v1.0_train.jsonl", "validation": "musique_ans_v1.0_dev.jsonl"}

PAPER_SIZES = {
    "finqa": {"train": 6145, "val": 872, "test": 1132},
    "hotpotqa": {"train": 9067, "val": 342, "test": 343},
    "musique": {"train": 9985, "val": 579, "test": 445},
}
# The official split each paper subset is drawn from.
SOURCE_SPLIT = {
    "finqa": {"train": "train", "val": "validation", "test": "test"},
    "hotpotqa": {"train": "train", "val": "validation", "test": "validation"},
    "musique": {"train": "train", "val": "validation", "test": "validation"},
}


def load_examples(task: str, split: str | None = None, path: str | Path | None = None,
                  seed: int = 0) -> list[dict]:
    """Load one task as a list of {id, question, context, answer, aliases} dicts (see module doc)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if path is None:
        if split is None:
            raise ValueError(f"loading {task} from the hub needs split= one of {', '.join(SPLITS)}")
        rows, source = load_hub_rows(task, split), f"{task} hub split {SOURCE_SPLIT[task][split]}"
        lines = [None] * len(rows)
    else:
        rows, lines = read_records(path)
        source = str(path)
    examples = parse_rows(task, rows, lines, source)
    if split is None:
        return examples
    return carve_paper_subset(examples, task, split, seed, source)


def load_hub_rows(task: str, split: str) -> list[dict]:
    """Download the official split behind a paper split and return its rows in the original format."""
    import datasets  # imported here so that local loading does not pay for it

    hub_split = SOURCE_SPLIT[task][split]
    if task == "finqa":
        args, kwargs = (FINQA_HUB_ID,), {"data_files": {hub_split: FINQA_HUB_FILES[hub_split]}}
    elif task == "hotpotqa":
        args, kwargs = (HOTPOTQA_HUB_ID, HOTPOTQA_HUB_CONFIG), {}
    else:
        args, kwargs = (MUSIQUE_HUB_ID,), {"data_files": {hub_split: MUSIQUE_HUB_FILES[hub_split]}}
    kwargs["split"] = hub_split
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except Exception as e:  # no network, offline mode, hub outage, gated repo, a datasets version too old, ...
        offline = [name for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
                   if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")]
        raise HubUnavailableError(hub_unavailable_message(task, split, args, kwargs, e, offline)) from e
    # parse_rows applies to_original_format to every row, so hub rows and local rows share one parser.
    return [dict(row) for row in ds]


class HubUnavailableError(ValueError):
    """The hub copy of a dataset could not be loaded; the message says what failed and which flag to pass."""


def hub_unavailable_message(task: str, split: str, args: tuple, kwargs: dict, error: Exception,
                            offline: list[str] = ()) -> str:
    """One paragraph for the CLIs to print: the load_dataset call, what failed, and the flags to pass instead.

    offline names the offline-mode variables that are set (HF_DATASETS_OFFLINE, HF_HUB_OFFLINE).

    >>> print(hub_unavailable_message("musique", "val", ("dgslibisey/MuSiQue",), {"split": "validation"},
    ...                               ConnectionError("Couldn't reach 'dgslibisey/MuSiQue' on the Hub")))
    ... # doctest: +NORMALIZE_WHITESPACE
    could not load the musique val questions from the Hugging Face hub: datasets.load_dataset('dgslibisey/MuSiQue',
    split='validation') failed with ConnectionError: Couldn't reach 'dgslibisey/MuSiQue' on the Hub. Without
    network, pass the dataset as a local file in its original format: --data FILE (eval.py, train.py); train.py
    also takes --val-data FILE for its validation questions (samples/ holds 40-row examples of each format).
    """
    call = ", ".join([repr(a) for a in args] + [f"{key}={value!r}" for key, value in kwargs.items()])
    lines = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
    if offline:  # why datasets did not even try the network
        verb = "is" if len(offline) == 1 else "are"
        reason += f"; {' and '.join(offline)} {verb} set, so datasets reads only its local cache"
    return (f"could not load the {task} {split} questions from the Hugging Face hub: datasets.load_dataset({call}) "
            f"failed with {reason}. Without network, pass the dataset as a local file in its original format: "
            f"--data FILE (eval.py, train.py); train.py also takes --val-data FILE for its validation questions "
            f"(samples/ holds 40-row examples of each format).")


def read_records(path: str | Path) -> tuple[list, list[int | None]]:
    """Read a JSON list, a JSONL file or a parquet file; return the rows and their JSONL line numbers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import datasets
        rows = datasets.Dataset.from_parquet(str(path)).to_list()
        return rows, [None] * len(rows)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    # Sniff the content, not the suffix: datasets' to_json writes JSON Lines even to a ".json" name.
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        lines = [None] * len(rows)
    else:
        rows, lines = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {number}: malformed JSON Lines record: {e.msg}") from None
            lines.append(number)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows, lines


def parse_rows(task: str, rows: list, lines: list[int | None], source: str) -> list[dict]:
    """Parse original-format rows into examples; raise on malformed rows, count the skipped ones."""
    parse = {"finqa": parse_finqa, "hotpotqa": parse_hotpotqa, "musique": parse_musique}[task]
    examples, skipped = [], {}
    for index, (row, line) in enumerate(zip(rows, lines)):
        try:
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            example = parse(to_original_format(task, row))
        except (ValueError, TypeError) as e:  # TypeError: e.g. a hub column that is not a list
            row_id = row.get("_id", row.get("id")) if isinstance(row, dict) else None
            where = f"row {index}" + (f" (id {row_id!r})" if row_id is not None else "")
            where += f", line {line}" if line is not None else ""
            raise ValueError(f"{source}: {where}: {e}") from None
        if isinstance(example, str):  # a skip reason
            skipped[example] = skipped.get(example, 0) + 1
        else:
            examples.append(example)
    for reason, count in skipped.items():
        print(f"data: skipped {count} {reason} of {source}")
    return examples


def to_original_format(task: str, row: dict) -> dict:
    """Rewrite hub-layout fields in the dataset's original layout; original rows pass unchanged."""
    if task == "hotpotqa" and "_id" not in row and "id" in row:
        row = dict(row)
        row["_id"] = row.pop("id")
        if "context" in row:
            row["context"] = [list(pair) for pair in _pairs(row["context"], "title", "sentences")]
        if "supporting_facts" in row:
            row["supporting_facts"] = [list(pair) for pair in _pairs(row["supporting_facts"], "title", "sent_id")]
    if task == "musique" and isinstance(row.get("paragraphs"), dict):
        # A datasets Sequence-of-struct column comes back as a dict of lists.
        row = dict(row)
        cols = row["paragraphs"]
        row["paragraphs"] = [dict(zip(cols, values)) for values in zip(*cols.values())]
    return row


def _pairs(value, first: str, second: str) -> list:
    """Hub dict-of-lists ({title: [..], sentences: [..]}) or list of dicts -> list of [a, b] pairs."""
    if isinstance(value, dict):
        if first not in value or second not in value or len(value[first]) != len(value[second]):
            raise ValueError(f"hub field with keys {sorted(value)} needs equal-length {first!r} and {second!r}")
        return list(zip(value[first], value[second]))
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return [(item.get(first), item.get(second)) for item in value]
    return value  # already original; the parser checks it


def _field(obj: dict, key: str, kind, name: str | None = None):
    """obj[key], checked to exist and to have the given type(s)."""
    name = name or key
    if key not in obj or obj[key] is None:
        raise ValueError(f"missing field {name!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"field {name!r} should be {wanted}, got {type(value).__name__}")
    return value


def _strings(obj: dict, key: str, name: str | None = None) -> list[str]:
    values = _field(obj, key, list, name)
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"field {name or key!r} should be a list of strings")
    return values


def _example(ex_id: str, question: str, context: str, answer: str, aliases: list[str]):
    """The example dict, or a skip reason when the question or gold is empty.

    Project choice: such rows are well-formed but unusable (nothing to ask, or nothing to score
    against), so they are skipped and counted rather than raised.
    """
    if not question.strip() or not answer.strip():
        return "rows with an empty question or gold answer"
    return {"id": ex_id, "question": question.strip(), "context": context,
            "answer": answer.strip(), "aliases": [a.strip() for a in aliases if a.strip()]}


def parse_finqa(row: dict):
    """FinQA: context = pre_text, the table (one row per line, cells joined by " | "), post_text."""
    qa = _field(row, "qa", dict)
    question = _field(qa, "question", str, "qa.question")
    # Project choice: some display answers end in a literal backslash-n sequence (the characters
    # `4.9\\n` in row CB/2010/page_200.pdf-4), an escaping slip in the source; drop it.
    answer = re.sub(r"\\+n", " ", _field(qa, "answer", str, "qa.answer")).strip()
    if not answer and qa.get("exe_ans") is not None:
        # Project choice: exe_ans is the executed program's result, the only other gold the
        # dataset carries, so it stands in when the display answer is empty.
        answer = format_exe_ans(_field(qa, "exe_ans", (int, float, str), "qa.exe_ans"))
    table = _field(row, "table", list)
    if not all(isinstance(r, list) and all(isinstance(c, (str, int, float)) for c in r) for r in table):
        raise ValueError("field 'table' should be a list of rows of cells")
    # Project choice: the table as text, one row per line, so a cell reads next to its headers.
    table_text = "\n".join(" | ".join(str(c).strip() for c in r) for r in table)
    parts = ["\n".join(_strings(row, "pre_text")), table_text, "\n".join(_strings(row, "post_text"))]
    # Project choice: no aliases. exe_ans disagrees with the display answer in some rows (in the
    # shipped sample: "44%" vs 1.25, "-3.2%" vs -16.0), so adding it would accept answers the gold
    # rules out; formatting differences (56% vs 0.56) are rewards.numeric_match's job instead.
    return _example(_field(row, "id", str), question, "\n\n".join(p for p in parts if p), answer, [])


def format_exe_ans(value) -> str:
    """FinQA's exe_ans as a gold string; FinQA rounds it to 5 decimals, so show at most 5.

    >>> format_exe_ans(127.4), format_exe_ans(114.0), format_exe_ans(0.561966), format_exe_ans("yes")
    ('127.4', '114', '0.56197', 'yes')
    """
    if isinstance(value, str):
        return value.strip()
    text = f"{value:.5f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def parse_hotpotqa(row: dict):
    """HotPotQA distractor: context = the ten "Title: sentences" paragraphs, blank-line separated."""
    paragraphs = []
    for entry in _field(row, "context", list):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and all(isinstance(s, str) for s in entry[1])):
            raise ValueError("field 'context' should be a list of [title, [sentences]]")
        # Project choice: "Title: text" paragraphs. Sentences carry their own leading spaces
        # inconsistently, so they are re-joined with one space.
        paragraphs.append(f"{entry[0]}: " + " ".join(s.strip() for s in entry[1] if s.strip()))
    return _example(_field(row, "_id", str), _field(row, "question", str), "\n\n".join(paragraphs),
                    _field(row, "answer", str), [])


def parse_musique(row: dict):
    """MuSiQue-Ans: context = the twenty "Title: text" paragraphs; aliases = answer_aliases."""
    # Project choice: MuSiQue-Ans rows always carry `answerable`; a row without it counts as answerable.
    answerable = row.get("answerable", True)
    if not isinstance(answerable, bool):
        raise ValueError(f"field 'answerable' should be bool, got {type(answerable).__name__}")
    ex_id = _field(row, "id", str)
    if not answerable:
        return "unanswerable rows"
    paragraphs = []
    for i, p in enumerate(_field(row, "paragraphs", list)):
        if not isinstance(p, dict):
            raise ValueError(f"paragraphs[{i}] should be an object")
        title = _field(p, "title", str, f"paragraphs[{i}].title")
        text = _field(p, "paragraph_text", str, f"paragraphs[{i}].paragraph_text")
        paragraphs.append(f"{title}: {text.strip()}")
    aliases = _strings(row, "answer_aliases") if row.get("answer_aliases") is not None else []
    return _example(ex_id, _field(row, "question", str), "\n\n".join(paragraphs),
                    _field(row, "answer", str), aliases)


def carve_paper_subset(examples: list[dict], task: str, split: str, seed: int = 0,
                       source: str = "the input") -> list[dict]:
    """The paper-size subset for task/split from the rows of its official split (see module doc)."""
    sizes, n = PAPER_SIZES[task], len(examples)
    shares_dev = SOURCE_SPLIT[task]["val"] == SOURCE_SPLIT[task]["test"]
    if shares_dev and split in ("val", "test"):
        n_val, n_test = sizes["val"], sizes["test"]
        needed, wanted = n_val + n_test, f"{n_val} val + {n_test} test"
        if n < needed:
            # Project choice: a short dev file is shared between val and test in the paper's
            # proportion, so that neither comes back empty.
            n_val = round(n * n_val / needed)
        start, stop = (0, n_val) if split == "val" else (n_val, n_val + n_test)
    else:
        needed = sizes[split]
        start, stop, wanted = 0, needed, str(needed)
    # Project choice (the paper does not say how it drew its subsets): a seeded shuffle of indices.
    order = list(range(n))
    random.Random(seed).shuffle(order)
    chosen = sorted(order[start:stop])  # Project choice: keep file order within the subset
    if n < needed:
        print(f"data: {task} {split}: {source} has {n} usable rows, fewer than the paper's "
              f"{wanted}; returning {len(chosen)}")
    return [examples[i] for i in chosen]


# ------------------------------------------------------------------------------------------------ a run's questions
def resolve_data(task: str, data: str, val_data: str | None = None) -> tuple[str, str | None]:
    """train.py's --data keywords -> (training file or "hub", validation file or None); a path passes unchanged.

    "sample": the shipped 40 real dev rows of the task (validation: --val-size of them, held out).
    "synth": the shipped fictional questions (MuSiQue's format, so --task musique): training on
    SYNTH_FILES["train"], validation on SYNTH_FILES["test"] unless --val-data says otherwise.
    >>> [Path(f).name for f in resolve_data("musique", "synth")]
    ['synth_musique_train.jsonl', 'synth_musique_test.jsonl']
    """
    if data == "sample":
        return str(SAMPLE_FILES[task]), val_data
    if data == "synth":
        if task != "musique":
            raise ValueError(f"--data synth: the fictional questions are in MuSiQue's format; pass --task musique "
                             f"(got --task {task})")
        return str(SYNTH_FILES["train"]), val_data or str(SYNTH_FILES["test"])
    return data, val_data


def load_train_val(task: str, data: str, val_data: str | None = None, val_size: int = 0, train_size: int = 0,
                   context_chars: int = 0, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A training run's questions: (train, val), as train.py's --data, --val-data, --val-size,
    --train-size and --context-chars ask.

    data "hub": the paper's train subset, and its val subset unless val_data is given. A local file:
    its rows train, and val_size of them, drawn with random.Random(seed), are held out for validation
    (unless val_data is given). val_size / train_size keep the first N (0: all); context_chars cuts
    each context to N characters (0: never), and says how many it cut.
    """
    hub = data == "hub"
    if val_data and hub:
        raise ValueError("--val-data needs --data FILE too (with --data hub the validation set is the hub's val subset)")
    train = load_examples(task, "train", None if hub else data, seed)
    if val_data:  # the shipped held-out file is used as it is (its first val_size rows, as experiments/heldout.py
        # uses them); another file is carved as the paper's val subset of a dev split
        val = load_examples(task, None if Path(val_data).resolve() == SYNTH_FILES["test"] else "val", val_data, seed)
    elif hub:
        val = load_examples(task, "val", None, seed)
    else:  # hold out val_size questions of the local file
        if not 0 < val_size < len(train):
            raise ValueError(f"--val-size {val_size}: hold out between 1 and {len(train) - 1} of the {len(train)} "
                             f"questions in --data {data}, or pass --val-data")
        held = set(random.Random(seed).sample(range(len(train)), val_size))
        val = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
    if val_size:
        val = val[:val_size]
    if train_size:
        train = train[:train_size]
    if context_chars:
        cut = sum(len(ex["context"]) > context_chars for ex in train + val)
        train = [dict(ex, context=ex["context"][:context_chars]) for ex in train]
        val = [dict(ex, context=ex["context"][:context_chars]) for ex in val]
        print(f"data: cut {cut} of {len(train) + len(val)} contexts to --context-chars {context_chars}")
    return train, val


class Batches:
    """Questions in a seeded random order, reshuffled every epoch; its position is part of a checkpoint.

    >>> b = Batches(["a", "b", "c"], seed=0); len(b.next(2) + b.next(2))   # the 4th question opens epoch 1
    4
    """

    def __init__(self, examples, seed):
        self.examples, self.seed, self.epoch, self.pos = examples, seed, 0, 0
        self.order = self._order()

    def _order(self):
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        return order

    def next(self, n):
        batch = []
        while len(batch) < n:
            if self.pos == len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order()
            batch.append(self.examples[self.order[self.pos]])
            self.pos += 1
        return batch

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = self._order()
