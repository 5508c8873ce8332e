"""Prompt templates (prefrec.prompts): one per domain, prefix/question split, answer texts."""

import pytest

from prefrec import prompts
from prefrec.tasks import yesno as task_yesno
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks import pairwise as task_pairwise

HISTORY = ["The Lion King (1994)", "Girl, Interrupted (1999)", "Heat (1995)"]


def test_format_ordering():
    assert task_pairwise.format_ordering("Heat (1995)", "Casino (1995)") == "Heat (1995), Casino (1995)"


@pytest.mark.parametrize("dom", sorted(prompts.DOMAINS))
def test_every_domain_has_all_templates(dom):
    d = prompts.domain(dom)
    prefix = prompts.history_prefix(dom, HISTORY)
    assert prefix.startswith(d.role) and prefix.endswith("\n")
    assert all(f'"{t}"' in prefix for t in HISTORY)
    assert prefix.index(HISTORY[0]) < prefix.index(HISTORY[1]) < prefix.index(HISTORY[2])  # oldest first
    q = task_pairwise.title_question(dom, "B", "A")
    assert q.index('"B"') < q.index('"A"') and d.plural in q  # shown in the order given (the caller shuffles)
    cands = [f"T{i}" for i in range(20)]
    cq = task_candidates.title_question(dom, cands)
    assert "20" in cq and all(f'"{c}"' in cq for c in cands)
    yp = task_yesno.yesno_prefix(dom, ["L1"], ["D1", "D2"])
    assert yp.endswith("\n") and '"L1"' in yp and '"D2"' in yp and yp.index("L1") < yp.index("D1")
    assert '"X"' in task_yesno.yesno_question(dom, "X") and d.singular in task_yesno.yesno_question(dom, "X")


def test_unknown_domain_uses_neutral_wording():
    assert prompts.domain("podcasts") is prompts.DOMAINS["items"]
    assert "items" in prompts.history_prefix("podcasts", ["a"])


def test_domains_use_their_own_words():
    assert "watched" in prompts.history_prefix("movies", ["a"])
    assert "listened to" in prompts.history_prefix("music", ["a"])
    assert "read" in prompts.history_prefix("books", ["a"])
    assert "video games" in prompts.history_prefix("games", ["a"])


def test_empty_lists_are_said_not_left_blank():
    yp = task_yesno.yesno_prefix("movies", [], ["x"])
    assert "(none)" in yp


def test_every_task_example_is_the_shared_prefix_and_its_format_question():
    from prefrec import tasks

    for row in tasks.TASKS.values():
        for name, fmt in row.formats.items():
            prefix, question, answer = row.example("books", name)
            assert prefix.endswith(".\n") and "books" in prefix and question and answer
    assert task_pairwise.TASK.example("books", "title")[1] == task_pairwise.title_question("books", "Alien (1979)",
                                                                                             "Jaws (1975)")
    assert (task_yesno.YES, task_yesno.NO) == ("Yes.", "No.")
