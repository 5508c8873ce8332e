"""Protocols (prefrec.data.protocols) on synthetic logs, every invariant checked against a naive recomputation."""

import random
import re

import pytest

from prefrec import prompts
from prefrec.data import protocols as P
from prefrec.data.readers import Interaction, Log
from prefrec.errors import UserError
from prefrec.tasks import yesno as task_yesno
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks import pairwise as task_pairwise
from prefrec.tasks import task as task_row

BUILDERS = {"pairwise": task_pairwise.build_pairwise, "candidates": task_candidates.build_candidates,
            "yesno": task_yesno.build_yesno}


def synthetic_log(n_users=40, n_items=80, per_user=(14, 40), seed=0, timestamps=True, value="rating",
                  dup_title=False) -> Log:
    rng = random.Random(seed)
    inter = []
    for u in range(1, n_users + 1):
        items = rng.sample(range(1, n_items + 1), rng.randint(*per_user))
        for j, it in enumerate(items):
            ts = 10_000 + (j // 2) * 100 + u if timestamps else None  # pairs of equal timestamps: ties
            rating = float(rng.randint(1, 5)) if value == "rating" else float(rng.randint(1, 10_000))
            inter.append(Interaction(str(u), str(it), rating, ts))
    rng.shuffle(inter)  # file order is not time order
    titles = {str(i): f"Movie {i} ({1950 + i % 50})" for i in range(1, n_items + 1)}
    if dup_title:
        titles["2"] = titles["1"]  # two catalogue ids, one title
    return Log(name="syn", domain="movies", interactions=inter, titles=titles, value=value,
               has_timestamps=timestamps)


def time_order(log: Log, seed: int = 0) -> dict[str, list[int]]:
    """Naive: each user's interaction indices sorted by (timestamp, file position); without timestamps, file
    order shuffled by random.Random(f"{seed}:order:{user}") (the documented seeded order)."""
    out: dict[str, list[int]] = {}
    for i, x in enumerate(log.interactions):
        out.setdefault(x.user, []).append(i)
    for u in out:
        out[u].sort(key=lambda i: ((log.interactions[i].timestamp or 0), i))
        if not log.has_timestamps and log.order_by != "file":
            random.Random(f"{seed}:order:{u}").shuffle(out[u])
    return out


def all_samples(built):
    return [s for split in P.SPLITS for s in built.samples[split]]


# ---- shared pieces -----------------------------------------------------------------------------------------------

def test_sequences_break_ties_by_file_order():
    log = synthetic_log()
    assert P.sequences(log, 0) == P.sequences(log, 5) == time_order(log)


def test_sequences_without_timestamps_are_a_seeded_random_order():
    """Issue 14 point 1: file (or id) order is not time; only --order-by file makes it so."""
    log = synthetic_log(timestamps=False)
    seqs = P.sequences(log, 0)
    assert seqs == time_order(log, 0) and seqs != time_order(log, 1) == P.sequences(log, 1)
    assert sum(s == sorted(s) for s in seqs.values()) == 0
    assert all(s == sorted(s) for s in P.sequences(log, None).values())  # order-free uses: file order
    log.order_by = "file"
    assert all(s == sorted(s) for s in P.sequences(log, 0).values())
    assert P.timed(log) and "file order" in P.order_note(log)


def test_liked_flags_ratings_and_play_counts():
    log = synthetic_log()
    assert P.liked_flags(log, 3.0) == [x.rating > 3 for x in log.interactions]
    wlog = synthetic_log(value="weight")
    flags = P.liked_flags(wlog)
    for u, idxs in time_order(wlog).items():
        liked = [i for i in idxs if flags[i]]
        assert len(liked) == len(idxs) // 2
        assert min(wlog.interactions[i].rating for i in liked) >= max(
            wlog.interactions[i].rating for i in idxs if not flags[i])


@pytest.mark.parametrize("n, expected, n_warn", [
    (1200, {"train": 100, "valid": 100, "test": 1000}, 0),
    (902, {"train": 100, "valid": 100, "test": 702}, 1),
    (150, {"train": 100, "valid": 49, "test": 1}, 2),
    (3, {"train": 1, "valid": 1, "test": 1}, 3),
])
def test_split_sizes_shrink_test_then_valid_then_train(n, expected, n_warn):
    sizes, warnings = P.split_sizes(n, {"train": 100, "valid": 100, "test": 1000})
    assert sizes == expected and len(warnings) == n_warn
    assert sum(sizes.values()) <= n


def test_split_sizes_errors_and_all():
    with pytest.raises(UserError, match="only 2 eligible users, too few for one user per split"):
        P.split_sizes(2, {"train": 100, "valid": 100, "test": 1000})
    assert P.split_sizes(50, {"train": None, "valid": 5, "test": 10})[0] == {"train": 35, "valid": 5, "test": 10}
    assert P.split_sizes(2, {"train": 1, "valid": 0, "test": 1})[0] == {"train": 1, "valid": 0, "test": 1}
    with pytest.raises(UserError, match="only one of"):
        P.split_sizes(50, {"train": None, "valid": None, "test": 10})


# ---- DMPO pairwise -----------------------------------------------------------------------------------------------

def test_pairwise_invariants():
    log = synthetic_log()
    k = 3
    built = task_pairwise.build_pairwise(log, seed=7, negatives=k, history_len=12, n_train=5, n_valid=5, n_test=100)
    inter, order = log.interactions, time_order(log)
    # eligibility, brute force: ≥5 positives, ≥5 negatives, a positive with ≥ min_history + k earlier interactions
    eligible = 0
    for u, idxs in order.items():
        pos = [j for j, i in enumerate(idxs) if inter[i].rating > 3]
        neg = [j for j, i in enumerate(idxs) if inter[i].rating <= 3]
        eligible += len(pos) >= 5 and len(neg) >= 5 and any(j >= 5 + k for j in pos)
    assert built.users_eligible == eligible
    users = {split: {s.user for s in built.samples[split]} for split in P.SPLITS}
    assert not (users["train"] & users["valid"] or users["train"] & users["test"] or users["valid"] & users["test"])
    assert [len(built.samples[s]) for s in P.SPLITS] == [5, 5, eligible - 10]
    shown_first = 0
    for s in all_samples(built):
        idxs = order[s.user]
        items = [inter[i].item for i in idxs]
        rating = {inter[i].item: inter[i].rating for i in idxs}
        t = items.index(s.target_item)
        negs = s.candidate_items[1:]
        assert s.candidate_items[0] == s.target_item and len(negs) == k == s.k
        assert rating[s.target_item] > 3 and all(rating[n] <= 3 for n in negs)
        # history: strictly before the positive in time order, held-out negatives removed, the last 12
        assert s.history_items == [it for it in items[:t] if it not in negs][-12:]
        assert len(s.history_items) >= 5
        assert s.history == [log.title(i) for i in s.history_items]
        assert s.prefix == prompts.history_prefix("movies", s.history)
        pos_t = log.title(s.target_item)
        assert s.target == pos_t
        for comp, n in zip(s.comparisons, negs):
            n_t = log.title(n)
            assert comp.chosen == task_pairwise.format_ordering(pos_t, n_t)
            assert comp.rejected == [task_pairwise.format_ordering(n_t, pos_t)]
            shown = re.findall(r'"([^"]+)"', comp.question)
            assert sorted(shown) == sorted([pos_t, n_t])
            shown_first += shown[0] == pos_t
    n_comp = sum(len(s.comparisons) for s in all_samples(built))
    assert 0.3 < shown_first / n_comp < 0.7  # the order in the question is shuffled, not fixed
    split_of = {s.user: split for split in P.SPLITS for s in built.samples[split]}
    assert built.interaction_split == [split_of.get(x.user, "unused") for x in inter]


def test_pairwise_seeded():
    log = synthetic_log()
    kw = dict(negatives=2, n_train=5, n_valid=5, n_test=10)
    a, b, c = task_pairwise.build_pairwise(log, seed=1, **kw), task_pairwise.build_pairwise(log, seed=1, **kw), task_pairwise.build_pairwise(log, seed=2, **kw)
    assert [x.to_dict() for x in all_samples(a)] == [x.to_dict() for x in all_samples(b)]
    assert [x.to_dict() for x in all_samples(a)] != [x.to_dict() for x in all_samples(c)]
    assert {x.user for x in a.samples["test"]} != {x.user for x in c.samples["test"]}


def test_pairwise_shrinks_loudly_and_errors_when_impossible():
    log = synthetic_log(n_users=12)
    built = task_pairwise.build_pairwise(log, seed=0)
    e = built.users_eligible
    assert sum(len(v) for v in built.samples.values()) == e
    assert [len(built.samples[s]) for s in P.SPLITS] == [e - 2, 1, 1]
    assert any("test split" in w for w in built.warnings) and any("valid split" in w for w in built.warnings)
    tiny = synthetic_log(n_users=2)
    with pytest.raises(UserError, match="too few for one user per split"):
        task_pairwise.build_pairwise(tiny)


def test_pairwise_negatives_need_distinct_titles():
    log = synthetic_log(dup_title=True)
    built = task_pairwise.build_pairwise(log, seed=3, negatives=3, n_train=None, n_valid=1, n_test=1)
    for s in all_samples(built):
        titles = [log.title(i) for i in s.candidate_items]
        assert titles[0] not in titles[1:]


def test_pairwise_play_counts():
    log = synthetic_log(value="weight", timestamps=False)
    built = task_pairwise.build_pairwise(log, seed=0, negatives=1, n_train=3, n_valid=3, n_test=3)
    flags = P.liked_flags(log)
    liked = {(x.user, x.item) for x, f in zip(log.interactions, flags) if f}
    for s in all_samples(built):
        assert (s.user, s.target_item) in liked and (s.user, s.candidate_items[1]) not in liked
    assert "seeded random order" in built.protocol["history_order"]
    assert any("no timestamps" in w for w in built.warnings)
    assert all("in no particular order" in s.prefix for s in all_samples(built))


# ---- S-DPO candidates --------------------------------------------------------------------------------------------

def check_candidates(log, built, k, n_candidates=20, history_len=10, seed=0):
    inter, order = log.interactions, time_order(log, seed)
    timed = log.has_timestamps
    for split in P.SPLITS:
        for s in built.samples[split]:
            idxs = order[s.user]
            items = [inter[i].item for i in idxs]
            t = int(s.id.rsplit("-", 1)[1])
            assert items[t] == s.target_item
            # history: the items before t, minus any with the target's title under another id (point 7)
            earlier = [i for i in items[:t] if log.title(i).casefold() != s.target.casefold()]
            assert s.history_items == earlier[-history_len:] and 3 <= len(s.history_items) <= history_len
            assert len(s.candidate_items) == n_candidates and s.candidate_items.count(s.target_item) == 1
            others = [c for c in s.candidate_items if c != s.target_item]
            assert not set(others) & set(items)  # never interacted with, anywhere in the log
            assert len(set(s.candidates)) == n_candidates  # distinct titles
            assert s.candidates == [log.title(c) for c in s.candidate_items]
            comp = s.comparisons[0]
            assert comp.chosen == s.target == log.title(s.target_item)
            assert len(comp.rejected) == k == s.k and len(set(comp.rejected)) == k
            assert set(comp.rejected) <= {log.title(c) for c in others}
            assert comp.question == task_candidates.title_question("movies", s.candidates, timed=timed)
            assert s.prefix == prompts.history_prefix("movies", s.history, timed=timed)
            assert built.interaction_split[idxs[t]] == split


def test_candidates_invariants_and_chronological_split():
    log = synthetic_log()
    built = task_candidates.build_candidates(log, seed=0, negatives=3, n_train=None, n_valid=None, n_test=None)
    check_candidates(log, built, 3)
    inter, order = log.interactions, time_order(log)
    total = sum(max(0, len(v) - 3) for v in order.values())
    sizes = [len(built.samples[s]) for s in P.SPLITS]
    assert sum(sizes) == total and sizes == [round(total * 0.8), round(total * 0.9) - round(total * 0.8),
                                             total - round(total * 0.9)]
    ts = {s: [inter[order[x.user][int(x.id.rsplit("-", 1)[1])]].timestamp for x in built.samples[s]] for s in P.SPLITS}
    assert max(ts["train"]) <= min(ts["valid"]) and max(ts["valid"]) <= min(ts["test"])
    # interaction labels follow the same time cut
    cut = {s: (min(ts[s]), max(ts[s])) for s in P.SPLITS}
    for x, label in zip(inter, built.interaction_split):
        if x.timestamp < cut["valid"][0]:
            assert label == "train"
        if x.timestamp > cut["valid"][1]:
            assert label == "test"


def test_candidates_caps_are_seeded_and_shuffle_differs_by_seed():
    log = synthetic_log()
    kw = dict(negatives=2, n_train=30, n_valid=7, n_test=9)
    a, b, c = (task_candidates.build_candidates(log, seed=s, **kw) for s in (5, 5, 6))
    assert [len(a.samples[s]) for s in P.SPLITS] == [30, 7, 9]
    assert a.protocol["potential_samples"]["train"] > 30
    assert [x.to_dict() for x in all_samples(a)] == [x.to_dict() for x in all_samples(b)]
    assert [x.id for x in all_samples(a)] != [x.id for x in all_samples(c)]
    check_candidates(log, a, 2)
    same = task_candidates.build_candidates(log, seed=6, negatives=2, n_train=None, n_valid=None, n_test=None)
    other = task_candidates.build_candidates(log, seed=7, negatives=2, n_train=None, n_valid=None, n_test=None)
    assert [x.id for x in all_samples(same)] == [x.id for x in all_samples(other)]  # same samples …
    assert [x.candidates for x in all_samples(same)] != [x.candidates for x in all_samples(other)]  # … new order
    pos = [x.candidates.index(x.target) for x in all_samples(same)]
    assert len(set(pos)) > 10  # the target is not always in the same slot


def test_candidates_without_timestamps_cut_each_user():
    log = synthetic_log(timestamps=False)
    built = task_candidates.build_candidates(log, seed=0, negatives=1, n_train=None, n_valid=None, n_test=None)
    check_candidates(log, built, 1)
    for u, idxs in time_order(log).items():
        m = len(idxs) - 3
        labels = [built.interaction_split[i] for i in idxs]
        n_te, n_va = int(m * 0.1 + 0.5), int(m * 0.1 + 0.5)
        assert labels == ["train"] * (len(idxs) - n_te - n_va) + ["valid"] * n_va + ["test"] * n_te
    assert "per-user" in built.protocol["split"]


def test_candidates_distinct_titles_and_small_catalogue():
    check_candidates(synthetic_log(dup_title=True), task_candidates.build_candidates(synthetic_log(dup_title=True), seed=0), 3)
    small = synthetic_log(n_users=6, n_items=25, per_user=(8, 10))
    built = task_candidates.build_candidates(small, seed=0, n_train=None, n_valid=None, n_test=None)
    assert any("skipped" in w for w in built.warnings)  # some users leave fewer than 19 unseen items
    check_candidates(small, built, 3)


def _one_user_after_another(n_users=12) -> Log:
    """Each user rates after the previous one has finished (ML-1M's earliest raters are a few heavy users)."""
    base = synthetic_log(n_users=n_users, per_user=(20, 30))
    inter = [Interaction(x.user, x.item, x.rating, int(x.user) * 10**6 + x.timestamp) for x in base.interactions]
    return Log(name="syn", domain="movies", interactions=inter, titles=base.titles, value="rating",
               has_timestamps=True)


def test_candidates_round_robin_train_order_puts_every_user_before_any_users_second_sample():
    log = _one_user_after_another()
    kw = dict(n_train=None, n_valid=None, n_test=None)
    timed = task_candidates.build_candidates(log, seed=3, **kw)
    rr = task_candidates.build_candidates(log, seed=3, train_order="round-robin", **kw)
    t, r = timed.samples["train"], rr.samples["train"]
    counts = {}
    for s in t:
        counts[s.user] = counts.get(s.user, 0) + 1
    assert len(counts) >= 8 and len({s.user for s in t[:len(counts)]}) <= 2  # the papers' order: one or two users
    assert sorted(s.id for s in r) == sorted(s.id for s in t)  # the same samples, reordered
    pos = 0
    for rnd in range(max(counts.values())):  # round `rnd`: every user with more than rnd samples, once
        users = sorted(u for u, c in counts.items() if c > rnd)
        assert sorted(s.user for s in r[pos:pos + len(users)]) == users
        pos += len(users)
    # within a user the order is random, not time (a user's earliest sample has the shortest history)
    first = r[:len(counts)]
    assert any(len(s.history) == 10 for s in first) and any(s.id != min((x for x in t if x.user == s.user),
                                                                   key=lambda x: int(x.id.rsplit("-", 1)[1])).id
                                                           for s in first)
    for split in ("valid", "test"):
        assert [s.id for s in rr.samples[split]] == [s.id for s in timed.samples[split]]
    assert (timed.protocol["train_order"], rr.protocol["train_order"]) == ("time", "round-robin")
    again = task_candidates.build_candidates(log, seed=3, train_order="round-robin", **kw).samples["train"]
    other = task_candidates.build_candidates(log, seed=4, train_order="round-robin", **kw).samples["train"]
    assert [s.id for s in again] == [s.id for s in r] and [s.user for s in other] != [s.user for s in r]
    with pytest.raises(UserError, match="--train-order 'users': expected one of time, round-robin"):
        task_candidates.build_candidates(log, train_order="users", **kw)
    for task in ("pairwise", "yesno"):
        with pytest.raises(UserError, match="--train-order applies to the candidates task"):
            task_row(task).build(log, P.Options(train_order="round-robin"))


def test_candidates_bad_parameters():
    log = synthetic_log()
    with pytest.raises(UserError, match="--negatives must be between 1 and 19"):
        task_candidates.build_candidates(log, negatives=20)
    with pytest.raises(UserError, match="no next-item sample"):
        task_candidates.build_candidates(synthetic_log(n_users=1, per_user=(5, 5)), n_train=None, n_valid=None, n_test=None)


# ---- TALLRec yes/no ----------------------------------------------------------------------------------------------

def test_yesno_invariants():
    log = synthetic_log()
    built = task_yesno.build_yesno(log, seed=0, n_train=5, n_valid=5, n_test=100)
    inter, order = log.interactions, time_order(log)
    assert built.users_eligible == sum(len(v) > 10 for v in order.values())
    users = [s.user for s in all_samples(built)]
    assert len(users) == len(set(users))
    for s in all_samples(built):
        idxs = order[s.user]
        items = [inter[i].item for i in idxs]
        rating = {inter[i].item: inter[i].rating for i in idxs}
        t = items.index(s.target_item)
        assert t >= 10 and s.history_items == items[t - 10:t]
        assert s.label == int(rating[s.target_item] > 3)
        assert s.comparisons[0].chosen == ("Yes." if s.label else "No.")
        assert s.comparisons[0].rejected == (["No."] if s.label else ["Yes."])
        liked = [log.title(i) for i in s.history_items if rating[i] > 3]
        disliked = [log.title(i) for i in s.history_items if rating[i] <= 3]
        assert s.prefix == task_yesno.yesno_prefix("movies", liked, disliked)
        assert s.comparisons[0].question == task_yesno.yesno_question("movies", s.target)
    labels = [s.label for s in all_samples(built)]
    assert 0 < sum(labels) < len(labels)


# ---- options for more signal per sample (issue 12) -----------------------------------------------------------------

def _note_naive(log, use_user, item, user):
    """The hybrid prompt's item note recomputed from the raw interactions: other users' ratings of `item`, counted
    only where use_user(their user) says so."""
    rs = [x.rating for x in log.interactions if x.item == item and x.user != user and use_user(x)]
    return prompts.item_note(len(rs), sum(rs) / len(rs) if rs else None)


def test_pairwise_per_user_adds_training_samples_along_the_timeline():
    log = synthetic_log(n_users=60)
    base = task_pairwise.build_pairwise(log, seed=3, negatives=2, n_train=20, n_valid=10, n_test=20)
    more = task_pairwise.build_pairwise(log, seed=3, negatives=2, n_train=20, n_valid=10, n_test=20, per_user=4)
    # the papers' samples are unchanged; only training users get more
    first = [s for s in more.samples["train"] if not re.search(r"-\d+-\d+$", s.id)]
    assert [s.to_dict() for s in first] == [s.to_dict() for s in base.samples["train"]]
    for split in ("valid", "test"):
        assert [s.to_dict() for s in more.samples[split]] == [s.to_dict() for s in base.samples[split]]
    assert len(more.samples["train"]) > 2 * len(base.samples["train"])
    order = time_order(log)
    test_users = {s.user for s in more.samples["test"]}
    per_user: dict[str, set[str]] = {}
    for s in more.samples["train"]:
        assert s.user not in test_users
        per_user.setdefault(s.user, set()).add(s.target_item)
        seq = order[s.user]
        pos_at = next(j for j, i in enumerate(seq) if log.interactions[i].item == s.target_item)
        before = [log.interactions[i].item for i in seq[:pos_at]]
        assert s.history_items == [i for i in before if i not in s.candidate_items[1:]][-40:]
    assert max(len(v) for v in per_user.values()) == 4  # distinct positives per user
    # round-robin file order: the first N samples cover min(N, users) users (a learning curve's first points)
    n_users = len(per_user)
    assert len({s.user for s in more.samples["train"][:n_users]}) == n_users
    assert sum(len(v) for v in per_user.values()) == len(more.samples["train"])


def test_pairwise_item_stats_come_from_other_non_test_users_only():
    log = synthetic_log(n_users=60)
    built = task_pairwise.build_pairwise(log, seed=1, negatives=2, n_train=20, n_valid=10, n_test=20, item_stats=True,
                             history_ratings=True)
    test_users = {s.user for s in built.samples["test"]}
    for s in all_samples(built):
        for c, neg in zip(s.comparisons, s.candidate_items[1:]):
            for item in (s.candidate_items[0], neg):
                note = _note_naive(log, lambda x: x.user not in test_users, item, s.user)
                assert f'"{log.title(item)}" ({note})' in c.question
        mine = {x.item: x.rating for x in log.interactions if x.user == s.user}
        shown = re.findall(r'" \((\d)/5\)', s.prefix)
        assert [float(r) for r in shown] == [mine[i] for i in s.history_items]
    # a test user's ratings never reach any prompt
    changed = synthetic_log(n_users=60)
    swap = {1.0: 2.0, 2.0: 1.0, 4.0: 5.0, 5.0: 4.0, 3.0: 3.0}  # other ratings, same liked / not liked
    changed.interactions = [x._replace(rating=swap[x.rating]) if x.user in test_users else x
                            for x in changed.interactions]
    again = task_pairwise.build_pairwise(changed, seed=1, negatives=2, n_train=20, n_valid=10, n_test=20, item_stats=True)
    plain = task_pairwise.build_pairwise(log, seed=1, negatives=2, n_train=20, n_valid=10, n_test=20, item_stats=True)
    assert [s.comparisons[0].question for s in again.samples["train"]] == \
        [s.comparisons[0].question for s in plain.samples["train"]]


def test_candidates_item_stats_come_from_the_training_period_only():
    log = synthetic_log(n_users=30)
    built = task_candidates.build_candidates(log, seed=0, n_train=50, n_valid=20, n_test=20, item_stats=True)
    split = built.interaction_split
    train_rows = {id(x) for x, sp in zip(log.interactions, split) if sp == "train"}
    for s in all_samples(built)[:40]:
        q = s.comparisons[0].question
        for item in s.candidate_items:
            note = _note_naive(log, lambda x: id(x) in train_rows, item, s.user)
            assert f'"{log.title(item)}" ({note})' in q


def test_hybrid_options_are_checked():
    with pytest.raises(UserError, match="per-user"):
        task_pairwise.build_pairwise(synthetic_log(), per_user=0)
    with pytest.raises(UserError, match="history-ratings needs a log of ratings"):
        task_pairwise.build_pairwise(synthetic_log(value="plays"), history_ratings=True, n_train=5, n_valid=5, n_test=5)


# ---- issue 14: title twins, same-second history, the negative threshold ------------------------------------------

def test_history_never_shows_a_title_of_the_sample_under_another_id():
    """Point 7: item 2 has item 1's title; no history may show the positive's or a negative's title."""
    log = synthetic_log(dup_title=True, n_users=60)
    removed = 0
    for task in ("pairwise", "candidates", "yesno"):
        build = BUILDERS[task]
        built = build(log, seed=0, n_train=None, n_valid=1, n_test=1)
        shown = lambda s: s.candidates if task != "candidates" else [s.target]  # noqa: E731
        for s in all_samples(built):
            assert not {t.casefold() for t in s.history} & {t.casefold() for t in shown(s)}, s.id
        removed += built.protocol["history_title_twins_removed"]
    assert removed > 0  # the case occurs in this log


def naive_same_time(log, built):
    ts = {(x.user, x.item): x.timestamp for x in log.interactions}
    return sum(any(ts[(s.user, i)] == ts[(s.user, s.target_item)] for i in s.history_items) for s in all_samples(built))


@pytest.mark.parametrize("task", ["pairwise", "candidates", "yesno"])
def test_same_time_history_is_counted_kept_by_default_and_droppable(task):
    """Point 6: the default keeps the papers' stable-sort history (and says how many samples have such items);
    --same-time drop keeps only strictly earlier timestamps."""
    log = synthetic_log()  # pairs of equal timestamps per user
    build = BUILDERS[task]
    kw = dict(seed=0, n_train=None, n_valid=2, n_test=2)
    keep, drop = build(log, **kw), build(log, same_time="drop", **kw)
    assert keep.protocol["same_time_history"]["samples_with_same_time_history"] == naive_same_time(log, keep) > 0
    assert keep.protocol["same_time_history"]["rule"].startswith("kept")
    assert drop.protocol["same_time_history"] == {"rule": drop.protocol["same_time_history"]["rule"],
                                                  "samples_with_same_time_history": 0}
    assert naive_same_time(log, drop) == 0 and all_samples(drop)
    ts = {(x.user, x.item): x.timestamp for x in log.interactions}
    for s in all_samples(drop):
        assert all(ts[(s.user, i)] < ts[(s.user, s.target_item)] for i in s.history_items)
    with pytest.raises(UserError, match="--same-time"):
        build(log, same_time="later", **kw)


def test_negative_below_drops_middle_ratings_from_the_negatives():
    """Point 10: the papers' other reading (negatives < 3, 3s neither); 3s stay in the history."""
    log = synthetic_log(n_users=60)
    rating = {(x.user, x.item): x.rating for x in log.interactions}
    built = task_pairwise.build_pairwise(log, seed=0, negatives=2, negative_below=3, n_train=None, n_valid=1, n_test=1)
    negs = [rating[(s.user, i)] for s in all_samples(built) for i in s.candidate_items[1:]]
    assert negs and max(negs) < 3
    assert any(rating[(s.user, i)] == 3 for s in all_samples(built) for i in s.history_items)
    assert built.protocol["negative"].startswith("rating < 3")
    default = task_pairwise.build_pairwise(log, seed=0, negatives=2, n_train=None, n_valid=1, n_test=1)
    assert any(rating[(s.user, i)] == 3 for s in all_samples(default) for i in s.candidate_items[1:])
    with pytest.raises(UserError, match="must not exceed --threshold"):
        task_pairwise.build_pairwise(log, negative_below=4, threshold=3)
    with pytest.raises(UserError, match="play counts"):
        task_pairwise.build_pairwise(synthetic_log(value="weight", timestamps=False), negative_below=3)


def test_yesno_on_the_hybrid_prompt():
    """TALLRec's yes/no with the other tasks' hybrid prompt: the history with the user's ratings, and the target's
    facts from users outside the test split (the sample's own user left out)."""
    log = synthetic_log(seed=5)
    built = task_yesno.build_yesno(log, seed=0, history_ratings=True, item_stats=True, n_train=10, n_valid=5, n_test=5)
    s = built.samples["train"][0]
    assert "each with the user's rating" in s.prefix and "/5" in s.prefix
    assert re.search(r'"[^"]+" \((mean rating [\d.]+ from \d+ users?|no other user rated it)\)\?',
                     s.comparisons[0].question)
    assert built.protocol["history_ratings"] is True and built.protocol["item_stats"]
