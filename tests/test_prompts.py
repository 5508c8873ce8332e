"""Prompt templates (prefrec.prompts): one per domain, prefix/question split, answer texts."""

import pytest

from prefrec import prompts

HISTORY = ["The Lion King (1994)", "Girl, Interrupted (1999)", "Heat (1995)"]


def test_format_ordering():
    assert prompts.format_ordering("Heat (1995)", "Casino (1995)") == "Heat (1995), Casino (1995)"


@pytest.mark.parametrize("dom", sorted(prompts.DOMAINS))
def test_every_domain_has_all_templates(dom):
    d = prompts.domain(dom)
    prefix = prompts.history_prefix(dom, HISTORY)
    assert prefix.startswith(d.role) and prefix.endswith("\n")
    assert all(f'"{t}"' in prefix for t in HISTORY)
    assert prefix.index(HISTORY[0]) < prefix.index(HISTORY[1]) < prefix.index(HISTORY[2])  # oldest first
    q = prompts.pairwise_question(dom, "B", "A")
    assert q.index('"B"') < q.index('"A"') and d.plural in q  # shown in the order given (the caller shuffles)
    cands = [f"T{i}" for i in range(20)]
    cq = prompts.candidates_question(dom, cands)
    assert "20" in cq and all(f'"{c}"' in cq for c in cands)
    yp = prompts.yesno_prefix(dom, ["L1"], ["D1", "D2"])
    assert yp.endswith("\n") and '"L1"' in yp and '"D2"' in yp and yp.index("L1") < yp.index("D1")
    assert '"X"' in prompts.yesno_question(dom, "X") and d.singular in prompts.yesno_question(dom, "X")


def test_unknown_domain_uses_neutral_wording():
    assert prompts.domain("podcasts") is prompts.DOMAINS["items"]
    assert "items" in prompts.history_prefix("podcasts", ["a"])


def test_domains_use_their_own_words():
    assert "watched" in prompts.history_prefix("movies", ["a"])
    assert "listened to" in prompts.history_prefix("music", ["a"])
    assert "read" in prompts.history_prefix("books", ["a"])
    assert "video games" in prompts.history_prefix("games", ["a"])


def test_empty_lists_are_said_not_left_blank():
    yp = prompts.yesno_prefix("movies", [], ["x"])
    assert "(none)" in yp


def test_pair_helpers_match_the_pieces():
    assert prompts.pairwise_prompt(HISTORY, "a", "b", "books") == (
        prompts.history_prefix("books", HISTORY), prompts.pairwise_question("books", "a", "b"))
    assert prompts.candidates_prompt(HISTORY, ["a", "b"], "music") == (
        prompts.history_prefix("music", HISTORY), prompts.candidates_question("music", ["a", "b"]))
    assert prompts.yesno_prompt(["a"], ["b"], "c", "games") == (
        prompts.yesno_prefix("games", ["a"], ["b"]), prompts.yesno_question("games", "c"))
    assert (prompts.YES, prompts.NO) == ("Yes.", "No.")
