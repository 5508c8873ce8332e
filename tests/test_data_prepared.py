"""prefrec.data.prepared: the one reader of a prepared folder's splits and stats.json."""

import pytest

from prefrec.data.prepared import read_split, read_stats, split_file
from prefrec.errors import UserError
from prefrec.samples import Comparison, Sample, write_samples


def _sample(i):
    return Sample(id=f"s{i}", task="pairwise", domain="movies", prefix="P\n",
                  comparisons=[Comparison("q", "A", ["B"])])


def test_splits_files_and_missing_ones(tmp_path):
    write_samples(tmp_path / "train.jsonl", [_sample(0), _sample(1)])
    assert [s.id for s in read_split(tmp_path, "train")] == ["s0", "s1"]
    assert read_split(tmp_path / "train.jsonl") == read_split(tmp_path, "train")
    assert read_split(tmp_path, "valid", required=False) == []
    with pytest.raises(UserError, match=r"no test\.jsonl \(found: train\.jsonl\)"):
        read_split(tmp_path, "test")
    with pytest.raises(UserError, match="no such samples folder or file"):
        split_file(tmp_path / "nope")


def test_bad_files_name_themselves(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match=r"test\.jsonl:1: missing field"):
        read_split(tmp_path)
    assert read_stats(tmp_path) == {}
    (tmp_path / "stats.json").write_text("{oops")
    with pytest.raises(UserError, match=r"stats\.json: not valid JSON"):
        read_stats(tmp_path)


def test_a_split_is_a_name_inside_the_folder_not_a_path(tmp_path):
    """`--split ../other/test` used to read another folder's test.jsonl silently."""
    (tmp_path / "a").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "test.jsonl").write_text("")
    for bad in ("../other/test", "..", "sub/test", ""):
        with pytest.raises(UserError, match="expected the name of a split"):
            split_file(tmp_path / "a", bad)
