"""twofiles.answers: final numbers out of reasoning text, GSM8K references, majority votes."""

from __future__ import annotations

import pytest

from twofiles.answers import extract_number, gsm8k_reference, majority_vote, normalize_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 apples and buys 4 more, so 7 in total.", "7"),
        ("Step 1: 5 * 6 = 30.\n#### 30", "30"),
        ("48/2 = 24 clips in May. 48+24 = 72\n#### 72", "72"),
        ("The answer is 1,234.", "1234"),
        ("so the answer is $18.00, not 20", "18"),
        ("Answer: -7 degrees (it was 3 at noon)", "-7"),
        ("We get \\boxed{12} after 3 steps", "12"),
        ("It costs 0.50 dollars each, 2 of them: 1.0", "1"),
        ("the total is 3.75", "3.75"),
        ("#### 5\nThe answer is 6", "5"),  # GSM8K's own marker outranks prose
        ("Tom is 10 years old. In 5 years he is 15.", "15"),
        ("5-3=2", "2"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number_known_answers(text, expected):
    assert extract_number(text) == expected


def test_normalize_number_gives_one_spelling_per_value():
    assert (
        normalize_number("1,000")
        == normalize_number("1000.0")
        == normalize_number("$1000")
        == "1000"
    )
    assert normalize_number("0.50") == "0.5"
    assert normalize_number("-0") == "0"
    assert normalize_number("12.") == "12"
    assert normalize_number("abc") is None


def test_gsm8k_reference_reads_the_final_marker():
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
    assert gsm8k_reference(answer) == "72"
    assert gsm8k_reference("... #### 1,080") == "1080"
    assert gsm8k_reference("#### -3") == "-3"
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("no marker, 72")


def test_majority_vote():
    assert majority_vote(["3", "4", "4", None, "3", "4"]) == "4"
    assert majority_vote(["5", "6", "6", "5"]) == "5"  # a tie goes to the answer seen first
    assert majority_vote([None, None, "2"]) == "2"  # abstentions never win
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
