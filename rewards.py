"""Answer extraction, SQuAD/HotPotQA-style normalization and the verifiers used for rewards and evaluation.

The paper scores a sample as correct when the gold answer is a substring of the prediction
(substring_match, after normalization); GRPO's training reward is exact match (exact_match).
f1_score is the official HotPotQA/MuSiQue token F1, majority_vote serves maj@16, and numeric_match
is an extra FinQA metric reported beside the paper's, never instead of it.
Every verifier takes golds as one string or a list of accepted strings and returns the max over them.
"""

import re
import string
from collections import Counter

_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")
_PREFIX = re.compile(
    r"^(?:the\s+final\s+answer\s+is\b|the\s+answer\s+is\b|final\s+answer\s*[:：]|answer\s*[:：])\s*[:：]?", re.I)
_PUNCTUATION = set(string.punctuation)  # ASCII punctuation, as in the official scripts
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`"}


def extract_answer(text: str) -> str:
    r"""The final answer in a model output: the text after the last </think>, unwrapped.

    Drops chat end tokens, takes the content of the last \boxed{...} (nested braces handled; an
    unclosed box, as left by a truncated output, runs to the end), then peels a leading
    "Answer:" / "Final answer:" / "The answer is", surrounding quotes or **bold**, and whitespace.

    >>> extract_answer("<think>2+2...</think>\n\nThe answer is **\\boxed{\\frac{1}{2}}**.<|im_end|>")
    '\\frac{1}{2}'
    >>> extract_answer('<think>a</think> x </think> Final answer: "Rush"')
    'Rush'
    """
    for token in _END_TOKENS:
        text = text.replace(token, "")
    # Project choice: the answer follows the LAST </think> (a model may echo the tag), and the LAST
    # \boxed{} in it wins (a model may box intermediate results first).
    text = text.rsplit("</think>", 1)[-1]
    boxed = _last_boxed(text)
    if boxed is not None:
        text = boxed
    previous = None
    while text != previous:  # peel wrappers until nothing changes: '**Answer:** "x"' needs two rounds
        previous = text
        # Project choice: surrounding asterisks are markdown emphasis (**x**, *x*), never part of an answer.
        text = text.strip().strip("*").strip()
        text = _PREFIX.sub("", text).strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1]
        match = re.fullmatch(r"\\text\{(.*)\}", text, re.S)
        if match:
            text = match.group(1)
    # LaTeX escapes that models put inside \boxed{}: 12.5\% means 12.5%.
    return text.replace("\\%", "%").replace("\\$", "$").strip()


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, matching nested braces; None if there is no box."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return text[i:]


def normalize_answer(s: str) -> str:
    """SQuAD/HotPotQA normalization: lower-case, drop punctuation, drop a/an/the, squeeze spaces.

    >>> normalize_answer("The  Rush!")
    'rush'
    >>> normalize_answer("St. Louis, Missouri")
    'st louis missouri'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _gold_list(golds: str | list[str]) -> list[str]:
    """Golds as a list, keeping only those that normalize to something.

    Project choice: a gold that normalizes to "" (e.g. "the", "!") never matches anything, in every
    verifier; otherwise an empty gold would be a substring of every prediction.
    """
    golds = [golds] if isinstance(golds, str) else list(golds)
    # Project choice: drop golds with nothing left after normalization (see the docstring).
    return [g for g in golds if normalize_answer(g)]


def exact_match(pred: str, golds: str | list[str]) -> float:
    """1.0 when the normalized prediction equals some normalized gold, else 0.0.

    >>> exact_match("the Rush.", ["Rush", "Rush (band)"])
    1.0
    >>> exact_match("Rush band", "Rush")
    0.0
    """
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _gold_list(golds)))


def substring_match(pred: str, golds: str | list[str]) -> float:
    """The paper's relaxed match: 1.0 when some normalized gold is a substring of the normalized prediction.

    Plain substring, as the paper states: gold "7" also matches "17". An empty gold never matches.

    >>> substring_match("It was the band Rush, from Canada", "Rush")
    1.0
    >>> substring_match("anything", ["", "the"])
    0.0
    """
    p = normalize_answer(pred)
    return float(any(normalize_answer(g) in p for g in _gold_list(golds)))


def f1_score(pred: str, golds: str | list[str]) -> float:
    """Official token F1 (HotPotQA rule: 0 when either side is yes/no/noanswer and they differ), max over golds.

    >>> round(f1_score("the Canadian band Rush", "Rush"), 3)
    0.5
    >>> f1_score("no", "no answer")
    0.0
    """
    p = normalize_answer(pred)
    best = 0.0
    for gold in _gold_list(golds):
        g = normalize_answer(gold)
        if (p in ("yes", "no", "noanswer") or g in ("yes", "no", "noanswer")) and p != g:
            continue
        common = Counter(p.split()) & Counter(g.split())
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(p.split()), same / len(g.split())
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def majority_vote(answers: list[str]) -> str:
    """The most frequent answer by normalized form; returns that class's first original string.

    Project choices: answers that normalize to "" (empty or punctuation only) do not vote, and
    "" comes back only if no answer votes. Ties go to the class whose first member appears earliest.

    >>> majority_vote(["Rush", "the rush", "Toto", "Toto.", "", ""])
    'Rush'
    >>> majority_vote(["", "  "])
    ''
    """
    counts, first = Counter(), {}
    for answer in answers:
        key = normalize_answer(answer)
        if key:  # Project choice: an empty answer is a failure to answer, not a vote for ""
            counts[key] += 1
            first.setdefault(key, answer)
    if not counts:
        return ""
    # first preserves insertion order, so max() over it breaks ties by earliest appearance.
    return first[max(first, key=lambda k: counts[k])]


_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")


def parse_number(s: str) -> tuple[float, bool, int] | None:
    """The first number in s as (value, is_percent, decimals shown); None if s holds no number.

    Handles $/€/£ and thousands commas, a leading minus or accounting parentheses for negatives,
    a trailing % or "percent", and trailing unit words (ignored, not scaled: "12.5 million" is 12.5).

    >>> parse_number("$ (1,234.50) million")
    (-1234.5, False, 2)
    >>> parse_number("-12.5 %")
    (-12.5, True, 1)
    >>> parse_number("no") is None
    True
    """
    s = s.replace("−", "-")  # unicode minus
    # Project choice: the FIRST number, since answers lead with their value ("12.5% in 2019").
    match = _NUMBER.search(s)
    if match is None:
        return None
    digits = match.group().replace(",", "")
    value = float(digits)
    before, after = s[:match.start()], s[match.end():]
    # Accounting negatives need both parentheses around the number: "(12.5%)" in prose is not negative.
    if re.search(r"-\s*[$€£]?\s*$", before) or (re.search(r"\(\s*[$€£]?\s*$", before)
                                                  and re.match(r"\s*\)", after)):
        value = -value
    is_percent = bool(re.match(r"\s*\)?\s*(?:%|percent\b|per\s+cent\b)", after, re.I))
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return value, is_percent, decimals


def numeric_match(pred: str, golds: str | list[str]) -> float:
    """FinQA numeric equivalence, reported beside the paper's metric (never instead of it).

    Tolerance (rounding-aware): FinQA display answers are rounded ("127.40" for 127.4037), so a
    prediction matches when it lies within half a unit of the gold's last shown decimal:
    |pred - gold| <= 0.5 * 10**-decimals(gold) (plus 1e-9 for float error). "127.403" matches
    "127.40"; "127.5" does not.
    Percent: when exactly one side carries a % sign, that side may be read either as the printed
    number or as its /100 fraction, so gold "12.5%" accepts "12.5%", "12.5" and "0.125", and gold
    "0.125" accepts "12.5%" but not "12.5" (without a % sign nothing says 12.5 is a percentage).
    Non-numeric golds ("yes"/"no") fall back to exact_match.

    >>> [numeric_match(p, "12.5%") for p in ("12.5%", "12.5", "0.125", "$12.5 %", "1.25")]
    [1.0, 1.0, 1.0, 1.0, 0.0]
    >>> numeric_match("12.5", "0.125"), numeric_match("12.5%", "0.125"), numeric_match("No", "no")
    (0.0, 1.0, 1.0)
    """
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = parse_number(pred)
    best = 0.0
    for gold in golds:
        g = parse_number(gold)
        if g is None:
            best = max(best, exact_match(pred, gold))
        elif p is not None and _numbers_agree(p, g):
            best = 1.0
    return best


def _numbers_agree(pred: tuple[float, bool, int], gold: tuple[float, bool, int]) -> bool:
    (p, p_pct, _), (g, g_pct, decimals) = pred, gold
    # Project choice: the gold stands for every value that rounds to it at its shown precision.
    tolerance = 0.5 * 10 ** -decimals + 1e-9 * max(1.0, abs(g))
    if p_pct == g_pct:
        readings = [p]
    elif g_pct:  # gold 12.5%: pred 12.5 or 0.125
        readings = [p, p * 100]
    else:  # gold 0.125, pred 12.5%: read as 12.5 or 0.125
        readings = [p, p / 100]
    return any(abs(r - g) <= tolerance for r in readings)
