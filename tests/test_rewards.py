"""Tests for rewards.py: extraction, the official-metric edge cases, majority vote and numeric match."""

import doctest

import pytest

import rewards
from rewards import (exact_match, extract_answer, f1_score, majority_vote, normalize_answer,
                     numeric_match, parse_number, substring_match)


def test_doctests_pass():
    result = doctest.testmod(rewards)
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


def test_substring_match_and_empty_gold():
    assert substring_match("I think it is The Rush, clearly", "rush") == 1.0
    assert substring_match("Toto", ["Rush", "Toto"]) == 1.0
    assert substring_match("Rush", "Rush band") == 0.0           # gold must be inside the prediction
    assert substring_match("1974 or 1975", "7") == 1.0           # plain substring, as the paper says
    assert substring_match("anything at all", "") == 0.0
    assert substring_match("anything at all", "The ...") == 0.0  # normalizes to empty
    assert substring_match("", "Rush") == 0.0


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
