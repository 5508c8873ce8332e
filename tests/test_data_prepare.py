"""prepare() and the `prefrec data prepare|stats` commands on a tiny MovieLens-100K written in the GroupLens format."""

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.data.prepare import prepare, read_filtered
from prefrec.errors import UserError
from prefrec.samples import read_jsonl


def write_tiny_ml100k(folder: Path, n_users=30, n_items=60, seed=0) -> Path:
    """u.data / u.item in the GroupLens layout, with a repeated (user, item) row."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genres = "|".join("0" * 19)
    (folder / "u.item").write_bytes("\n".join(
        f"{i}|Film {i}, The ({1960 + i % 40})|01-Jan-1995||http://x|{genres}" for i in range(1, n_items + 1)
    ).encode("latin-1") + b"\n")
    rows = []
    for u in range(1, n_users + 1):
        for j, i in enumerate(rng.sample(range(1, n_items + 1), rng.randint(15, 35))):
            rows.append(f"{u}\t{i}\t{rng.randint(1, 5)}\t{880000000 + j * 1000 + u}")
    rows.append(rows[0].rsplit("\t", 1)[0] + "\t999999999")  # the same (user, item) again, later
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    return folder


def raw_counts(folder: Path) -> dict:
    rows = [line.split("\t") for line in (folder / "u.data").read_text().splitlines()]
    return {"interactions": len(rows), "users": len({r[0] for r in rows}), "items": len({r[1] for r in rows})}


@pytest.mark.parametrize("task", ["pairwise", "candidates", "yesno"])
def test_prepare_writes_the_folder(tmp_path, task, capsys):
    src = write_tiny_ml100k(tmp_path / "ml")
    out = tmp_path / task
    stats = prepare("ml-100k", src, task, out, seed=3)
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "stats.json", "items.tsv", "interactions.tsv"):
        assert (out / name).is_file()
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["split_sizes"] == stats["split_sizes"]
    for key in ("dataset", "task", "seed", "protocol", "interactions", "users", "items", "users_eligible",
                "split_sizes", "requested_split_sizes", "filters", "warnings"):
        assert key in on_disk
    assert {k: on_disk[k] for k in ("interactions", "users", "items")} == raw_counts(src)
    assert on_disk["filters"][0]["name"] == "raw"
    assert on_disk["filters"][1]["interactions"] == raw_counts(src)["interactions"] - 1  # the repeat
    for s in ("train", "valid", "test"):
        samples = read_jsonl(out / f"{s}.jsonl")
        assert len(samples) == stats["split_sizes"][s]
        assert all(x.task == task and x.domain == "movies" for x in samples)
    items = (out / "items.tsv").read_text().splitlines()
    assert items[0] == "item_id\ttitle" and items[1] == "1\tThe Film 1 (1961)" and len(items) == 61
    inter = [line.split("\t") for line in (out / "interactions.tsv").read_text().splitlines()]
    assert inter[0] == ["user", "item", "rating", "timestamp", "split"]
    assert len(inter) - 1 == on_disk["filters"][1]["interactions"]
    if task != "candidates":  # user-disjoint: a user's rows carry the split of the user's sample
        user_split = {x.user: s for s in ("train", "valid", "test") for x in read_jsonl(out / f"{s}.jsonl")}
        assert all(r[4] == user_split.get(r[0], "unused") for r in inter[1:])
    if stats["warnings"]:  # a smaller split than requested is said on stderr too
        assert "warning: only" in capsys.readouterr().err


def test_prepare_defaults_are_the_papers(tmp_path):
    src = write_tiny_ml100k(tmp_path / "ml")
    p = prepare("ml-100k", src, "pairwise", tmp_path / "p", warn=lambda m: None)
    assert p["requested_split_sizes"] == {"train": 100, "valid": 100, "test": 1000}
    assert p["protocol"]["negatives"] == 1 and p["protocol"]["history_len"] == 40
    assert p["protocol"]["min_positives"] == 5 and p["protocol"]["min_negatives"] == 5
    c = prepare("ml-100k", src, "candidates", tmp_path / "c", warn=lambda m: None)
    assert c["protocol"]["n_candidates"] == 20 and c["protocol"]["negatives"] == 3
    assert c["protocol"]["history_len"] == 10 and c["protocol"]["min_history"] == 3
    y = prepare("ml-100k", src, "yesno", tmp_path / "y", warn=lambda m: None)
    assert y["protocol"]["history_len"] == 10


def test_read_filtered_drops_unrated_goodreads_rows(tmp_path):
    path = tmp_path / "goodreads_interactions.csv"
    path.write_text("user_id,book_id,is_read,rating,is_reviewed\n0,1,1,5,0\n0,2,1,0,0\n1,1,0,0,0\n1,3,1,2,0\n")
    log, filters, raw = read_filtered("goodreads", path)
    assert raw == {"interactions": 4, "users": 2, "items": 3}
    assert filters[1] == {"name": "rated (rating 0 means not rated)", "interactions": 2, "users": 2, "items": 2}


def test_prepare_rejects_bad_task_and_sizes(tmp_path):
    src = write_tiny_ml100k(tmp_path / "ml")
    with pytest.raises(UserError, match="--task 'ranking' is not known"):
        prepare("ml-100k", src, "ranking", tmp_path / "o")
    with pytest.raises(UserError, match="--train must be ≥ 0"):
        prepare("ml-100k", src, "pairwise", tmp_path / "o", n_train=-1)


# ---- CLI ---------------------------------------------------------------------------------------------------------

def test_cli_prepare_and_stats(tmp_path):
    src = write_tiny_ml100k(tmp_path / "ml")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--source", str(src), "--task",
                                 "pairwise", "--out", str(out), "--seed", "1", "--negatives", "2", "--train", "4",
                                 "--valid", "2", "--test", "all"])
    assert r.exit_code == 0, r.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["split_sizes"]["train"] == 4 and stats["split_sizes"]["valid"] == 2
    assert stats["split_sizes"]["test"] == stats["users_eligible"] - 6
    assert all(len(s.comparisons) == 2 for s in read_jsonl(out / "train.jsonl"))
    assert str(out / "train.jsonl") in r.output
    r = CliRunner().invoke(app, ["data", "stats", str(out)])
    assert r.exit_code == 0 and json.loads(r.output)["split_sizes"] == stats["split_sizes"]
    r = CliRunner().invoke(app, ["data", "stats", "--dataset", "ml-100k", "--source", str(src)])
    assert r.exit_code == 0 and json.loads(r.output)["interactions"] == raw_counts(src)["interactions"]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    src = write_tiny_ml100k(tmp_path / "ml")
    with open(src / "u.data", "a") as f:
        f.write("1\t1\tfive\t880000000\n")
    r = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--source", str(src), "--task",
                                 "pairwise", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "u.data:" in lines[0] and "field 'rating' is 'five'" in lines[0]
    assert "Traceback" not in r.output
    r = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--source", str(src), "--task",
                                 "pairwise", "--out", str(tmp_path / "o"), "--train", "many"])
    assert r.exit_code == 2 and "whole number or 'all'" in r.output


def test_prepare_out_naming_a_file_fails_before_the_work(tmp_path):
    """Issue 14 point 8: one line, exit 2, no FileExistsError traceback."""
    src = write_tiny_ml100k(tmp_path / "ml")
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        r = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--source", str(src),
                                     "--task", "pairwise", "--out", str(out)])
        assert r.exit_code == 2 and r.output.startswith("error: --out") and "is a file" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_prepare_with_every_split_empty_fails_with_the_reason(tmp_path):
    """Issue 14 point 5: all titles identical (pairwise) or a 10-item catalogue (candidates) -> exit 2, no files."""
    src = write_tiny_ml100k(tmp_path / "ml")
    lines = (src / "u.item").read_text(encoding="latin-1").splitlines()
    (src / "u.item").write_text("\n".join(ln.split("|", 2)[0] + "|Same Film (1990)|" + ln.split("|", 2)[2]
                                          for ln in lines) + "\n", encoding="latin-1")
    r = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--source", str(src), "--task",
                                 "pairwise", "--out", str(tmp_path / "o1")])
    assert r.exit_code == 2 and "no sample in any split" in r.output and "title" in r.output, r.output
    assert not (tmp_path / "o1" / "train.jsonl").exists()
    small = tmp_path / "small"  # 10 films: never 19 unseen negatives
    small.mkdir()
    (small / "u.item").write_text("".join(f"{i}|Film {i} (1990)|01-Jan-1995||http://x|0\n" for i in range(1, 11)))
    (small / "u.data").write_text("".join(f"{u}\t{i}\t{1 + (u + i) % 5}\t{880000000 + i}\n"
                                          for u in range(1, 13) for i in range(1, 9)))
    r = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--source", str(small), "--task",
                                 "candidates", "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "no sample in any split" in r.output and "19 items" in r.output, r.output


def write_tiny_lastfm(folder: Path, n_users=12, n_artists=40, seed=0) -> Path:
    """user_artists.dat sorted by user then artist id, as HetRec publishes it (no timestamps)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + "".join(
        f"{i}\tBand {i}\thttp://x\thttp://p\n" for i in range(1, n_artists + 1)))
    rows = [f"{u}\t{i}\t{rng.randint(1, 5000)}" for u in range(1, n_users + 1)
            for i in sorted(rng.sample(range(1, n_artists + 1), 25))]
    (folder / "user_artists.dat").write_text("userID\tartistID\tweight\n" + "\n".join(rows) + "\n")
    return folder


def test_lastfm_threshold_is_refused_and_the_order_is_said(tmp_path):
    """Issue 14 points 10 and 1: --threshold would be ignored on play counts: say so (exit 2). Without time the
    order is a seeded random one: stderr and stats.json say so, and --order-by file restores file order."""
    src = write_tiny_lastfm(tmp_path / "lfm")
    args = ["data", "prepare", "--dataset", "lastfm", "--source", str(src), "--task", "pairwise",
            "--train", "4", "--valid", "2", "--test", "2"]
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "o"), "--threshold", "4"])
    assert r.exit_code == 2 and "--threshold applies to star ratings" in r.output, r.output
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "no timestamps" in r.output  # the warning (CliRunner mixes stderr into output)
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert "seeded random order" in stats["protocol"]["history_order"]
    samples = read_jsonl(tmp_path / "o" / "train.jsonl")
    assert all("in no particular order" in s.prefix for s in samples)
    assert sum(s.history_items == sorted(s.history_items, key=int) for s in samples) == 0
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "f"), "--order-by", "file"])
    assert r.exit_code == 0 and "no timestamps" not in r.output, r.output
    stats = json.loads((tmp_path / "f" / "stats.json").read_text())
    assert stats["protocol"]["history_order"].startswith("file order")
    samples = read_jsonl(tmp_path / "f" / "train.jsonl")
    assert all("oldest first" in s.prefix and s.history_items == sorted(s.history_items, key=int) for s in samples)


def test_threshold_and_negative_below_options(tmp_path):
    """Point 10: --negative-below 3 is the papers' other reading; --threshold is refused where it is ignored."""
    src = write_tiny_ml100k(tmp_path / "ml")
    stats = prepare("ml-100k", src, "pairwise", tmp_path / "o", n_train=5, n_valid=2, n_test=2, negative_below=3,
                    min_neg=2, warn=lambda m: None)
    assert stats["protocol"]["negative"].startswith("rating < 3")
    with pytest.raises(UserError, match="--threshold applies to the pairwise and yesno"):
        prepare("ml-100k", src, "candidates", tmp_path / "c", threshold=4)
    with pytest.raises(UserError, match="--negative-below applies to the pairwise task"):
        prepare("ml-100k", src, "yesno", tmp_path / "y", negative_below=3)


# ---- issue 31: a prepared folder lands whole or not at all -------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_prepare_killed_midway_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    """A kill after train/valid/test of seed 1 are written must not leave them beside seed 0's stats.json."""
    from prefrec import io

    src = write_tiny_ml100k(tmp_path / "ml")
    out = tmp_path / "o"
    prepare("ml-100k", src, "pairwise", out, seed=0, warn=lambda m: None)
    before = _files(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "write_json", killed)  # stats.json is written last
    with pytest.raises(KeyboardInterrupt):
        prepare("ml-100k", src, "pairwise", out, seed=1, warn=lambda m: None)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml", "o"]  # no half-written folder beside it
    monkeypatch.undo()
    prepare("ml-100k", src, "pairwise", out, seed=1, warn=lambda m: None)  # its own earlier folder: replaced
    assert json.loads((out / "stats.json").read_text())["seed"] == 1


def test_prepare_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    src = write_tiny_ml100k(tmp_path / "ml")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"^--out .*mine holds files that `prefrec data prepare` did not write there.*\(notes\.txt\)"):
        prepare("ml-100k", src, "pairwise", mine, warn=lambda m: None)
    assert _files(mine) == {"notes.txt": b"keep me"}
    done = tmp_path / "done"
    prepare("ml-100k", src, "pairwise", done, warn=lambda m: None)
    (done / "notes.txt").write_text("added by hand")  # a prepared folder with the user's own file in it
    with pytest.raises(UserError, match=r"notes\.txt"):
        prepare("ml-100k", src, "pairwise", done, seed=5, warn=lambda m: None)
    assert (done / "notes.txt").is_file() and json.loads((done / "stats.json").read_text())["seed"] == 0


def test_prepare_refuses_to_replace_a_prepared_file_the_user_edited(tmp_path):
    # ownership was judged by file name: a prepared folder whose train.jsonl the user had edited was replaced (#43)
    src = write_tiny_ml100k(tmp_path / "ml")
    done = tmp_path / "done"
    prepare("ml-100k", src, "pairwise", done, warn=lambda m: None)
    edited = (done / "train.jsonl").read_text().splitlines(keepends=True)[:1]
    (done / "train.jsonl").write_text("".join(edited))
    with pytest.raises(UserError, match=r"changed since \(train\.jsonl\)"):
        prepare("ml-100k", src, "pairwise", done, seed=5, warn=lambda m: None)
    assert (done / "train.jsonl").read_text() == "".join(edited)


def test_readers_refuse_a_half_written_or_mixed_prepared_folder(tmp_path):
    from prefrec import io
    from prefrec.samples import write_samples

    src = write_tiny_ml100k(tmp_path / "ml")
    out = tmp_path / "o"
    stats = prepare("ml-100k", src, "pairwise", out, n_train=5, n_valid=2, n_test=5, warn=lambda m: None)
    assert len(read_jsonl(out / "train.jsonl")) == stats["split_sizes"]["train"]
    (out / io.INCOMPLETE).write_text("")
    with pytest.raises(UserError, match=r"incomplete"):
        read_jsonl(out / "train.jsonl")
    (out / io.INCOMPLETE).unlink()
    assert stats["split_sizes"]["test"] == 5
    write_samples(out / "test.jsonl", read_jsonl(out / "test.jsonl")[:2])  # another run's (smaller) test split
    with pytest.raises(UserError, match=rf"test\.jsonl: 2 samples, but .*stats\.json says {stats['split_sizes']['test']}"):
        read_jsonl(out / "test.jsonl")


@pytest.mark.parametrize("flag, value", [("threshold", float("nan")), ("threshold", -1.0),
                                         ("threshold", float("inf")), ("negative_below", float("nan"))])
def test_thresholds_must_be_finite_ratings(tmp_path, flag, value):
    """--threshold nan labelled every yes/no sample "No." and -1 every one "Yes." (exit 0); now one clear error."""
    src = write_tiny_ml100k(tmp_path / "ml")
    task = "pairwise" if flag == "negative_below" else "yesno"
    with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} .*expected a finite rating"):
        prepare("ml-100k", src, task, tmp_path / "o", **{flag: value})
    assert not (tmp_path / "o").exists()


def test_a_movie_id_twice_in_u_item_names_both_lines(tmp_path):
    src = write_tiny_ml100k(tmp_path / "ml")
    lines = (src / "u.item").read_bytes().splitlines()
    (src / "u.item").write_bytes(b"\n".join(lines[:5] + [lines[2].replace(b"Film 3,", b"Other film,")] + lines[5:])
                                 + b"\n")
    with pytest.raises(UserError, match=r"u\.item:6: movie id 3 appears again \(first on line 3\)"):
        prepare("ml-100k", src, "pairwise", tmp_path / "o")


def test_cli_train_order_reaches_the_candidates_protocol_and_is_refused_elsewhere(tmp_path):
    src = write_tiny_ml100k(tmp_path / "ml")
    base = ["data", "prepare", "--dataset", "ml-100k", "--source", str(src), "--train-order", "round-robin"]
    r = CliRunner().invoke(app, base + ["--task", "candidates", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "stats.json").read_text())["protocol"]["train_order"] == "round-robin"
    train = read_jsonl(tmp_path / "c" / "train.jsonl")
    n_users = len({s.user for s in train})
    assert len({s.user for s in train[:n_users]}) == n_users
    r = CliRunner().invoke(app, base + ["--task", "pairwise", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "--train-order applies to the candidates task" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "p").exists()
