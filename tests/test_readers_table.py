"""data/readers: one module per source and one READERS row each; read() dispatches through the table."""

import pytest

from prefrec.data import readers as R
from prefrec.data.readers import Interaction, Log
from prefrec.errors import UserError


def test_datasets_are_the_table():
    assert R.DATASETS == tuple(R.READERS) == ("ml-100k", "ml-1m", "amazon-2014", "amazon-2018", "lastfm",
                                              "goodreads", "recbole")
    assert {d for d, r in R.READERS.items() if r.order_column} == {"ml-100k", "recbole", "lastfm", "goodreads"}


def test_a_new_reader_is_one_row(monkeypatch, tmp_path):
    """The worked example of docs/dev/extending.md: a source read through read() once its row is in READERS."""
    def read_toy(source, time_column=None):
        return Log(name="toy", domain="items", interactions=[Interaction("u1", "i1", 5.0, 1)], titles={"i1": ""})

    monkeypatch.setitem(R.READERS, "toy", R.Reader(lambda source, column: read_toy(source, time_column=column)))
    (tmp_path / "toy.txt").write_text("x")
    log = R.read("toy", tmp_path / "toy.txt", domain="games")
    assert log.domain == "games" and log.titles == {"i1": "i1"}  # read()'s common steps ran (blank title -> id)
    with pytest.raises(UserError, match="--order-by COLUMN applies"):
        R.read("toy", tmp_path / "toy.txt", order_by="ts")
    with pytest.raises(UserError, match="is not known") as e:
        R.read("nope", tmp_path / "toy.txt")
    assert "did you mean" not in str(e.value)  # nothing is near "nope"
    with pytest.raises(UserError, match="did you mean 'ml-100k'"):
        R.read("ml100k", tmp_path / "toy.txt")
