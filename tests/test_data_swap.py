"""Another user's history (prefrec.data.swap), checked against a recount on hand-made samples."""

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.data.swap import swap_histories
from prefrec.errors import UserError
from prefrec.samples import Comparison, Sample, read_jsonl, write_samples


def _sample(user: str, j: int, history: list[str], candidates: list[str]) -> Sample:
    prefix = "The user watched: " + ", ".join(history) + ".\n"
    question = "Which next? " + ", ".join(candidates)
    return Sample(id=f"{user}-{j}", task="candidates", domain="movies", prefix=prefix,
                  comparisons=[Comparison(question, candidates[0], candidates[1:])], user=user,
                  history=history, history_items=[h.lower() for h in history], candidates=candidates,
                  candidate_items=[c.lower() for c in candidates], target=candidates[0],
                  target_item=candidates[0].lower())


def _log(n_users: int = 12, per_user: int = 3) -> list[Sample]:
    """Users 0..n-1, each with per_user samples; user u's history items are H{u}a..H{u}d, and its candidates
    include one item of the next user's history, so that some permutations do not fit."""
    out = []
    for u in range(n_users):
        hist = [f"H{u}{x}" for x in "abcd"]
        for j in range(per_user):
            out.append(_sample(str(u), j, hist, [f"T{u}{j}", f"C{u}{j}", f"H{(u + 1) % n_users}a"]))
    return out


def test_every_sample_gets_another_users_history_without_its_candidates_and_keeps_the_rest():
    samples = _log()
    swapped = swap_histories(samples, seed=3)
    by_prefix = {s.prefix: s for s in samples}
    for old, new in zip(samples, swapped):
        donor = by_prefix[new.prefix]
        assert donor.user != old.user  # another user's
        assert new.history == donor.history and new.history_items == donor.history_items
        assert not set(new.history_items) & set(old.candidate_items)  # none of its candidates in the history
        # everything else is the sample's own
        assert (new.id, new.comparisons, new.candidates, new.target, new.user) == \
            (old.id, old.comparisons, old.candidates, old.target, old.user)
    # a permutation: each history shown as often as before
    assert Counter(s.prefix for s in swapped) == Counter(s.prefix for s in samples)
    assert [s.prefix for s in swap_histories(samples, seed=3)] == [s.prefix for s in swapped]  # seeded
    assert [s.prefix for s in swap_histories(samples, seed=4)] != [s.prefix for s in swapped]
    assert samples == _log()  # the input is not changed


def test_swapping_refuses_one_user_and_a_history_outside_the_prefix():
    with pytest.raises(UserError, match="at least two users"):
        swap_histories([_sample("1", j, ["A"], ["B", "C"]) for j in range(3)])
    bad = _log(3, 1)
    bad[1].prefix = "No history here.\n"
    with pytest.raises(UserError, match="not in its prefix"):
        swap_histories(bad)


def test_swapping_says_so_when_no_other_users_history_fits():
    # two users whose histories each hold one of the other's candidates: no permutation fits
    a = _sample("a", 0, ["X"], ["T1", "Y"])
    b = _sample("b", 0, ["Y"], ["T2", "X"])
    with pytest.raises(UserError, match="no other user's history"):
        swap_histories([a, b])


def test_cli_swap_histories_writes_a_new_file_and_never_replaces_one(tmp_path):
    src = tmp_path / "test.jsonl"
    write_samples(src, _log())
    out = tmp_path / "swapped.jsonl"
    res = CliRunner().invoke(app, ["data", "swap-histories", str(src), "--out", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    swapped = read_jsonl(out)
    assert [s.id for s in swapped] == [s.id for s in _log()]
    assert sum(s.prefix != o.prefix for s, o in zip(swapped, _log())) == len(swapped)
    before = out.read_bytes()
    again = CliRunner().invoke(app, ["data", "swap-histories", str(src), "--out", str(out)])
    assert again.exit_code != 0 and "already exists" in again.output and out.read_bytes() == before
    one_user = tmp_path / "one.jsonl"
    one_user.write_text(json.dumps(_sample("1", 0, ["A"], ["B", "C"]).to_dict()) + "\n")
    res = CliRunner().invoke(app, ["data", "swap-histories", str(one_user), "--out", str(tmp_path / "x.jsonl")])
    assert res.exit_code != 0 and "at least two users" in res.output and "Traceback" not in res.output
