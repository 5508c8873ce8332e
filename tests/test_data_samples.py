"""Bad samples files fail on read with one line naming the file, the line and the field (issue 14, points 8 and 9)."""

import json

import pytest
from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.samples import Comparison, Sample, read_jsonl, write_samples


def good_sample(**change) -> dict:
    d = Sample(id="s1", task="candidates", domain="movies", prefix="History: A (1990).\n",
               comparisons=[Comparison(question="Pick one: B, C, D.", chosen="B", rejected=["C"])],
               candidates=["B", "C", "D"], target="B").to_dict()
    d.update(change)
    return d


@pytest.mark.parametrize("field, value", [("prefix", 123), ("prefix", ["a"]), ("id", 7), ("history", "A, B"),
                                          ("candidates", [1, 2]), ("target", 3), ("label", "yes"), ("user", 12)])
def test_wrong_field_types_name_the_line_and_field(tmp_path, field, value):
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(good_sample()) + "\n" + json.dumps(good_sample(**{field: value})) + "\n")
    with pytest.raises(ValueError, match=rf"test.jsonl:2: field '{field}' must be"):
        read_jsonl(f)


def test_question_must_be_a_string(tmp_path):
    d = good_sample()
    d["comparisons"][0]["question"] = None
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(d) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl:1: comparisons\[0\].question must be a string"):
        read_jsonl(f)


def test_non_utf8_file_names_file_and_line(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_bytes(json.dumps(good_sample()).encode() + b"\n" + json.dumps(good_sample(prefix="Mis\u00e9rables"))
                  .encode("utf-8").replace(b"\\u00e9", "é".encode("latin-1")) + b"\n")
    with pytest.raises(ValueError, match=r"test.jsonl:2: not valid UTF-8"):
        read_jsonl(f)


def test_good_samples_still_round_trip(tmp_path):
    s = Sample.from_dict(good_sample(label=None, user="u1", history=["A (1990)"]))
    write_samples(tmp_path / "x.jsonl", [s])
    assert read_jsonl(tmp_path / "x.jsonl") == [s]


def test_a_sample_id_used_twice_is_refused_naming_both_lines(tmp_path):
    """#43: two samples with one id were accepted; scores and per-sample files are keyed by it."""
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(good_sample()) + "\n" + json.dumps(good_sample(id="s2")) + "\n\n"
                 + json.dumps(good_sample()) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl:4: sample id 's1' is already used on line 1"):
        read_jsonl(f)


def test_a_chosen_answer_among_its_rejected_ones_is_refused(tmp_path):
    """#43: eval accepted a comparison whose chosen answer was also rejected (a margin of 0 whatever the model)."""
    d = good_sample()
    d["comparisons"][0]["rejected"] = ["C", "B"]
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(d) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl:1: comparisons\[0\]: the chosen response 'B' is also a "
                                         "rejected one"):
        read_jsonl(f)


@pytest.mark.parametrize("bad", ["prefix", "utf8", "empty-candidates", "same-id", "chosen-rejected"])
def test_eval_cli_refuses_bad_samples_before_loading_a_model(tmp_path, bad):
    """One line, exit 2, no traceback; the model name is bogus so loading it would fail differently."""
    f = tmp_path / "test.jsonl"
    if bad == "prefix":
        f.write_text(json.dumps(good_sample(prefix={"a": 1})) + "\n")
    elif bad == "utf8":
        f.write_bytes(b'{"id": "s1", "prefix": "\xe9"}\n')
    elif bad == "same-id":
        f.write_text(json.dumps(good_sample()) + "\n" + json.dumps(good_sample()) + "\n")
    elif bad == "chosen-rejected":
        f.write_text(json.dumps(good_sample(comparisons=[{"question": "q", "chosen": "B", "rejected": ["B"]}]))
                     + "\n")
    else:
        f.write_text(json.dumps(good_sample(candidates=[])) + "\n")
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "no-such-model"), "--samples", str(f),
                                 "--out", str(tmp_path / "ev")])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    msg = r.output.strip()
    assert msg.startswith("error: ") and str(f) in msg and len(msg.splitlines()) == 1
    if bad == "empty-candidates":
        assert "sample s1" in msg and "'candidates'" in msg


def test_eval_out_naming_a_file_fails_before_any_work(tmp_path):
    """#43: `eval --out FILE` ran the whole evaluation, then failed with a 58-line traceback."""
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(good_sample()) + "\n")
    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "no-such-model"), "--samples", str(f), "--out", str(taken)])
    assert r.exit_code == 2 and "is a file, not a folder" in r.output and r.output.count("\n") == 1, r.output
    assert taken.read_text() == "mine"
