"""Answer extraction, answer normalization and the verifiers used for rewards and evaluation.

Two normalizations:
    normalize_answer     official SQuAD/HotPotQA/MuSiQue: lower-case, drop punctuation and a/an/the.
                         It drops ".", "-" and "%" too, so it merges numbers: "2.5" and "25" are equal.
    number_safe_tokens   the same for words; numbers survive as tokens ("-3.2%", "1234.5").
Verifiers (golds: one string or a list of accepted strings; the max over them):
    exact_match, f1_score     official, only for em@1 / f1@1 (comparison with published numbers)
    number_safe_exact_match   GRPO's training reward
    substring_match           the relaxed match behind p@1, p@n and maj@n: the gold as a whole run of
                              tokens in the prediction, numbers compared as numbers
    substring_match_literal   the paper's stated rule (character substring after official
                              normalization), kept for comparison: gold "7" matches "2017"
    majority_vote             maj@n's vote, number-safe, numerically equal answers in one class
    numeric_match             FinQA's numeric@1, an extra metric beside the paper's
docs/answer_checking.md explains what the official metrics get wrong and why the tables use substring_match.
"""

import re
import string
from collections import Counter
from decimal import Decimal

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


# ------------------------------------------------------------------------------------------------
# The official metrics: em@1 and f1@1, comparable with published HotPotQA / MuSiQue numbers.
# normalize_answer drops every punctuation mark, so it merges different numbers ("2.5" and "25",
# "-3.2%" and "3.2"); nothing that decides training or the paper's metrics uses it (next section).

def normalize_answer(s: str) -> str:
    """SQuAD/HotPotQA normalization: lower-case, drop punctuation, drop a/an/the, squeeze spaces.

    Official, kept as is for em@1 / f1@1. It is wrong on numbers: the decimal point, the minus sign
    and the percent sign are punctuation, so they vanish.

    >>> normalize_answer("The  Rush!")
    'rush'
    >>> normalize_answer("St. Louis, Missouri")
    'st louis missouri'
    >>> normalize_answer("2.5"), normalize_answer("-3.2%")
    ('25', '32')
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
    """Official EM: 1.0 when the normalized prediction equals some normalized gold, else 0.0.

    Serves em@1 only. Wrong on numbers (see normalize_answer); GRPO's reward is number_safe_exact_match.

    >>> exact_match("the Rush.", ["Rush", "Rush (band)"])
    1.0
    >>> exact_match("Rush band", "Rush")
    0.0
    >>> exact_match("25", "2.5"), exact_match("-3.2%", "3.2")  # official, and wrong
    (1.0, 1.0)
    """
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _gold_list(golds)))


def substring_match_literal(pred: str, golds: str | list[str]) -> float:
    """The paper's relaxed match as stated: some normalized gold is a character substring of the prediction.

    Kept for comparison only; the tables use substring_match. After official normalization a
    character substring crosses word and number boundaries: gold "no" is inside "know", gold "7"
    inside "2017", gold "94%" (normalized "94") inside "1945". An empty gold never matches.

    >>> substring_match_literal("It was the band Rush, from Canada", "Rush")
    1.0
    >>> substring_match_literal("I don't know", "no"), substring_match_literal("1945", "94%")
    (1.0, 1.0)
    >>> substring_match_literal("anything", ["", "the"])
    0.0
    """
    p = normalize_answer(pred)
    return float(any(normalize_answer(g) in p for g in _gold_list(golds)))


def f1_score(pred: str, golds: str | list[str]) -> float:
    """Official token F1 (HotPotQA rule: 0 when either side is yes/no/noanswer and they differ), max over golds.

    Serves f1@1 only; like exact_match it compares "2.5" and "25" as the same token.

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


# ------------------------------------------------------------------------------------------------
# Number-safe answer checking: GRPO's reward, the relaxed match behind p@1 / p@n / maj@n, the vote.
# Words are normalized exactly as normalize_answer does; numbers become tokens that keep their
# sign, decimals and percent sign, and numeric tokens are compared as numbers.

# A number inside text. Both ends must sit on a token boundary, so "2017" holds no "7", "1990s",
# "12th" and "5km" stay words, and the "-" of "1990-2000" is a hyphen, not a minus sign.
_NUMBER_IN_TEXT = re.compile(r"""
    (?<![\w.])                          # not glued to a preceding letter, digit or decimal point
    (?P<sign>[-+])?
    (?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?   # 1,234 and 1,234.5: commas between groups of three
              |\d+(?:\.\d+)?                  # 1234, 12.5
              |\.\d+)                         # .5
    (?!\w|\.\d)                         # not glued to a following letter, digit or decimal part
    (?P<percent>\s*(?:%|percent\b|per\s*cent\b))?
""", re.X | re.I)
_NUMBER_TOKEN = re.compile(r"-?\d+(?:\.\d+)?%?")  # what _number_token writes
# A whole answer that is one parenthesized number: the accounting notation for a negative.
_ACCOUNTING_NEGATIVE = re.compile(
    r"\s*\$?\s*\(\s*\$?\s*(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)\s*(%?)\s*\)\s*(%?)\s*\.?\s*")


def number_safe_tokens(s: str) -> list[str]:
    """Normalize like normalize_answer, except that numbers survive as tokens with sign, decimals and %.

    Number rules:
      - a number is a run of digits with an optional decimal part, standing on token boundaries;
        a leading "-" or "+" is its sign unless glued to a preceding word ("1990-2000" is a range);
        "." directly after a number ends a sentence ("It is 12." gives "12");
      - "1,234,567" is 1234567: a comma between groups of exactly three digits is a thousands
        separator; other commas separate numbers ("1,5" gives "1" and "5");
      - a "%" or the word "percent" / "per cent" after a number joins it: "12.5 %" gives "12.5%";
      - the unicode minus U+2212 is a minus sign;
      - Project choice: currency symbols ($ € £ ¥) are dropped ("$1,234" is "1234"), like the
        official normalization drops "$"; unit and scale words ("million", "days") stay words and
        are never used to rescale a number ("12 million" is ["12", "million"], not 12000000);
      - Project choice: accounting negatives only when the whole answer is one parenthesized number
        ("(3.2)", "$(1,234)", "(3.2%)"): inside prose, "(1974)" is a year in parentheses;
      - digits glued to letters ("1990s", "12th", "133d", "5km") form a word, never a number; two
        digits never merge across punctuation ("1.2.3" gives "1", "2" and "3", not 123 or 1.23).
    Number tokens are written as shown, less commas and "+" (".5" becomes "0.5"): "12.50" stays
    "12.50", since its shown decimals set the rounding tolerance (see numeric_match).

    >>> number_safe_tokens("The growth was -3.2% (down from $1,234.50 million).")
    ['growth', 'was', '-3.2%', 'down', 'from', '1234.50', 'million']
    >>> number_safe_tokens("(3.2)"), number_safe_tokens("St. Louis"), number_safe_tokens("1990-2000")
    (['-3.2'], ['st', 'louis'], ['1990', '2000'])
    """
    s = s.lower().replace("\u2212", "-")  # U+2212 MINUS SIGN
    s = re.sub("[€£¥]", "$", s)  # one currency symbol to handle below
    accounting = _ACCOUNTING_NEGATIVE.fullmatch(s)
    if accounting:
        s = f"-{accounting.group(1)}{accounting.group(2) or accounting.group(3)}"
    # Drop a currency symbol in front of a number, keeping a sign before it: "-$5" and "$-5" are -5.
    # It becomes a space, so that "US$5" does not glue into the word "us5".
    s = re.sub(r"([-+])\$\s*(?=\.?\d)", r"\1", s)
    s = re.sub(r"\$\s*(?=[-+]?\.?\d)", " ", s)
    tokens, end = [], 0
    for match in _NUMBER_IN_TEXT.finditer(s):
        tokens += _word_tokens(s[end:match.start()])
        tokens.append(_number_token(match))
        end = match.end()
    return tokens + _word_tokens(s[end:])


def _word_tokens(text: str) -> list[str]:
    """normalize_answer's rules for the text between numbers, as a list of tokens."""
    # Punctuation between two digits becomes a space, so that leftover digits ("1.2.3") never merge.
    text = re.sub(r"(?<=\d)[^\w\s](?=\d)", " ", text)
    return normalize_answer(text).split()


def _number_token(match: re.Match) -> str:
    digits = match.group("digits").replace(",", "")
    if digits.startswith("."):
        digits = "0" + digits
    sign = "-" if match.group("sign") == "-" else ""
    return sign + digits + ("%" if match.group("percent") else "")


def normalize_number_safe(s: str) -> str:
    """The number-safe normalization as one string (number_safe_tokens joined by spaces).

    >>> normalize_number_safe("\u221212.5 percent"), normalize_number_safe("2.5"), normalize_number_safe("The $1,234")
    ('-12.5%', '2.5', '1234')
    """
    return " ".join(number_safe_tokens(s))


def _as_number(token: str) -> tuple[float, bool, int] | None:
    """A number token as (value, is_percent, decimals shown), the form _numbers_agree takes; else None."""
    if not _NUMBER_TOKEN.fullmatch(token):
        return None
    digits = token.rstrip("%")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits), token.endswith("%"), decimals


def _same_token(pred: str, gold: str) -> bool:
    """Words must be equal; numbers must agree within the gold's rounding (numeric_match's rule)."""
    if pred == gold:
        return True
    p, g = _as_number(pred), _as_number(gold)
    return p is not None and g is not None and _numbers_agree(p, g)


def _gold_tokens(golds: str | list[str]) -> list[list[str]]:
    """Each gold's number-safe tokens; golds with none never match (as in _gold_list)."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    return [tokens for tokens in map(number_safe_tokens, golds) if tokens]


def number_safe_exact_match(pred: str, golds: str | list[str]) -> float:
    """GRPO's training reward: exact match under the number-safe normalization, numbers compared as numbers.

    1.0 when, for some gold, the prediction has the same tokens (number_safe_tokens), words equal
    and each number agreeing with the gold's within half a unit of its last shown decimal, a % sign
    on one side only meaning a fraction (numeric_match's rule): for gold "127.40", "127.4" and
    "127.4037" are right, "127.5" is not; for gold "56%", "0.56197" is right.
    Like the paper's exact match (and the FinQA prompt's "no words, no units"), extra words fail:
    "$1,320.8" matches gold "1320.8" ("$" is dropped, as the official normalization drops it),
    "1320.8 million" does not; nor does a hedge with two numbers ("127.4 or 130").

    >>> number_safe_exact_match("25", "2.5"), number_safe_exact_match("-3.2%", "3.2")
    (0.0, 0.0)
    >>> [number_safe_exact_match(p, "127.40") for p in ("127.4", "$127.40", "127.5", "127.4 million", "127.4 or 130")]
    [1.0, 1.0, 0.0, 0.0, 0.0]
    >>> number_safe_exact_match("the Rush.", ["Rush", "Rush (band)"]), number_safe_exact_match("5 weeks", "5 days")
    (1.0, 0.0)
    """
    p = number_safe_tokens(pred)
    return float(any(len(p) == len(g) and all(map(_same_token, p, g)) for g in _gold_tokens(golds)))


def substring_match(pred: str, golds: str | list[str]) -> float:
    """The relaxed match behind p@1, p@n and maj@n: some gold appears as a whole run of tokens in the prediction.

    Both sides are normalized with number_safe_tokens; the gold's tokens must appear consecutively
    in the prediction's, number tokens agreeing as numbers (as in number_safe_exact_match). The paper
    states a plain substring (substring_match_literal); this keeps its intent (the gold anywhere in
    the answer) without accepting gold "no" inside "know", "7" inside "2017" or "94%" inside "1945".
    An empty gold never matches.

    >>> substring_match("It was the band Rush, from Canada", "Rush")
    1.0
    >>> substring_match("I don't know", "no"), substring_match("in 2017", "7"), substring_match("1945", "94%")
    (0.0, 0.0, 0.0)
    >>> substring_match("revenue grew 12.50% in 2019", "12.5%"), substring_match("anything", ["", "the"])
    (1.0, 0.0)
    """
    p = number_safe_tokens(pred)
    for g in _gold_tokens(golds):
        for start in range(len(p) - len(g) + 1):
            if all(map(_same_token, p[start:start + len(g)], g)):
                return 1.0
    return 0.0


def _vote_key(answer: str) -> str:
    """The answer's class in the vote: number-safe tokens, each number written by its value.

    "12.5%", "12.50 %" and "12.5 percent" share the class "12.5%"; "0.125" is another class (the
    percent reading that numeric_match allows is not transitive: 12.5 ~ 12.5% ~ 0.125, 12.5 !~ 0.125).
    """
    key = []
    for token in number_safe_tokens(answer):
        if _as_number(token) is not None:
            value = Decimal(token.rstrip("%")).normalize()
            # format "f" writes 1.2E+3 as 1200; -0.0 and 0.00 are both "0"
            token = ("0" if value == 0 else f"{value:f}") + ("%" if token.endswith("%") else "")
        key.append(token)
    return " ".join(key)


def majority_vote(answers: list[str]) -> str:
    """The most frequent answer class (number-safe, numbers by value); returns that class's first original string.

    Project choices: answers that normalize to "" (empty or punctuation only) do not vote, and
    "" comes back only if no answer votes. Ties go to the class whose first member appears earliest.
    Numbers keep their sign, decimals and % (see _vote_key), so "25" and "2.5" never share a class.

    >>> majority_vote(["Rush", "the rush", "Toto", "Toto.", "", ""])
    'Rush'
    >>> majority_vote(["2.5", "12.5%", "25", "12.50 %", "12.5 percent"])
    '12.5%'
    >>> majority_vote(["", "  "])
    ''
    """
    counts, first = Counter(), {}
    for answer in answers:
        key = _vote_key(answer)
        if key:  # Project choice: an empty answer is a failure to answer, not a vote for ""
            counts[key] += 1
            first.setdefault(key, answer)
    if not counts:
        return ""
    # first preserves insertion order, so max() over it breaks ties by earliest appearance.
    return first[max(first, key=lambda k: counts[k])]


# ------------------------------------------------------------------------------------------------
# FinQA's numeric@1: an extra metric reported beside the paper's, never instead of it.

_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")


def parse_number(s: str) -> tuple[float, bool, int] | None:
    """The first number in s as (value, is_percent, decimals shown); None if s holds no number.

    Handles $/€/£ and thousands commas, a leading minus or accounting parentheses for negatives
    ("(3.2)%", or "(3.2%)" as a whole answer), a trailing % or "percent", and trailing unit words
    (ignored, not scaled: "12.5 million" is 12.5).

    >>> parse_number("$ (1,234.50) million")
    (-1234.5, False, 2)
    >>> parse_number("-12.5 %"), parse_number("(12.5%)")
    ((-12.5, True, 1), (-12.5, True, 1))
    >>> parse_number("no") is None
    True
    """
    s = s.replace("−", "-")  # unicode minus
    accounting = _ACCOUNTING_NEGATIVE.fullmatch(re.sub("[€£¥]", "$", s))
    if accounting:  # a whole answer in parentheses, "(3.2%)": negative, as in number_safe_tokens
        s = f"-{accounting.group(1)}{accounting.group(2) or accounting.group(3)}"
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
