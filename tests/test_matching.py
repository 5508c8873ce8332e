"""Answer ↔ candidate matching: exact first, substrings only when unambiguous."""

import pytest

from prefrec.scoring.matching import match, match_answer, normalize

CANDS = ["Star Wars (1977)", "Star Wars: Episode V - The Empire Strikes Back (1980)", "Up (2009)", "Fargo (1996)"]


def test_normalize():
    assert normalize("  Star Wars: Episode V (1980)! ") == "star wars episode v 1980"
    assert normalize("Amélie &amp; Co") == "amélie co"
    assert normalize("ＦＡＲＧＯ") == "fargo"  # NFKC folds full-width letters


@pytest.mark.parametrize("answer, want, rule", [
    ("Star Wars (1977)", 0, "exact"),
    ("star wars 1977", 0, "exact"),
    ("Star Wars: Episode V - The Empire Strikes Back (1980)", 1, "exact"),
    # the contained title "Star Wars" also occurs, but only inside the longer one: the answer names Episode V
    ("I recommend Star Wars: Episode V - The Empire Strikes Back (1980).", 1, "contains"),
    ("I recommend Star Wars (1977).", 0, "contains"),
    # both titles named on their own: ambiguous
    ("Star Wars (1977) or Star Wars: Episode V - The Empire Strikes Back (1980)", None, "ambiguous"),
    # an answer contained in two titles: ambiguous
    ("Star Wars", None, "ambiguous"),
    ("The Empire Strikes Back", 1, "within"),
    ("Fargo", 3, "within"),
    ("Pickup (2009)", None, "none"),  # "up" is not a word of "pickup"
    ("", None, "none"),
    ("Casablanca", None, "none"),
])
def test_match(answer, want, rule):
    assert match(answer, CANDS) == (want, rule)
    assert match_answer(answer, CANDS) == want


def test_candidate_whose_title_contains_another():
    cands = ["Star Wars", "Star Wars: Episode V"]
    assert match_answer("Star Wars", cands) == 0  # exact wins over the substring of the other
    assert match_answer("Star Wars: Episode V", cands) == 1
    assert match_answer("My pick: Star Wars: Episode V", cands) == 1
    assert match_answer("My pick: Star Wars", cands) == 0
    assert match_answer("Star Wars, then Star Wars: Episode V", cands) is None


def test_duplicate_normalised_titles():
    assert match_answer("Crash", ["Crash", "CRASH!"]) == 0  # raw text decides
    assert match_answer("crash", ["Crash", "CRASH!"]) is None
