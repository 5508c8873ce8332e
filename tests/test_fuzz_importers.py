"""Fuzzing the importers of other projects' preference files (prefrec.data.importers.import_file, issue #43 point 5).

Each example writes records in one container (a JSON array, JSON lines, objects concatenated, one object) and imports
the file. The records are well-formed TRL / alpaca rows, random JSON built from the layouts' own keys (so that every
layout's checks are reached, not only "unknown layout"), or a well-formed file after one byte-level change. The
properties:
- well-formed rows import exactly: prompt, chosen and rejected as written, every row counted as loaded;
- whatever the file holds, import_file raises UserError with one line naming the file, or returns samples and a
  report that add up (rows = loaded + refused, each refusal one line with where it was) and samples that every
  later stage can read: written with write_samples, read_jsonl reads them back unchanged (so no duplicate ids, no
  chosen among the rejected, no text a UTF-8 file cannot hold); never another exception;
- importing a file writes nothing (import_files writes; the command-line suite fuzzes it).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import pytest
from fuzzing import fuzz, one_line, snapshot
from hypothesis import example, given
from hypothesis import strategies as st

from prefrec.data.importers import import_file
from prefrec.errors import UserError
from prefrec.samples import read_jsonl, write_samples

WORDS = st.text(string.ascii_letters + string.digits + " .,:?!'é", min_size=1, max_size=16).filter(str.strip)
KEYS = ["instruction", "input", "output", "prompt", "chosen", "rejected", "conversations", "messages", "role",
        "content", "from", "value", "system", "comparisons", "preferred_output", "non_preferred_output", "kto_tag",
        "completion", "label", "images", "id", "task", "domain", "prefix", "question", "tools", "type", "text"]
LEAVES = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | WORDS
          | st.sampled_from(["user", "assistant", "human", "gpt", "system", "tool", "pairwise", "text",
                             "Rank the likelihood <Title:A> <Title:B>", "<Title:A>, <Title:B>", "\ud800",
                             int("9" * 30)]))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5), max_leaves=12)
RECORD = st.dictionaries(st.sampled_from(KEYS), JSON, min_size=1, max_size=5)


@st.composite
def trl_rows(draw) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        chosen = draw(WORDS)
        rejected = draw(st.lists(WORDS.filter(lambda r: r != chosen), min_size=1, max_size=3))
        row = {"prompt": draw(WORDS), "chosen": chosen, "rejected": rejected if len(rejected) > 1 else rejected[0]}
        if draw(st.booleans()):  # the same row in LLaMA-Factory's alpaca layout
            row = {"instruction": row["prompt"], "input": "", "output": [chosen, *rejected]}
        rows.append(row)
    return rows


def container(records: list, kind: str) -> str:
    if kind == "array":
        return json.dumps(records)
    if kind == "one object" and len(records) == 1:
        return json.dumps(records[0], indent=1)
    sep = "\n" if kind == "lines" else ""
    return sep.join(json.dumps(r) for r in records) + "\n"


CONTAINERS = st.sampled_from(["array", "lines", "concatenated", "one object"])


def import_outcome(path: Path):
    """(samples, report), or None after a one-line UserError naming the file; nothing written either way. What
    was imported adds up and reads back through read_jsonl unchanged."""
    before = snapshot(path.parent)
    try:
        got, report = import_file(path)
    except UserError as e:
        assert str(path) in one_line(e), str(e)
        return None
    finally:
        assert snapshot(path.parent) == before
    assert report.rows == report.rows_loaded + len(report.rejected)
    assert report.samples == len(got) and report.comparisons == sum(len(s.comparisons) for s in got)
    for r in report.rejected:
        assert r["where"].startswith(path.name) and one_line(Exception(r["reason"]))
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        out = Path(tmp) / "imported.jsonl"
        write_samples(out, got)
        assert [s.to_dict() for s in read_jsonl(out)] == [s.to_dict() for s in got]
    return got, report


@fuzz(60)
@given(rows=trl_rows(), kind=CONTAINERS)
def test_well_formed_rows_import_exactly(rows, kind):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        path = Path(tmp) / "peer.json"
        path.write_text(container(rows, kind))
        got, report = import_outcome(path)
    assert report.rejected == [] and report.rows_loaded == len(rows)
    want = [(r.get("prompt", r.get("instruction")), r.get("chosen", (r.get("output") or [None])[0]),
             r.get("rejected", (r.get("output") or [None])[1:])) for r in rows]
    want = [(p, c, rej if isinstance(rej, list) else [rej]) for p, c, rej in want]
    assert [(s.prompt(0), s.comparisons[0].chosen, s.comparisons[0].rejected) for s in got] == want


@fuzz(300)
@given(records=st.lists(RECORD | JSON, min_size=1, max_size=4), kind=CONTAINERS)
@example(records=[{"id": "a", "task": "pairwise", "domain": "d", "prefix": "p",
                   "comparisons": [{"question": "", "chosen": "x", "rejected": ["y"]}]}] * 2, kind="lines")
@example(records=[{"prompt": "p\ud800", "chosen": "x", "rejected": "y"}], kind="lines")
def test_any_records_give_one_clear_error_or_samples_every_stage_reads(records, kind):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        path = Path(tmp) / "peer.jsonl"
        path.write_text(container(records, kind))
        import_outcome(path)


@fuzz(150)
@given(rows=trl_rows(), kind=CONTAINERS, data=st.data())
def test_a_changed_byte_gives_one_clear_error_or_samples_every_stage_reads(rows, kind, data):
    raw = container(rows, kind).encode()
    at = data.draw(st.integers(0, len(raw)), label="at")
    new = raw[:at] + data.draw(st.binary(max_size=4), label="insert") + raw[at + data.draw(st.integers(0, 4)):]
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        path = Path(tmp) / "peer.json"
        path.write_bytes(new)
        import_outcome(path)


@pytest.mark.parametrize("text, reason", [
    ('{"prompt": "p", "chosen": "x", "rejected": ' + "9" * 5000 + "}\n", "not valid JSON (Exceeds the limit (4300"),
    ('[{"prompt": "p", "chosen": "x", "rejected": ' + "9" * 5000 + "}]\n", "not valid JSON (Exceeds the limit (4300"),
    ('{"prompt": "p\\ud800", "chosen": "x", "rejected": "y"}\n{"prompt": "q", "chosen": "x", "rejected": "y"}\n',
     "a string holds a lone surrogate")])
def test_a_huge_number_or_a_lone_surrogate_is_a_refused_row(tmp_path, text, reason):
    """The fuzzer's finds: a bare ValueError (a traceback in `prefrec data import`), and a row imported that
    write_samples could not write (UnicodeEncodeError, after the files before it were written)."""
    path = tmp_path / "peer.jsonl"
    path.write_text(text)
    got, report = import_outcome(path)
    assert report.rejected and report.rejected[0]["reason"].startswith(reason), report.rejected
