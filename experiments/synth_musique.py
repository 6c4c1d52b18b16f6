r"""Multi-hop questions about fictional people and places, written in MuSiQue-Ans's original jsonl format.

    python experiments/synth_musique.py --out data/synth            # train.jsonl, val.jsonl, test.jsonl
    python experiments/synth_musique.py --out DIR --two-hop 0.5     # half the questions need two hops

Why fictional: a question about a real place may be answered from pretraining; a person called "Dovamir"
born in "Kelsavik" is known to no model, so the only way to the answer is to read the paragraphs. Names are
made from syllables (NAME_SYLLABLES), so no pretrained model has seen them.

One row (the shape of a MuSiQue-Ans row, so that data.load_examples("musique", path=FILE), the prompts,
the verifiers and `train.py --task musique --data FILE` take it unchanged):

    {"id": "synth1hop__test_3", "answerable": true,
     "paragraphs": [{"idx": 0, "title": "Dovamir", "paragraph_text": "Dovamir was born in Kelsavik. Dovamir
                     works as a weaver.", "is_supporting": true},
                    {"idx": 1, "title": "Ruteno", "paragraph_text": "Ruteno was born in Pomaford. ...",
                     "is_supporting": false}, ...],
     "question": "Where was Dovamir born?", "answer": "Kelsavik", "answer_aliases": [],
     "question_decomposition": [{"id": 0, "question": "Where was Dovamir born?", "answer": "Kelsavik",
                                 "paragraph_support_idx": 0}]}

A row holds `people` people, each born in a different town (one paragraph per person: the supporting one
for the person asked about, the others distractors). A two-hop row also has one paragraph per town, "T is
a town in L.", and asks "In which country was X born?" (answer L, two supporting paragraphs). Every
answer is a span of the row's context. Sharing the question's words with every distractor (each person
was born somewhere) is what makes a row a reading task rather than a keyword lookup.

Splits are disjoint: a row is identified by its question and its context (data.load_examples' fields),
and a row already drawn for an earlier split is drawn again. The generator is seeded: the same
--seed gives byte-identical files.
"""
import argparse
import json
import random
import sys
from pathlib import Path

# Project choice: consonant-vowel syllables (with a few closed ones) that make pronounceable names of 2-3
# syllables, e.g. "Dovamir", "Kelsa". Towns get a suffix, countries an ending, so that the three kinds
# of entity look different, as real ones do.
NAME_SYLLABLES = ["ba", "do", "ke", "li", "mo", "ra", "su", "te", "vi", "za", "no", "pe", "ri", "ga",
                  "lo", "mir", "sel", "tan", "dor", "ven", "kal", "rin", "bo", "fa", "nu", "sha", "tor", "ul"]
TOWN_SUFFIXES = ["vik", "ford", "holm", "stad", "burg", "mere", "dale", "port"]
COUNTRY_ENDINGS = ["ia", "land", "ara", "istan", "onia"]
JOBS = ["weaver", "baker", "sailor", "painter", "farmer", "teacher", "miller", "potter", "singer", "carpenter",
        "doctor", "fisher", "smith", "poet", "gardener", "merchant"]
SPLITS = ("train", "val", "test")


def fictional_name(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A capitalized name of 2-3 syllables.

    >>> fictional_name(random.Random(0))
    'Nugado'
    """
    n = rng.randint(*syllables)
    return "".join(rng.choice(NAME_SYLLABLES) for _ in range(n)).capitalize()


def distinct(rng: random.Random, n: int, make) -> list[str]:
    """n distinct strings from make(rng), none a substring of another (so that answer spans and the
    verifier's whole-token match never confuse two entities)."""
    out = []
    while len(out) < n:
        name = make(rng)
        if all(name not in o and o not in name for o in out):
            out.append(name)
    return out


def make_row(rng: random.Random, row_id: str, hops: int, people: int = 4, countries: int = 2) -> dict:
    """One MuSiQue-format row: `people` people born in distinct towns; `hops` = 1 asks for the town,
    2 for the country of the town (the towns spread over `countries` distinct countries)."""
    names = distinct(rng, people, fictional_name)
    towns = distinct(rng, people, lambda r: fictional_name(r, (2, 2)) + r.choice(TOWN_SUFFIXES))
    # entities of the three kinds must not contain each other either
    while any(a in b or b in a for a in names for b in towns):
        towns = distinct(rng, people, lambda r: fictional_name(r, (2, 2)) + r.choice(TOWN_SUFFIXES))
    paragraphs = []
    for name, town in zip(names, towns):
        paragraphs.append({"title": name, "paragraph_text": f"{name} was born in {town}. "
                           f"{name} works as a {rng.choice(JOBS)}."})
    asked = rng.randrange(people)
    question = f"Where was {names[asked]} born?"
    decomposition = [{"id": 0, "question": question, "answer": towns[asked]}]
    answer, support = towns[asked], {names[asked]}
    if hops == 2:
        lands = distinct(rng, countries, lambda r: fictional_name(r, (2, 2)) + r.choice(COUNTRY_ENDINGS))
        while any(a in b or b in a for a in lands for b in names + towns):
            lands = distinct(rng, countries, lambda r: fictional_name(r, (2, 2)) + r.choice(COUNTRY_ENDINGS))
        # every country gets at least one town, so that every country is a possible (wrong) answer
        town_land = lands + [rng.choice(lands) for _ in range(people - countries)]
        rng.shuffle(town_land)
        for town, land in zip(towns, town_land):
            paragraphs.append({"title": town, "paragraph_text": f"{town} is a town in {land}."})
        question = f"In which country was {names[asked]} born?"
        answer = town_land[asked]
        support.add(towns[asked])
        decomposition = [{"id": 0, "question": f"Where was {names[asked]} born?", "answer": towns[asked]},
                         {"id": 1, "question": f"{towns[asked]} >> country", "answer": answer}]
    rng.shuffle(paragraphs)
    for i, p in enumerate(paragraphs):
        p["idx"] = i
        p["is_supporting"] = p["title"] in support
    for d in decomposition:
        d["paragraph_support_idx"] = next(p["idx"] for p in paragraphs
                                          if p["title"] == (names[asked] if d["id"] == 0 else towns[asked]))
    return {"id": row_id, "paragraphs": [{k: p[k] for k in ("idx", "title", "paragraph_text", "is_supporting")}
                                         for p in paragraphs],
            "question": question, "question_decomposition": decomposition, "answer": answer,
            "answer_aliases": [], "answerable": True}


def row_key(row: dict) -> str:
    """What identifies a question to a model: its question and its paragraphs."""
    return row["question"] + "\n" + "\n".join(p["paragraph_text"] for p in row["paragraphs"])


def generate(sizes: dict, seed: int = 0, two_hop: float = 0.0, people: int = 4) -> dict:
    """{split: [rows]} for sizes {split: n}; a fraction two_hop of each split's rows (rounded) has two hops.

    Deterministic in (sizes, seed, two_hop, people), and the splits share no row (row_key).
    >>> rows = generate({"train": 3, "test": 2}, seed=1, two_hop=0.5)
    >>> [len(rows["train"]), len(rows["test"])], rows["test"][0]["answer"] in str(rows["test"][0]["paragraphs"])
    ([3, 2], True)
    """
    seen, out = set(), {}
    for k, split in enumerate(sizes):
        rng = random.Random(f"{seed}-{split}")  # one stream per split: a bigger train split leaves test unchanged
        n_two = round(two_hop * sizes[split])
        hops = [2] * n_two + [1] * (sizes[split] - n_two)
        rng.shuffle(hops)
        rows = []
        for i, h in enumerate(hops):
            while True:
                row = make_row(rng, f"synth{h}hop__{split}_{i}", h, people)
                if row_key(row) not in seen:
                    break
            seen.add(row_key(row))
            rows.append(row)
        out[split] = rows
    return out


def write(rows_by_split: dict, out: Path) -> dict:
    """Write SPLIT.jsonl per split into out; returns {split: path}."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in rows_by_split.items():
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl")
    p.add_argument("--train", type=int, default=2000, help="training rows")
    p.add_argument("--val", type=int, default=128, help="validation rows")
    p.add_argument("--test", type=int, default=128, help="test rows")
    p.add_argument("--two-hop", type=float, default=0.0, help="fraction of rows with two hops (0: all one hop)")
    p.add_argument("--people", type=int, default=4, help="people per row (1 supporting paragraph, the rest distractors)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    args = p.parse_args(argv)
    if not 0 <= args.two_hop <= 1:
        p.error(f"--two-hop must be in [0, 1], got {args.two_hop}")
    if args.people < 2:
        p.error(f"--people must be >= 2 (a two-hop row spreads its towns over 2 countries), got {args.people}")
    return args


def main(argv=None):
    args = parse_args(argv)
    rows = generate({"train": args.train, "val": args.val, "test": args.test}, args.seed, args.two_hop, args.people)
    for split, path in write(rows, Path(args.out)).items():
        print(f"wrote {len(rows[split])} rows to {path}")


if __name__ == "__main__":
    sys.exit(main())
