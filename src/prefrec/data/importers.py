"""Import other projects' preference files as prefrec samples, reporting every row that cannot be used and why.

Accepted containers: a JSON array, JSON lines, or JSON objects simply concatenated (the DMPO release's `*_old.json`
files: parsed with `json.JSONDecoder.raw_decode` in a loop). Accepted record layouts:

- LLaMA-Factory alpaca pairwise: {"instruction", "input", "output": [chosen, rejected]}; the prompt is instruction
  + "\\n" + input (input left out when empty), as LLaMA-Factory joins them. `output: [chosen, r1, …, rk]` is read
  as k rejected responses.
- TRL preference: {"prompt", "chosen", "rejected"}; `rejected` may be a list (the k-rejected generalisation).
  Conversational TRL rows (lists of {"role", "content"} messages) are accepted when the prompt is one user message
  (optionally after a system message) and each answer one assistant message.
- prefrec's own Sample JSON (a "comparisons" field), passed through.

DMPO's released prompts (BZX667/DMPO `data/*.json`) are alpaca rows whose items are marked ` <Title:X> `
(ML-1M's old eval file adds `, Genre:A|B`). Such rows become real pairwise samples:
- prefix = the instruction up to and including the history sentence, question = the "Rank the likelihood …"
  sentence, so the packer can share the history across a user's comparisons;
- the markup is replaced by our quoted titles (prompts.title_list), titles normalised like every other title
  (HTML entities unescaped: the Amazon titles keep `&amp;`, `&nbsp;`; "Bug's Life, A (1998)" → "A Bug's Life
  (1998)"), genre annotations dropped (counted in the report);
- chosen = format_ordering(positive, negative), rejected = [format_ordering(negative, positive)]; rows whose output
  is a string (the SFT and ML-1M eval files: the string is the correct ordering) get the swapped ordering as their
  rejected response;
- layout of `rec_*_dpo_ranking_k.json` (checked on every file of the release): k consecutive rows per user, with the
  same history and the same positive and one negative each (ml_1m: 100 users × k rows; Amazon Game/Movie: 100
  users × k rows for k ≥ 2, and 200 users × 1 row for k = 1). Consecutive rows with the same prefix and the same
  positive are grouped into one Sample with k comparisons.
A row is rejected (with its index or line and the reason) when a field is missing or of the wrong type, the output
does not name exactly two titles, those titles are not the two in the question, or a rejected answer is not the
chosen ordering reversed. A file that is not a list of records (LLaMA-Factory's `dataset_info.json` registry) is
rejected as a whole, with the reason.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from prefrec import io, prompts
from prefrec.data.titles import normalise_title, unescape
from prefrec.errors import UserError
from prefrec.samples import Comparison, Sample, write_jsonl

_MARK = re.compile(r"<Title:([^<>]*)>")
_MARK_RUN = re.compile(r"(?:\s*<Title:[^<>]*>)+\s*")
_GENRE = re.compile(r",\s*Genre:[^,<>]*$")
_QUESTION = "Rank the likelihood"


class Rejected(Exception):
    """A row that cannot be imported; the message is the reason."""


@dataclass
class FileReport:
    file: str
    format: str = "unknown"
    rows: int = 0  # records found in the file
    rows_loaded: int = 0
    samples: int = 0
    comparisons: int = 0
    rejected: list[dict] = field(default_factory=list)  # {"where", "reason"}
    notes: list[str] = field(default_factory=list)
    output: str | None = None
    reason: str | None = None  # why the whole file was rejected


# ---------------------------------------------------------------------------------------------------------------
# Containers


def read_import_records(path: Path, report: FileReport) -> list[tuple[str, object]]:
    """(where, value) for every record, in file order; a part that is not valid JSON comes as (where, Rejected).
    A file that holds no records at all raises UserError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    if not text.strip():
        raise UserError(f"{path}: empty file")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # not one JSON document; or one too deep: read value by value
        value = None
    else:
        if isinstance(value, list):
            report.format = "JSON array"
            return [(f"{path.name}[{i}]", v) for i, v in enumerate(value)]
        registry_keys = {"file_name", "hf_hub_url", "ms_hub_url", "script_url", "om_hub_url"}
        if isinstance(value, dict) and value and all(isinstance(v, dict) and registry_keys & set(v)
                                                     for v in value.values()):
            raise UserError(f"{path}: a LLaMA-Factory dataset registry (dataset_info.json: {len(value)} entries "
                            "naming data files), not preference records; import the files it names instead")
        if isinstance(value, dict) and not ({"instruction", "prompt", "comparisons"} & set(value)):
            raise UserError(f"{path}: a JSON object with keys {sorted(value)[:6]}; expected a list of records, "
                            "JSON lines or concatenated objects")
        report.format = "one JSON object"
        return [(f"{path.name}[0]", value)]
    # JSON lines, or objects concatenated without separators (DMPO *_old.json): decode one value at a time
    dec = json.JSONDecoder()
    out: list[tuple[str, object]] = []
    pos, n_lines_format, n_ok = 0, True, 0
    line, line_pos = 1, 0  # line number of line_pos, advanced incrementally (counting from 0 each time is quadratic)
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        try:
            value, end = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as e:
            why = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else None
            out.append((f"{path.name}:{line}", Rejected(f"not valid JSON ({why})" if why else io.NESTED_TOO_DEEP)))
            nxt = text.find("\n", pos)  # resume at the next line, as JSON lines allow
            if nxt < 0:
                break
            pos = nxt + 1
            continue
        j = end
        while j < len(text) and text[j] in " \t\r":
            j += 1
        if j < len(text) and text[j] != "\n":
            n_lines_format = False  # another value follows on the same line: concatenated objects
        out.append((f"{path.name}:{line} (record {n_ok})", value))
        n_ok += 1
        pos = end
    report.format = "JSON lines" if n_lines_format else "concatenated JSON objects"
    return out


# ---------------------------------------------------------------------------------------------------------------
# Record layouts


def _text(rec: dict, key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise Rejected(f"field '{key}' is {type(v).__name__ if key in rec else 'missing'}; expected a string")
    return v


def _messages(v, role: str, key: str) -> str:
    """Conversational TRL: the content of the single `role` message (a leading system message is folded in)."""
    if isinstance(v, str):
        return v
    if not isinstance(v, list) or not all(isinstance(m, dict) and "content" in m for m in v):
        raise Rejected(f"field '{key}' is neither a string nor a list of messages")
    msgs = [m for m in v if m.get("role") != "system"]
    system = [m["content"] for m in v if m.get("role") == "system"]
    if len(msgs) != 1 or msgs[0].get("role", role) != role:
        raise Rejected(f"field '{key}' has {len(msgs)} non-system messages; only one {role} message is supported")
    return "\n".join(system + [str(msgs[0]["content"])])


@functools.lru_cache(maxsize=65536)
def _clean(raw: str) -> tuple[str, bool]:
    """(normalised title, whether a ', Genre:…' annotation was dropped); cached: histories repeat titles a lot."""
    raw = unescape(raw)
    genre = bool(_GENRE.search(raw))
    return normalise_title(_GENRE.sub("", raw) if genre else raw), genre


def _clean_title(raw: str, notes: dict) -> str:
    title, genre = _clean(raw)
    if genre:
        notes["genre"] = notes.get("genre", 0) + 1
    return title


def _render(text: str, notes: dict) -> str:
    """Replace each run of ` <Title:…> ` marks by quoted, comma-separated titles; tidy the spacing."""
    def run(m: re.Match) -> str:
        titles = [_clean_title(t, notes) for t in _MARK.findall(m.group(0))]
        return " " + prompts.title_list(titles) + " "
    text = _MARK_RUN.sub(run, unescape(text))
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([.,;:?!])", r"\1", text)


def _domain_of(text: str, default: str | None) -> str:
    t = text.lower()
    for key, dom in (("video game", "games"), ("movie", "movies"), ("film", "movies"), ("music", "music"),
                     ("artist", "music"), ("book", "books")):
        if key in t:
            return dom
    return default or "items"


def _ordering(text: str, notes: dict) -> tuple[str, str]:
    titles = [_clean_title(t, notes) for t in _MARK.findall(text)]
    if len(titles) != 2:
        raise Rejected(f"the answer {text.strip()[:80]!r} names {len(titles)} <Title:…> items; expected 2")
    if not all(titles):
        raise Rejected("the answer has an empty title")
    return titles[0], titles[1]


def _dmpo_sample(rec: dict, sid: str, domain: str | None, notes: dict) -> Sample:
    """One DMPO row -> a pairwise Sample with one comparison (grouping happens later)."""
    instruction = _text(rec, "instruction")
    if rec.get("input"):
        instruction += "\n" + _text(rec, "input")
    cut = instruction.rfind(_QUESTION)
    if cut < 0:
        raise Rejected(f"no '{_QUESTION} …' question in the instruction")
    head, ask = instruction[:cut], instruction[cut:]
    history = [_clean_title(t, notes) for t in _MARK.findall(head)]
    shown = [_clean_title(t, notes) for t in _MARK.findall(ask)]
    if len(shown) != 2:
        raise Rejected(f"the question names {len(shown)} <Title:…> items; expected 2")
    out = rec.get("output")
    if isinstance(out, str):
        pos, neg = _ordering(out, notes)
        rejected = [(neg, pos)]
    elif isinstance(out, list) and len(out) >= 2 and all(isinstance(o, str) for o in out):
        pos, neg = _ordering(out[0], notes)
        rejected = [_ordering(o, notes) for o in out[1:]]
        if any(r != (neg, pos) for r in rejected):
            raise Rejected("a rejected answer is not the chosen ordering reversed")
    else:
        raise Rejected("field 'output' must be a string (the correct ordering) or a list [chosen, rejected, …] of strings")
    if {pos, neg} != set(shown) or pos == neg:
        raise Rejected(f"the answer ranks {pos!r} and {neg!r}, but the question shows {shown}")
    dom = _domain_of(head, domain)
    return Sample(id=sid, task="pairwise", domain=dom, prefix=_render(head, notes) + "\n",
                  comparisons=[Comparison(question=_render(ask, notes), chosen=prompts.format_ordering(pos, neg),
                                          rejected=[prompts.format_ordering(n, p) for n, p in rejected])],
                  history=history, candidates=[pos, neg], target=pos)


def _generic_sample(prompt: str, chosen: str, rejected: list[str], sid: str, domain: str | None) -> Sample:
    if not prompt.strip():
        raise Rejected("empty prompt")
    if not chosen.strip():
        raise Rejected("empty chosen response")
    if not rejected or not all(isinstance(r, str) and r.strip() for r in rejected):
        raise Rejected("the rejected responses must be non-empty strings")
    if chosen in rejected:
        raise Rejected("the chosen response is also listed as rejected")
    return Sample(id=sid, task="pairwise", domain=domain or "items", prefix=prompt,
                  comparisons=[Comparison(question="", chosen=chosen, rejected=list(rejected))])


def record_to_sample(rec, sid: str, domain: str | None, notes: dict) -> tuple[str, Sample]:
    """(layout name, Sample) for one record, or raise Rejected with the reason."""
    if not isinstance(rec, dict):
        raise Rejected(f"a JSON {type(rec).__name__}, expected an object")
    if "comparisons" in rec:
        try:
            return "prefrec", Sample.from_dict(rec, where=sid)
        except ValueError as e:
            raise Rejected(str(e)) from None
    if "instruction" in rec:
        if "output" not in rec:
            raise Rejected("field 'output' is missing (an alpaca row needs instruction, input, output)")
        text = str(rec.get("instruction", "")) + str(rec.get("input", ""))
        if "<Title:" in text:
            return "DMPO (LLaMA-Factory alpaca, <Title:…> items)", _dmpo_sample(rec, sid, domain, notes)
        prompt = _text(rec, "instruction") + ("\n" + _text(rec, "input") if rec.get("input") else "")
        out = rec["output"]
        if isinstance(out, str):
            raise Rejected("field 'output' is a single string (an SFT row): there is no rejected response, and it "
                           "is not a <Title:…> ordering whose reverse could serve as one")
        if not isinstance(out, list) or len(out) < 2:
            raise Rejected("field 'output' must be a list [chosen, rejected, …] of at least 2 strings")
        if not all(isinstance(o, str) for o in out):
            raise Rejected("field 'output' holds a non-string")
        return "LLaMA-Factory alpaca pairwise", _generic_sample(prompt, out[0], out[1:], sid, domain)
    if "prompt" in rec and "chosen" in rec and "rejected" in rec:
        prompt = _messages(rec["prompt"], "user", "prompt")
        chosen = _messages(rec["chosen"], "assistant", "chosen")
        rej = rec["rejected"]
        if isinstance(rej, list) and rej and all(isinstance(r, (str, list)) for r in rej) and not (
                isinstance(rej[0], dict)):
            rejected = [_messages(r, "assistant", "rejected") for r in rej]
            layout = "k-rejected (prompt/chosen/rejected list)"
        else:
            rejected = [_messages(rej, "assistant", "rejected")]
            layout = "TRL prompt/chosen/rejected"
        return layout, _generic_sample(prompt, chosen, rejected, sid, domain)
    if "chosen" in rec and "rejected" in rec:
        raise Rejected("no 'prompt' field: TRL's implicit-prompt layout (the prompt inside chosen/rejected) is not "
                       "supported; split the prompt out first")
    raise Rejected(f"unknown record layout with keys {sorted(rec)[:8]}; expected instruction/input/output "
                   "(alpaca), prompt/chosen/rejected (TRL) or a prefrec sample")


def _group(samples: list[Sample]) -> list[Sample]:
    """Merge consecutive DMPO samples with the same prefix and positive into one sample with k comparisons."""
    out: list[Sample] = []
    for s in samples:
        last = out[-1] if out else None
        if (last is not None and s.task == "pairwise" and last.history and last.prefix == s.prefix
                and last.target == s.target and s.target is not None):
            last.comparisons.extend(s.comparisons)
            last.candidates.extend(c for c in s.candidates if c != s.target)
        else:
            out.append(s)
    return out


def import_file(path: str | Path, *, domain: str | None = None) -> tuple[list[Sample], FileReport]:
    """Samples from one peer file + its report. A file-level problem raises UserError (caught by import_files)."""
    path = Path(path)
    report = FileReport(file=str(path))
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    records = read_import_records(path, report)
    report.rows = len(records)
    notes: dict = {}
    layouts: dict[str, int] = {}
    loaded: list[Sample] = []
    for i, (where, rec) in enumerate(records):
        try:
            if isinstance(rec, Rejected):
                raise rec
            layout, sample = record_to_sample(rec, f"{path.stem}-{i}", domain, notes)
        except Rejected as e:
            report.rejected.append({"where": where, "reason": str(e)})
            continue
        layouts[layout] = layouts.get(layout, 0) + 1
        loaded.append(sample)
    samples = _group(loaded)
    report.rows_loaded = len(loaded)
    report.samples = len(samples)
    report.comparisons = sum(len(s.comparisons) for s in samples)
    if layouts:
        report.format += "; " + ", ".join(f"{k} ×{v}" for k, v in layouts.items())
    if len(samples) < len(loaded):
        ks = sorted({len(s.comparisons) for s in samples})
        report.notes.append(f"{len(loaded)} rows grouped into {len(samples)} samples (consecutive rows with the same "
                            f"history and positive; comparisons per sample: {ks})")
    if notes.get("genre"):
        report.notes.append(f"', Genre:…' annotations dropped from {notes['genre']} title mentions")
    return samples, report


def _expand(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix in (".json", ".jsonl")))
        else:
            out.append(p)
    return out


def _destinations(files: list[Path], out: Path) -> list[Path]:
    """OUT/<stem>.jsonl for each input; two inputs with one name (a/x.json, b/x.jsonl) are refused, since the
    second would silently overwrite the first."""
    dests: dict[Path, Path] = {}
    for f in files:
        dest = out / f"{f.stem}.jsonl"
        first = dests.setdefault(dest, f)
        if first.resolve() != f.resolve():
            raise UserError(f"{first} and {f} would both be written to {dest}; import them into different --out "
                            "folders, or rename one")
    return [out / f"{f.stem}.jsonl" for f in files]


def import_files(paths: list[str | Path], out: str | Path, *, domain: str | None = None) -> dict:
    """Import every file (folders are expanded to their .json/.jsonl files) into OUT/<name>.jsonl and write
    OUT/import_report.json. A file that cannot be read at all is reported as rejected, with the reason. The report
    is written last (an earlier one is removed first), so a folder with a report holds that import's outputs."""
    out = Path(out)
    io.check_out_folder(out)
    files = _expand([Path(p) for p in paths])
    if not files:
        raise UserError(f"no .json/.jsonl files in {[str(p) for p in paths]}")
    dests = _destinations(files, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "import_report.json").unlink(missing_ok=True)
    reports = []
    for f, dest in zip(files, dests):
        try:
            samples, report = import_file(f, domain=domain)
        except UserError as e:
            samples, report = [], FileReport(file=str(f), reason=str(e))
        if samples:
            write_jsonl(dest, samples)
            report.output = str(dest)
        else:
            first = f" (first: {report.rejected[0]['where']}: {report.rejected[0]['reason']})" if report.rejected else ""
            report.reason = report.reason or "no row could be imported" + first
            if dest.is_file():  # an earlier import's output would sit beside a report saying REJECTED
                dest.unlink()
                report.notes.append(f"removed {dest.name} left by an earlier import of this file")
        reports.append(report)
    result = {"files": [r.__dict__ for r in reports],
              "total": {"files": len(reports), "files_rejected": sum(r.output is None for r in reports),
                        "samples": sum(r.samples for r in reports),
                        "rows_rejected": sum(len(r.rejected) for r in reports)}}
    io.write_json(out / "import_report.json", result)
    return result
