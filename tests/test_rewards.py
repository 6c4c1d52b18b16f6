"""Tests for rewards.py: extraction, the official metrics and what they get wrong, the number-safe
verifiers (GRPO's reward, the relaxed match, the vote), numeric match, and eval.py's scoring."""

import doctest
import random
from pathlib import Path

import pytest

import data
import eval as evaluator
import rewards
from rewards import (exact_match, extract_answer, f1_score, majority_vote, normalize_answer,
                     normalize_number_safe, number_safe_exact_match, number_safe_tokens, numeric_match,
                     parse_number, substring_match, substring_match_literal)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE_FILES = {"finqa": SAMPLES / "finqa_dev_sample.json",
                "hotpotqa": SAMPLES / "hotpotqa_dev_distractor_sample.json",
                "musique": SAMPLES / "musique_ans_dev_sample.jsonl"}


def test_doctests_pass():
    result = doctest.testmod(rewards)
    assert result.attempted > 0 and result.failed == 0
    result = doctest.testmod(evaluator)  # score_question's worked example
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("text, expected", [
    ("<think>maybe 3</think>\n\nRush", "Rush"),
    ("<think>a</think> b </think>  c  ", "c"),                      # the LAST </think>
    ("no think block at all", "no think block at all"),
    ("<think>cut off by the budget", "<think>cut off by the budget"),  # no </think>: whole text
    ("</think>Answer: Rush<|im_end|>", "Rush"),
    ("</think>Final answer: 12.5%<|endoftext|>", "12.5%"),
    ("</think>The answer is 1974.", "1974."),
    ("</think>**Answer:** \"Spurs\"", "Spurs"),
    ("</think>**Cymbeline**", "Cymbeline"),
    ("</think>**Answer: Rush**", "Rush"),
    ("</think>**Rush** is the band", "Rush** is the band"),  # only outer asterisks go; normalize drops the rest
    ("</think>The answer isn't clear", "The answer isn't clear"),
    ("</think>“Summer Wars”", "Summer Wars"),
    ("</think>So \\boxed{\\frac{a}{b+\\sqrt{c}}} is it.", "\\frac{a}{b+\\sqrt{c}}"),
    ("</think>\\boxed{1} then \\boxed{{2}}", "{2}"),                 # the last box, nested braces
    ("</think>\\boxed{\\text{Rush}}", "Rush"),
    ("</think>The answer is $\\boxed{12.5\\%}$", "12.5%"),
    ("</think>\\boxed{unclosed", "unclosed"),
    ("</think>Answer (band)", "Answer (band)"),                       # no colon: not a prefix
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# ---------------------------------------------------------------- normalization and official metrics

@pytest.mark.parametrize("raw, expected", [
    ("The  Rush!", "rush"),
    ("An Apple a day", "apple day"),
    ("Theatre", "theatre"),            # articles only as whole words
    ("U.S.A.", "usa"),
    ("  Hewlett-Packard  ", "hewlettpackard"),
    ("", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_ignores_case_articles_punctuation_and_takes_alias_max():
    assert exact_match("the Pittsburgh Pirates.", "Pittsburgh Pirates") == 1.0
    assert exact_match("Mets", ["Pittsburgh Pirates", "Mets"]) == 1.0
    assert exact_match("Pirates of Pittsburgh", ["Pittsburgh Pirates", "Mets"]) == 0.0
    assert exact_match("", "") == 0.0  # an empty gold never matches


@pytest.mark.parametrize("match", [substring_match, substring_match_literal])
def test_substring_match_and_empty_gold(match):
    assert match("I think it is The Rush, clearly", "rush") == 1.0
    assert match("Toto", ["Rush", "Toto"]) == 1.0
    assert match("Rush", "Rush band") == 0.0           # gold must be inside the prediction
    assert match("anything at all", "") == 0.0
    assert match("anything at all", "The ...") == 0.0  # normalizes to empty
    assert match("", "Rush") == 0.0


def test_literal_substring_is_the_plain_character_rule():
    assert substring_match_literal("1974 or 1975", "7") == 1.0  # plain substring, as the paper states
    assert substring_match_literal("Rushmore", "Rush") == 1.0
    assert substring_match("1974 or 1975", "7") == substring_match("Rushmore", "Rush") == 0.0


# What the official normalization gets wrong (documented in docs/answer_checking.md): the official
# metrics keep these values, the number-safe verifiers do not.
OFFICIAL_WRONG = [("25", "2.5"), ("-3.2%", "3.2"), ("3.2", "-3.2%"), ("12.5%", "-12.5%"), ("5.6", "56%"),
                  ("12.16", "1216"), ("1.25", "125")]


@pytest.mark.parametrize("pred, gold", OFFICIAL_WRONG)
def test_official_exact_match_merges_different_numbers_and_number_safe_does_not(pred, gold):
    assert exact_match(pred, gold) == 1.0 and f1_score(pred, gold) == 1.0  # official, kept as is
    assert substring_match_literal(pred, gold) == 1.0
    assert number_safe_exact_match(pred, gold) == 0.0
    assert substring_match(pred, gold) == 0.0
    assert majority_vote([gold, pred, pred]) == pred  # merged classes would return their first member, gold


def test_f1_official_values():
    assert f1_score("Rush", "Rush") == 1.0
    assert f1_score("the band Rush", "Rush") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("Neil Peart drummer", "drummer Neil Ellwood Peart") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert f1_score("Toto", "Rush") == 0.0
    assert f1_score("rush rush", "rush") == pytest.approx(2 * 0.5 * 1 / 1.5)  # token counts, not sets


def test_f1_yes_no_rule():
    assert f1_score("yes", "yes") == 1.0
    assert f1_score("no", "no way") == 0.0       # pred is yes/no and differs: 0 despite the shared token
    assert f1_score("yes it is", "yes") == 0.0   # gold is yes/no and differs
    assert f1_score("No.", "no") == 1.0


def test_f1_alias_max_and_empty_gold():
    assert f1_score("Baltimore Orioles", ["Pittsburgh Pirates", "Orioles"]) == pytest.approx(2 * 0.5 / 1.5)
    assert f1_score("Baltimore Orioles", ["Pittsburgh Pirates", "Baltimore Orioles"]) == 1.0
    assert f1_score("anything", ["", "a"]) == 0.0


# ---------------------------------------------------------------- majority vote

def test_majority_vote_counts_normalized_forms():
    assert majority_vote(["Toto", "Rush", "the Rush", "rush!", "Toto"]) == "Rush"


def test_majority_vote_tie_goes_to_earliest_class():
    assert majority_vote(["y", "x", "x", "y"]) == "y"
    assert majority_vote(["x", "y", "y", "x"]) == "x"
    assert majority_vote(["Toto", "Rush", "rush", "toto."]) == "Toto"  # first original of the class


def test_majority_vote_empty_answers_do_not_vote():
    assert majority_vote(["", "", "", "Rush"]) == "Rush"
    assert majority_vote(["", "!", " "]) == ""
    assert majority_vote([]) == ""


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("text, parsed", [
    ("127.40", (127.4, False, 2)),
    ("$ 1,234", (1234.0, False, 0)),
    ("( 5.2 )", (-5.2, False, 1)),
    ("-3.2%", (-3.2, True, 1)),
    ("12.5 percent", (12.5, True, 1)),
    ("( 3.2 ) %", (-3.2, True, 1)),
    ("grew (12.5%) in 2019", (12.5, True, 1)),   # prose parentheses are not a negative
    ("(12.5%)", (-12.5, True, 1)),               # a whole answer in parentheses is
    ("44.8 million", (44.8, False, 1)),
    (".5", (0.5, False, 1)),
    ("yes", None),
])
def test_parse_number(text, parsed):
    assert parse_number(text) == parsed


@pytest.mark.parametrize("pred", ["12.5%", "12.5", "0.125", "12.5 %", "12.50%", "0.1251", "about 12.5%"])
def test_numeric_match_accepts_percent_forms(pred):
    assert numeric_match(pred, "12.5%") == 1.0


@pytest.mark.parametrize("pred", ["12.6%", "1.25", "125", "0.13", "-12.5%", "no"])
def test_numeric_match_rejects_other_numbers(pred):
    assert numeric_match(pred, "12.5%") == 0.0


def test_numeric_match_rounding_window_follows_gold_decimals():
    assert numeric_match("127.4037", "127.40") == 1.0
    assert numeric_match("127.4", "127.40") == 1.0
    assert numeric_match("127.41", "127.40") == 0.0
    assert numeric_match("114.4", "114") == 1.0
    assert numeric_match("114.6", "114") == 0.0
    assert numeric_match("$ 1,320.8 million", "1320.8") == 1.0
    assert numeric_match("0.56197", "56%") == 1.0       # exe_ans form of a display percent


def test_numeric_match_plain_gold_needs_a_percent_sign_to_rescale():
    assert numeric_match("0.125", "0.125") == 1.0
    assert numeric_match("12.5%", "0.125") == 1.0
    assert numeric_match("12.5", "0.125") == 0.0


def test_numeric_match_negatives_and_non_numeric_golds():
    assert numeric_match("(12.4)%", "-12.4%") == 1.0
    assert numeric_match("12.4%", "-12.4%") == 0.0
    assert numeric_match("No.", "no") == 1.0
    assert numeric_match("yes", "no") == 0.0
    assert numeric_match("no number here", "7") == 0.0
    assert numeric_match("7", ["no", "7.0"]) == 1.0


# ---------------------------------------------------------------- number-safe normalization

@pytest.mark.parametrize("text, tokens", [
    ("The Rush!", ["rush"]),                                   # words: as normalize_answer
    ("St. Louis, Missouri", ["st", "louis", "missouri"]),      # non-numeric punctuation still goes
    ("Craig v. Boren", ["craig", "v", "boren"]),
    ("A.P.J. Abdul Kalam", ["apj", "abdul", "kalam"]),
    ("2.5", ["2.5"]),
    ("-3.2%", ["-3.2%"]),
    ("\u22123.2%", ["-3.2%"]),                                 # unicode minus
    ("+5%", ["5%"]),
    ("12.5 %", ["12.5%"]),
    ("12.5 percent", ["12.5%"]),
    ("12.5 per cent", ["12.5%"]),
    ("5 percentage points", ["5", "percentage", "points"]),    # "percentage" is a word
    ("1,234", ["1234"]),                                       # thousands separators
    ("1,234,567.89", ["1234567.89"]),
    ("1,5", ["1", "5"]),                                       # not groups of three: two numbers
    ("1,2345", ["1", "2345"]),
    ("$1,234.50", ["1234.50"]),                                # currency dropped, decimals as shown
    ("-$5", ["-5"]),
    ("$-5", ["-5"]),
    ("US$5", ["us", "5"]),
    ("\u20ac5 and \u00a35", ["5", "and", "5"]),
    ("12 million", ["12", "million"]),                         # units stay words, no rescaling
    ("5 days", ["5", "days"]),
    (".5", ["0.5"]),
    ("It is 12.", ["it", "is", "12"]),                         # sentence-final period
    ("(3.2)", ["-3.2"]),                                       # accounting negative: the whole answer
    ("$(1,234)", ["-1234"]),
    ("(3.2%)", ["-3.2%"]),
    ("( 3.2 ) %", ["-3.2%"]),
    ("born (1974) in Ohio", ["born", "1974", "in", "ohio"]),   # in prose, parentheses are not a sign
    ("1990-2000", ["1990", "2000"]),                           # a hyphen between numbers is a range
    ("covid-19", ["covid", "19"]),
    ("1990s", ["1990s"]),                                      # digits glued to letters: a word
    ("12th", ["12th"]),
    ("133d Air Refueling Squadron", ["133d", "air", "refueling", "squadron"]),
    ("5km", ["5km"]),
    ("3.2.1", ["3", "2", "1"]),                                # never merged into 321 or 3.21
    ("007", ["007"]),
    ("the", []),
    ("", []),
])
def test_number_safe_tokens(text, tokens):
    assert number_safe_tokens(text) == tokens
    assert normalize_number_safe(text) == " ".join(tokens)


def test_number_safe_words_agree_with_the_official_normalization():
    texts = ["The Rush!", "Martin O'Neill", "Hewlett-Packard", "Louis-Hector Berlioz", "Sir Francis Baring",
             "third-largest", "Hudson's Bay", "nominated for an Academy Award"]
    for text in texts:
        assert normalize_number_safe(text) == normalize_answer(text)


# ---------------------------------------------------------------- GRPO's reward: number_safe_exact_match

@pytest.mark.parametrize("pred, gold", [
    ("Rush", "rush"), ("the Rush.", ["Toto", "Rush"]), ("No.", "no"), ("yes", "Yes"),
    ("St Louis, Missouri", "St. Louis, Missouri"),
    ("127.4", "127.40"), ("127.4037", "127.40"), ("127.40", "127.40"),   # rounding-aware
    ("1,234", "1234"), ("1234", "$1,234"), ("$72,641", "72641"), ("$1,320.80", "1320.8"),
    ("12.5%", "12.5%"), ("12.50 %", "12.5%"), ("0.125", "12.5%"), ("12.5", "12.5%"), ("12.5%", "0.125"),
    ("-3.2%", "-3.2%"), ("\u22123.2%", "-3.2%"), ("(3.2)%", "-3.2%"), ("(3.2%)", "-3.2%"), ("-0.032", "-3.2%"),
    ("5.0 days", "5 days"), ("2010 NCAA Division", "2010 NCAA Division"),
])
def test_number_safe_exact_match_accepts(pred, gold):
    assert number_safe_exact_match(pred, gold) == 1.0


@pytest.mark.parametrize("pred, gold", [
    ("25", "2.5"), ("2.5", "25"), ("-3.2%", "3.2"), ("3.2%", "-3.2%"), ("3.2", "-3.2%"),
    ("1945", "94%"), ("2017", "7"), ("127.41", "127.40"), ("127", "127.40"), ("12.6%", "12.5%"),
    ("1.25", "12.5%"), ("12.5", "0.125"),          # a plain number is rescaled only with a % sign
    ("1,234", "1.234"), ("1234", "123.4"),
    ("127.4 or 130", "127.40"), ("12.5% in 2019", "12.5%"),   # extra words or numbers: not exact
    ("$1,320.8 million", "1320.8"), ("about 1320.8", "1320.8"), ("72,641 dollars", "$72,641"),
    ("5 weeks", "5 days"), ("12,000,000", "12 million"),      # units are words, never rescaled
    ("known", "no"), ("nobody", "no"), ("eyes", "yes"), ("no, it is not", "no"),
    ("St. Louis", "St. Louis, Missouri"), ("Rush band", "Rush"), ("anything", ["", "the"]),
])
def test_number_safe_exact_match_rejects(pred, gold):
    assert number_safe_exact_match(pred, gold) == 0.0


# ---------------------------------------------------------------- the relaxed match: substring_match

@pytest.mark.parametrize("pred, gold", [
    ("I don't know", "no"), ("nobody came", "no"), ("the eyes have it", "yes"), ("not", "no"),
    ("in 2017", "7"), ("17 people", "7"), ("1945", "94%"), ("the year 1945", "94"),
    ("25", "2.5"), ("-3.2%", "3.2"), ("growth of 3.2%", "-3.2%"), ("1,234", "234"), ("$1,234", "1,23"),
    ("12.16", "1216"), ("Rushmore", "Rush"), ("2010 men's NCAA Division", "2010 NCAA Division"),
    ("2011 NCAA Division I", "2010 NCAA Division"), ("5 weeks", "5 days"),
])
def test_substring_match_respects_tokens_and_numbers(pred, gold):
    assert substring_match(pred, gold) == 0.0


@pytest.mark.parametrize("pred, gold", [
    ("No, it was released later.", "no"), ("Yes.", "yes"), ("in 1974, when", "1974"),
    ("The 2010 NCAA Division I tournament", "2010 NCAA Division"), ("St. Louis, Missouri, USA", "St. Louis"),
    ("revenue grew 12.50% in 2019", "12.5%"), ("a decline of \u22123.2 percent", "-3.2%"),
    ("a loss of $(1,234)", "1234"),            # accounting parentheses only for a whole answer: here 1234
    ("$1,320.8 million", "1320.8"), ("about 0.562 of the total", "56%"), ("it took 5 days", "5 days"),
])
def test_substring_match_accepts_the_gold_inside_the_answer(pred, gold):
    assert substring_match(pred, gold) == 1.0


def test_relaxed_match_never_equates_two_different_numbers():
    """Random numbers against near misses: a digit dropped or added, the decimal point moved or dropped,
    the sign flipped, a thousands group changed. No verifier that decides training or the tables
    accepts any of them; the official exact match accepts the ones that differ only in punctuation."""
    rng = random.Random(0)
    official_merges = 0
    for _ in range(400):
        whole, frac = str(rng.randint(1, 99999)), str(rng.randint(0, 99)).zfill(2)
        gold = f"{whole}.{frac}" + rng.choice(["", "%"])
        value = gold.rstrip("%")
        percent = "%" if gold.endswith("%") else ""
        near = [f"{whole}{frac}{percent}",                          # decimal point dropped
                f"{whole[:-1]}.{whole[-1]}{frac}{percent}",          # decimal point moved
                f"-{value}{percent}",                                # sign flipped
                f"{whole}1.{frac}{percent}",                         # a digit added
                f"{whole}.{int(frac[0]) + 1 if frac[0] != '9' else 0}{frac[1]}{percent}",  # a decimal changed
                f"1{value}{percent}", f"{value}7{percent}"]
        for pred in near:
            assert number_safe_exact_match(pred, gold) == 0.0, (pred, gold)
            assert substring_match(pred, gold) == 0.0, (pred, gold)
            assert substring_match(f"so it is {pred} in 2019", gold) == 0.0, (pred, gold)
            assert rewards._vote_key(pred) != rewards._vote_key(gold), (pred, gold)
            official_merges += exact_match(pred, gold) == 1.0
        assert number_safe_exact_match(gold, gold) == substring_match(f"so it is {gold}.", gold) == 1.0
    assert official_merges >= 400 * 3  # dropped/moved point and flipped sign: merged by the official metric


# ---------------------------------------------------------------- the vote

def test_majority_vote_groups_numerically_equal_answers():
    assert majority_vote(["13%", "12.5%", "13%", "12.50%", "12.5 %", "12.5 percent"]) == "12.5%"
    assert majority_vote(["1234", "$1,234", "1,234.0", "1235", "1235"]) == "1234"
    assert majority_vote(["-3.2%", "3.2%", "3.2 %", "\u22123.2%", "(3.2%)"]) == "-3.2%"  # signs kept apart
    assert majority_vote(["25", "2.5", "2.50", "25"]) == "25"  # tie: the earlier class, never merged
    assert majority_vote(["0.125", "12.5%", "12.5%"]) == "12.5%"  # the percent reading is not a class


def test_majority_vote_words_as_before():
    assert majority_vote(["no", "known", "No.", "yes"]) == "no"
    assert majority_vote(["St. Louis", "st louis", "St. Louis, Missouri"]) == "St. Louis"


# ---------------------------------------------------------------- the shipped golds

def sample_golds(task):
    return [[ex["answer"]] + ex["aliases"] for ex in data.load_examples(task, path=SAMPLE_FILES[task])]


@pytest.mark.parametrize("task", data.TASKS)
def test_every_sample_gold_matches_itself(task):
    for golds in sample_golds(task):
        for gold in golds:
            wrapped = f"<think>...</think>\n\nThe answer is **\\boxed{{{gold}}}**.<|im_end|>"
            for verifier in (number_safe_exact_match, substring_match, exact_match):
                assert verifier(gold, golds) == 1.0, (verifier.__name__, gold)
                assert verifier(extract_answer(wrapped), golds) == 1.0, (verifier.__name__, gold)
            assert substring_match(f"After checking the passages, {gold}, I think.", golds) == 1.0, gold
            assert majority_vote(["", gold, "something else"]) == gold


def model_spellings(gold: str) -> tuple[list[str], list[str]]:
    """How a model writes a FinQA number gold: (the bare number with $, commas, an extra zero, %/fraction
    forms; the same inside a few words: units, "about")."""
    value, is_percent, decimals = parse_number(gold)
    shown = f"{abs(value):,.{decimals}f}"                      # thousands commas
    sign, pct = ("-" if value < 0 else ""), ("%" if is_percent else "")
    bare = [f"{sign}{shown}{pct}", f"{sign}{abs(value):.{decimals + 1}f}{pct}",  # an extra trailing zero
            f"\u2212{shown}{pct}" if sign else f"+{shown}{pct}"]                 # unicode minus, plus sign
    if is_percent:
        bare += [f"{sign}{shown} %", f"{sign}{shown} percent",
                 f"{sign}{shown}",                             # the % sign left out
                 f"{value / 100:.{decimals + 2}f}"]            # the fraction form
        if value < 0:
            bare.append(f"({shown}%)")                         # accounting negative
    else:
        bare += [f"${sign}{shown}", f"{sign}${shown}"]
    return bare, [f"{sign}${shown} million", f"about {sign}{shown}{pct}"]


def finqa_number_golds():
    return [golds[0] for golds in sample_golds("finqa") if parse_number(golds[0]) is not None]


def test_finqa_sample_golds_accept_typical_model_spellings():
    golds = finqa_number_golds()
    assert len(golds) == 39  # all but the one "no"
    for gold in golds:
        bare, wordy = model_spellings(gold)
        for pred in wordy:  # the relaxed match and numeric@1 accept them, GRPO's exact reward does not
            assert substring_match(pred, gold) == numeric_match(pred, gold) == 1.0, (pred, gold)
            assert number_safe_exact_match(pred, gold) == 0.0, (pred, gold)
        for pred in bare:
            assert number_safe_exact_match(pred, gold) == 1.0, (pred, gold)
            extracted = extract_answer(f"<think>...</think>The answer is {pred}.")  # the eval's path
            assert substring_match(extracted, gold) == numeric_match(extracted, gold) == 1.0, (pred, gold)
            if not pred.startswith("("):  # accounting parentheses are a sign only around a whole answer
                assert substring_match(f"So the change is {pred} overall.", gold) == 1.0, (pred, gold)


def test_finqa_sample_golds_reject_near_misses():
    for gold in finqa_number_golds():
        value, is_percent, decimals = parse_number(gold)
        step = 10 ** -decimals
        percent = "%" if is_percent else ""
        for wrong in (value + step, value - step, -value, value * 10, value / 10, 1.0):
            if abs(wrong - value) <= step / 2:  # e.g. -0 for a gold of 0%
                continue
            pred = f"{wrong:.{decimals + 1}f}{percent}"
            assert number_safe_exact_match(pred, gold) == 0.0, (pred, gold)
            assert substring_match(pred, gold) == 0.0, (pred, gold)


# ---------------------------------------------------------------- eval.py's scoring

def test_score_question_uses_the_number_safe_relaxed_match():
    ex = {"answer": "7", "aliases": []}
    scores, majority = evaluator.score_question(["2017", "2017", "7 members"], ex, "hotpotqa")
    assert majority == "2017"
    assert scores["p@1"] == pytest.approx(1 / 3) and scores["p@n"] == 1.0 and scores["maj@n"] == 0.0
    assert scores["em@1"] == 0.0 and scores["f1@1"] == pytest.approx(2 * 0.5 / 1.5 / 3)  # official
    assert "numeric@1" not in scores
    # The literal rule would have scored every sample and the majority correct.
    assert all(substring_match_literal(a, "7") for a in ["2017", "7 members"])


def test_score_question_on_finqa_keeps_official_em_and_numeric():
    ex = {"answer": "-3.2%", "aliases": []}
    answers = ["3.2%", "3.2%", "-3.2%", "\u22123.20 %", "(3.2%)"]
    scores, majority = evaluator.score_question(answers, ex, "finqa")
    assert majority == "-3.2%"  # three answers mean -3.2%, two mean +3.2%
    assert scores["p@1"] == pytest.approx(3 / 5) and scores["maj@n"] == 1.0
    assert scores["em@1"] == pytest.approx(4 / 5)  # official: "3.2%" == "-3.2%"; the unicode minus is kept
    assert scores["numeric@1"] == pytest.approx(3 / 5)


def test_what_docs_answer_checking_says_is_not_handled():
    assert substring_match_literal("the eyes have it", "yes") == substring_match_literal("known", "no") == 1.0
    assert substring_match("yes or no", "no") == substring_match("12 or 13", "12") == 1.0  # hedges pass
    assert number_safe_exact_match("yes or no", "no") == number_safe_exact_match("12 or 13", "12") == 0.0
    for pred, gold in [("seven", "7"), ("1/2", "0.5"), ("12,000,000", "12 million"), ("1,5", "1.5"), ("1.2e3", "1200")]:
        assert substring_match(pred, gold) == number_safe_exact_match(pred, gold) == 0.0, (pred, gold)
    assert number_safe_exact_match("2.5", "2") == number_safe_exact_match("2.5", "3") == 1.0  # the half-unit edge
