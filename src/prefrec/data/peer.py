"""Evaluate on other projects' test files: turn peer-format records into prefrec Samples.

Two formats, read from .json (a list of objects), .jsonl (one object per line), .csv/.tsv (header row) or a Hugging
Face datasets save_to_disk folder (optional `datasets` package; a DatasetDict's "test" split):

alpaca yes/no (TALLRec, LLaMA-Factory "alpaca" layout)
    {"instruction": "...", "input": "User Preference: ...\\nWhether the user will like the target movie \\"T\\"?",
     "output": "Yes."}
    prompt = instruction + "\\n" + input (LLaMA-Factory joins them this way; an empty input is left out); the
    answer must be Yes/No (case and a final full stop ignored) and gives the label; responses "Yes." and "No.".

candidates (S-DPO / LLaRA: {"historyList": "A::B::C", "itemList": [...20 titles...], "trueSelection": "B"})
    history, candidate list and target in fields whose names are given (defaults: the S-DPO names above). A list may
    be a JSON list, a Python-literal string ("['A', 'B']", parsed with ast.literal_eval, never eval) or a string
    joined with "::" (a string without "::" is a one-element list). The prompt is prefrec's own candidates prompt
    (prefrec.tasks.candidates.title_question), so a model trained by prefrec sees the wording it was trained on.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path
from typing import Iterator

from prefrec import io
from prefrec.data.importers import is_datasets_folder, require_datasets
from prefrec.errors import UserError
from prefrec import prompts
from prefrec.tasks import candidates, yesno
from prefrec.samples import Comparison, Sample



def read_peer_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of a .json / .jsonl / .csv / .tsv file or a Hugging Face datasets
    save_to_disk folder (a Dataset; its "test" split for a DatasetDict); `where` names file and record."""
    path = Path(path)
    if is_datasets_folder(path):
        yield from _dataset_rows(path)
        return
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for lineno, row in enumerate(reader, 2):
                yield f"{path}:{lineno}", row
        return
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl" or (suffix != ".json" and not text.lstrip().startswith("[")):
        for lineno, rec in io.json_lines(text.splitlines(), str(path), dict, "{where}: not valid JSON ({msg})",
                                         "{where}: expected a JSON object"):
            yield f"{path}:{lineno}", rec
        return
    data = io.json_value(text, str(path), list, "{where}: not valid JSON ({msg} at line {line}); expected a list of "
                         "objects", "{where}: expected a JSON list of objects, got {type}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise UserError(f"{path}: record {i}: expected a JSON object")
        yield f"{path}: record {i}", rec


def _dataset_rows(path: Path) -> Iterator[tuple[str, dict]]:
    data = require_datasets(f"{path}: a Hugging Face datasets folder").load_from_disk(str(path))
    if not hasattr(data, "column_names") or isinstance(data.column_names, dict):  # a DatasetDict
        if "test" not in data:
            raise UserError(f"{path}: a DatasetDict without a 'test' split ({sorted(data)}); save the split to "
                            "evaluate on its own")
        data = data["test"]
    for i, row in enumerate(data):
        yield f"{path}: row {i}", row


def parse_list(value, where: str, field: str) -> list[str]:
    """A list of titles from a JSON list, a Python-literal string or a '::'-joined string."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if s[0] in "[(":
            try:
                items = json.loads(s)
            except json.JSONDecodeError:
                try:
                    items = ast.literal_eval(s)  # literals only: no code runs
                except (ValueError, SyntaxError):
                    raise UserError(f"{where}: field '{field}' looks like a list but is neither JSON nor a "
                                    f"Python literal: {s[:80]!r}") from None
            if not isinstance(items, (list, tuple)):
                raise UserError(f"{where}: field '{field}' must be a list")
        else:
            items = s.split("::")
    else:
        raise UserError(f"{where}: field '{field}' must be a list or a string, got {type(value).__name__}")
    out = []
    for x in items:
        if not isinstance(x, (str, int, float)) or isinstance(x, bool):
            raise UserError(f"{where}: field '{field}' must hold titles (strings), got {x!r}")
        x = str(x).strip()
        if x:
            out.append(x)
    return out


def _field(rec: dict, name: str, where: str):
    if name not in rec:
        raise UserError(f"{where}: missing field '{name}' (fields: {', '.join(sorted(map(str, rec))) or 'none'})")
    return rec[name]


# ---- alpaca yes/no ----

_TARGET = re.compile(r'"([^"]+)"\s*\??\s*$')


def load_alpaca_yesno(path: str | Path, *, domain: str = "movies", limit: int | None = None) -> list[Sample]:
    """Samples (task "yesno") from an alpaca-format file with instruction/input/output "Yes."/"No."."""
    out = []
    for i, (where, rec) in enumerate(read_peer_records(path)):
        if limit is not None and len(out) >= limit:
            break
        instruction = str(_field(rec, "instruction", where) or "").strip()
        inp = str(rec.get("input") or "").strip()
        answer = _field(rec, "output", where)
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
        if not isinstance(answer, str) or answer.strip().lower().rstrip(".!") not in ("yes", "no"):
            raise UserError(f"{where}: field 'output' must be \"Yes.\" or \"No.\", got {answer!r}")
        yes = answer.strip().lower().startswith("yes")
        prompt = "\n".join(x for x in (instruction, inp) if x)
        if not prompt:
            raise UserError(f"{where}: empty instruction and input")
        m = _TARGET.search(inp or instruction)
        target = m.group(1) if m else None
        chosen, other = ("Yes.", "No.") if yes else ("No.", "Yes.")
        out.append(Sample(id=str(rec.get("id", i)), task=yesno.TASK.name, domain=domain, prefix=prompt,
                          comparisons=[Comparison(question="", chosen=chosen, rejected=[other])],
                          candidates=[target] if target else [], target=target, label=int(yes)))
    if not out:
        raise UserError(f"{path}: no records")
    return out


# ---- candidates ----

def load_candidates(path: str | Path, *, history_field: str = "historyList", candidates_field: str = "itemList",
                    target_field: str = "trueSelection", domain: str = "movies", limit: int | None = None,
                    k: int | None = None) -> list[Sample]:
    """Samples (task "candidates") from records with history, candidate list and target in the named fields.
    The rejected responses are the other candidates (the first k of them if k is given)."""
    out = []
    for i, (where, rec) in enumerate(read_peer_records(path)):
        if limit is not None and len(out) >= limit:
            break
        history = parse_list(_field(rec, history_field, where), where, history_field)
        cands = parse_list(_field(rec, candidates_field, where), where, candidates_field)
        target = _field(rec, target_field, where)
        if isinstance(target, list) and len(target) == 1:
            target = target[0]
        if not isinstance(target, (str, int)) or not str(target).strip():
            raise UserError(f"{where}: field '{target_field}' must be one title, got {target!r}")
        target = str(target).strip()
        if len(cands) < 2:
            raise UserError(f"{where}: field '{candidates_field}' needs at least 2 candidates, got {len(cands)}")
        if target not in cands:
            raise UserError(f"{where}: target {target!r} (field '{target_field}') is not in the candidate list")
        if len(set(cands)) != len(cands):
            raise UserError(f"{where}: field '{candidates_field}' lists a title twice")
        negatives = [c for c in cands if c != target]
        prefix, question = prompts.history_prefix(domain, history), candidates.title_question(domain, cands)
        out.append(Sample(id=str(rec.get("id", i)), task=candidates.TASK.name, domain=domain, prefix=prefix,
                          comparisons=[Comparison(question=question, chosen=target,
                                                  rejected=negatives[:k] if k else negatives)],
                          history=history, candidates=cands, target=target))
    if not out:
        raise UserError(f"{path}: no records")
    return out


def load_peer(path: str | Path, fmt: str, **kw) -> list[Sample]:
    if fmt not in FORMATS:
        raise UserError(f"peer format {fmt!r}: expected one of {tuple(FORMATS)}")
    return FORMATS[fmt](path, **kw)


# peer file layouts: the loader of each
FORMATS = {
    "alpaca-yesno": lambda path, **kw: load_alpaca_yesno(path, **{k: v for k, v in kw.items() if k in ("domain", "limit")}),
    "candidates": load_candidates,
}
