"""Fuzzing the samples reader (prefrec.samples.read_jsonl, issue #43 point 5): every stage reads samples through it.

Each example writes a few random valid samples with write_samples, then reads them back whole or after one mutation
(a field set to any JSON value, removed or added, a line doubled, bytes changed, a number of 5000 digits, an escaped
lone surrogate, nesting deeper than the recursion limit). The properties:
- valid samples read back exactly, every field as written (defaults filled in);
- whatever the file holds, read_jsonl raises ValueError (UserError is one) with one line naming the file and line,
  or returns samples that are each what their line says (defaults filled in) and are usable: fields of their types,
  unique ids, chosen never among the rejected, text that a UTF-8 file can hold; never another exception;
- reading writes nothing.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from fuzzing import fuzz, one_line, snapshot
from hypothesis import example, given
from hypothesis import strategies as st

from prefrec.samples import Sample, has_lone_surrogate, read_jsonl, write_samples

TEXT = st.text(max_size=12)
WORD = st.text(min_size=1, max_size=8)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=6)
DEFAULTS = {f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(Sample) if f.default is not MISSING or f.default_factory is not MISSING}


@st.composite
def comparisons(draw) -> dict:
    chosen = draw(WORD)
    return {"question": draw(TEXT), "chosen": chosen,
            "rejected": draw(st.lists(WORD.filter(lambda r: r != chosen), min_size=1, max_size=3))}


@st.composite
def samples(draw) -> list[dict]:
    ids = draw(st.lists(WORD, min_size=1, max_size=4, unique=True))
    out = []
    for sid in ids:
        d = {"id": sid, "task": draw(st.sampled_from(["pairwise", "candidates", "yesno"])), "domain": draw(WORD),
             "prefix": draw(TEXT), "comparisons": draw(st.lists(comparisons(), min_size=1, max_size=3))}
        optional = {"user": st.none() | TEXT, "history": st.lists(TEXT, max_size=3), "target": st.none() | TEXT,
                    "candidates": st.lists(TEXT, max_size=3), "label": st.sampled_from([None, 0, 1]),
                    "candidate_ratings": st.lists(st.none() | st.floats(-5, 5) | st.integers(-5, 5), max_size=3)}
        for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
            d[name] = draw(optional[name])
        out.append(d)
    return out


def expected(d: dict) -> dict:
    return {**DEFAULTS, **d}


def _usable(got: list[Sample]) -> None:
    assert len({s.id for s in got}) == len(got)
    for s in got:
        assert all(isinstance(getattr(s, n), str) for n in ("id", "task", "domain", "prefix", "answer_format"))
        assert s.label in (None, 0, 1) and not isinstance(s.label, bool)
        for n in ("history", "history_items", "candidates", "candidate_items"):
            assert all(isinstance(x, str) for x in getattr(s, n))
        for c in s.comparisons:
            assert isinstance(c.question, str) and isinstance(c.chosen, str) and c.chosen and c.rejected
            assert all(isinstance(r, str) and r for r in c.rejected) and c.chosen not in c.rejected
        assert not has_lone_surrogate(s.to_dict())


def read_outcome(path: Path) -> list[Sample] | None:
    """The samples, or None after a one-line ValueError naming the file and line; nothing written either way."""
    before = snapshot(path.parent)
    try:
        got = read_jsonl(path)
    except ValueError as e:
        assert str(path) in one_line(e), str(e)
        got = None
    else:
        _usable(got)
    assert snapshot(path.parent) == before
    return got


FIELDS = sorted({f.name for f in fields(Sample)})
WRONG = [5, -1, 2, 1.5, float("nan"), True, None, "", "x", [], [""], ["x", 1], [None], [[]], {}, {"a": 1}, [1e400]]
NASTY_LINES = ['{"id": ' + "9" * 5000 + "}", '{"id": "a", "task": "t", "domain": "d", "prefix": "\\ud800", '
               '"comparisons": [{"question": "", "chosen": "a", "rejected": ["b"]}]}', "[" * 100_000, "\ufeff{}",
               '{"id": "x"', "null", "[]", '"text"', "NaN"]


def _edit(d: dict, data) -> None:
    """Set, remove or add one field of a sample's JSON object (or of one of its comparisons) in place."""
    target, names = d, FIELDS
    if data.draw(st.booleans(), label="in a comparison") and isinstance(d.get("comparisons"), list) and d["comparisons"]:
        target, names = data.draw(st.sampled_from(d["comparisons"]), label="comparison"), ["question", "chosen",
                                                                                            "rejected"]
        if not isinstance(target, dict):
            return
    name = data.draw(st.sampled_from(names) | TEXT, label="name")
    if data.draw(st.booleans(), label="remove") and name in target:
        del target[name]
    else:
        target[name] = data.draw(JSON | st.sampled_from([[], [""], "", [1], [None]]), label="value")


def mutate(raw: bytes, data) -> bytes:
    lines = raw.split(b"\n")[:-1]
    j = data.draw(st.integers(0, len(lines) - 1), label="line")
    kind = data.draw(st.sampled_from(["edit", "double", "drop", "nasty", "bytes"]), label="kind")
    if kind == "edit":
        d = json.loads(lines[j])
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            _edit(d, data)
        lines[j] = json.dumps(d, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode("utf-8", "surrogatepass")
    elif kind == "double":
        lines.insert(data.draw(st.integers(0, len(lines)), label="at"), lines[j])
    elif kind == "drop":
        del lines[j]
    elif kind == "nasty":
        lines[j] = data.draw(st.sampled_from(NASTY_LINES), label="nasty").encode("utf-8")
    else:
        at = data.draw(st.integers(0, len(raw)), label="at")
        return raw[:at] + data.draw(st.binary(max_size=6), label="insert") + raw[at + data.draw(st.integers(0, 6)):]
    return b"".join(x + b"\n" for x in lines)


def _lines_say(raw: bytes) -> list[dict]:
    """What a file's non-blank lines say, as the samples they describe (defaults filled in)."""
    return [expected(json.loads(x)) for x in raw.decode("utf-8").split("\n") if x.strip()]


@fuzz(60)
@given(written=samples())
def test_valid_samples_read_back_exactly(written):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        path = Path(tmp) / "train.jsonl"
        write_samples(path, [Sample.from_dict(d) for d in written])
        got = read_outcome(path)
    assert [s.to_dict() for s in got] == [expected(d) for d in written]


@fuzz(300)
@given(written=samples(), data=st.data())
@example(written=[{"id": "a", "task": "t", "domain": "d", "prefix": "", "comparisons": [
    {"question": "", "chosen": "x", "rejected": ["y"], "score": 1}]}], data=None).via("a comparison's unknown key")
def test_any_mutation_gives_one_clear_error_or_what_the_lines_say(written, data):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        path = Path(tmp) / "train.jsonl"
        raw = b"".join(json.dumps(d, ensure_ascii=False).encode() + b"\n" for d in written)
        path.write_bytes(mutate(raw, data) if data is not None else raw)
        got = read_outcome(path)
        if got is not None:
            assert [s.to_dict() for s in got] == _lines_say(path.read_bytes())


@pytest.mark.parametrize("name", FIELDS + ["comparisons[].question", "comparisons[].chosen", "comparisons[].rejected"])
@fuzz(25)
@given(written=samples(), value=st.one_of(st.just("<another's>"), st.sampled_from(WRONG), JSON), data=st.data())
def test_each_field_set_to_anything_gives_one_clear_error_or_what_the_lines_say(name, written, value, data):
    """One field of one sample (or of one of its comparisons) set to any value: to another type, or to another's
    value (the id of another sample, the chosen answer of a comparison to one of its rejected ones)."""
    d = data.draw(st.sampled_from(written), label="sample")
    if name.startswith("comparisons[]."):
        d, name = data.draw(st.sampled_from(d["comparisons"]), label="comparison"), name.split(".")[1]
    others = [x["id"] for x in written if x is not d]
    if value == "<another's>" and (name == "chosen" or others):
        value = d["rejected"][0] if name == "chosen" else data.draw(st.sampled_from(others), label="other")
    d[name] = value
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in written))
        got = read_outcome(path)
        if got is not None:
            assert [s.to_dict() for s in got] == _lines_say(path.read_bytes())


@pytest.mark.parametrize("line, message", [
    ('{"id": ' + "9" * 5000 + "}", r"train\.jsonl:1: not valid JSON \(Exceeds the limit \(4300 digits\)"),
    (NASTY_LINES[1], r"train\.jsonl:1: a string holds a lone surrogate")])
def test_a_huge_number_or_a_lone_surrogate_is_one_clear_error(tmp_path, line, message):
    """The fuzzer's finds: a bare ValueError without file or line, and a sample that no file could be written with."""
    path = tmp_path / "train.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)
