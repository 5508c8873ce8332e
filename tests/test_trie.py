"""prefrec.scoring.trie and constrained generation: every answer is one of the candidates."""

import torch

from prefrec.scoring import generation
from prefrec.tasks import candidates as task_candidates
from prefrec.samples import Comparison, Sample
from prefrec.scoring.trie import AnswerTrie


def test_the_trie_allows_exactly_the_continuations_of_the_answers():
    trie = AnswerTrie([[5, 6, 9], [5, 7, 9], [8, 9]], end=9)
    assert sorted(trie.allowed([])) == [5, 8]
    assert sorted(trie.allowed([5])) == [6, 7]
    assert trie.allowed([5, 6]) == [9] and trie.allowed([5, 6, 9]) == [9] and trie.allowed([3]) == [9]


def test_constrained_generation_names_a_candidate_every_time(tiny_lm):
    """A tiny random model generates noise freely; through the trie each answer is one of the candidates, and the
    papers' free-generation numbers stay beside it."""
    model, tok = tiny_lm
    cands = ["Alien (1979)", "Jaws (1975)", "Heat (1995)", "Up (2009)"]
    samples = [Sample(id=f"s{i}", task="candidates", domain="movies", prefix=f"Seen: Fargo {i}.\n",
                      comparisons=[Comparison("Which one? " + ", ".join(cands), cands[i % 4], [cands[(i + 1) % 4]])],
                      candidates=cands, target=cands[i % 4]) for i in range(4)]
    torch.manual_seed(0)
    answers = generation.generate_answers(model, tok, samples, max_new_tokens=12, progress=False,
                                         tries=task_candidates.answer_tries(tok, samples))
    assert all(a in cands for a in answers), answers
    rows = [{"target_index": i % 4} for i in range(4)]
    got = task_candidates.generate_and_match(model, tok, samples, rows, max_new_tokens=12, batch_size=2, progress=False,
                                    constrained=True)
    assert got["valid_ratio_constrained"] == 1.0 and "valid_ratio" in got and "hr@1" in got
    assert all(r["answer_constrained"] in cands for r in rows)
