"""The one sample format that every stage of prefrec reads and writes.

A prepared dataset is a folder of JSON-lines files (`train.jsonl`, `valid.jsonl`, `test.jsonl`), one `Sample` per
line. Data protocols and importers produce samples; the trainer, the evaluator, the baselines and the explainer
consume them. Keeping the format in one small file means a reader can follow data -> metric without a map.

A sample is a shared prompt prefix (system role, user history) plus one or more *comparisons*. Each comparison adds
its own question to the prefix and lists one chosen response and one or more rejected ones:

    prompt_i = sample.prefix + comparison_i.question
    pairwise (DMPO):  k comparisons, one per negative: "… rank A and B" -> chosen "A, B", rejected ["B, A"]
    candidates (S-DPO): 1 comparison: "… pick one of 20" -> chosen target title, rejected k of the 19 others
    yesno (TALLRec):  1 comparison: "… will the user like T?" -> chosen "Yes."/"No.", rejected the other answer

Splitting the prompt into prefix and question lets the packer share the history across the k pairwise prompts
(docs/packing.md). The remaining fields carry what evaluation and the ID-based baselines need.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

from prefrec import io
from prefrec.errors import UserError


@dataclass
class Comparison:
    question: str  # appended to Sample.prefix to form this comparison's prompt ("" if the prefix is the prompt)
    chosen: str  # the preferred response text
    rejected: list[str]  # one or more dispreferred responses to the same prompt


@dataclass
class Sample:
    id: str
    task: str  # a name in prefrec.tasks.TASKS (checked where the task is looked up)
    domain: str  # movies | games | music | books | ...
    prefix: str  # shared beginning of every comparison's prompt (user message, before any chat template)
    comparisons: list[Comparison]
    user: str | None = None
    history: list[str] = field(default_factory=list)  # titles, oldest first, as shown in the prompt
    history_items: list[str] = field(default_factory=list)  # raw item ids of `history` (empty for imported prompts)
    # candidates task: every title shown, in prompt order; pairwise: [positive, negative_1, ..., negative_k];
    # yesno: [target]
    candidates: list[str] = field(default_factory=list)
    candidate_items: list[str] = field(default_factory=list)  # raw item ids of `candidates` (may be empty)
    # the user's rating of each candidate (None: not rated, e.g. a sampled negative); graded labels for listwise
    # losses (PL, LiPO, InfoNCA). Empty when the log has no ratings or the samples were imported
    candidate_ratings: list[float | None] = field(default_factory=list)
    target: str | None = None  # the positive title (pairwise, candidates) or the asked title (yesno)
    target_item: str | None = None
    label: int | None = None  # yesno: 1 = the user liked the target, 0 = not
    # how the prompt labels its options and the model answers: a row of the task's FORMATS (title, letter, number)
    answer_format: str = "title"

    def prompt(self, i: int = 0) -> str:
        """Full prompt text of comparison i."""
        return self.prefix + self.comparisons[i].question

    @property
    def k(self) -> int:
        """Number of negatives this sample trains with: its rejected responses over every comparison (pairwise: one
        per comparison; candidates: the rejected titles)."""
        return sum(len(c.rejected) for c in self.comparisons)

    def to_dict(self) -> dict:
        # built by hand: dataclasses.asdict deep-copies every list, a third of the time of writing a dataset
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["comparisons"] = [{"question": c.question, "chosen": c.chosen, "rejected": c.rejected}
                            for c in self.comparisons]
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "sample") -> "Sample":
        """Build a Sample from a JSON object, with one clear error naming `where` and the bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
        for name in ("id", "task", "domain", "prefix", "comparisons"):
            if name not in d:
                raise ValueError(f"{where}: missing field '{name}'")
        _check_types(d, where)
        comps = d["comparisons"]
        if not isinstance(comps, list) or not comps:
            raise ValueError(f"{where}: field 'comparisons' must be a non-empty list")
        parsed = []
        for j, c in enumerate(comps):
            if not isinstance(c, dict) or not {"question", "chosen", "rejected"} <= set(c):
                raise ValueError(f"{where}: comparisons[{j}] needs 'question', 'chosen' and 'rejected'")
            extra = sorted(set(c) - {"question", "chosen", "rejected"})
            if extra:  # else dropped unread, where the sample's own unknown fields are refused
                raise ValueError(f"{where}: comparisons[{j}]: unknown field(s) {extra}; expected 'question', "
                                 "'chosen' and 'rejected'")
            rej = c["rejected"]
            if not isinstance(rej, list) or not rej or not all(isinstance(r, str) and r for r in rej):
                raise ValueError(f"{where}: comparisons[{j}].rejected must be a non-empty list of non-empty strings")
            if not isinstance(c["chosen"], str) or not c["chosen"]:
                raise ValueError(f"{where}: comparisons[{j}].chosen must be a non-empty string")
            if not isinstance(c["question"], str):
                raise ValueError(f"{where}: comparisons[{j}].question must be a string, got {type(c['question']).__name__}")
            if c["chosen"] in rej:  # a preference between an answer and itself: its margin is 0 whatever is learnt
                raise ValueError(f"{where}: comparisons[{j}]: the chosen response {c['chosen']!r:.60} is also a "
                                 "rejected one; a comparison needs two different answers")
            parsed.append(Comparison(question=c["question"], chosen=c["chosen"], rejected=list(rej)))
        rest = {k: v for k, v in d.items() if k != "comparisons"}
        return cls(comparisons=parsed, **rest)


# field -> (what it must be, test): checked on read so that a bad file fails with its line, before any model loads
_FIELD_TYPES = {
    "id": ("a string", lambda v: isinstance(v, str)),
    "task": ("a string", lambda v: isinstance(v, str)),
    "answer_format": ("a string", lambda v: isinstance(v, str)),
    "domain": ("a string", lambda v: isinstance(v, str)),
    "prefix": ("a string", lambda v: isinstance(v, str)),
    "user": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "target": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "target_item": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "label": ("0, 1 or null", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v in (0, 1))),
    **{name: ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
       for name in ("history", "history_items", "candidates", "candidate_items")},
    "candidate_ratings": ("a list of finite numbers or nulls", lambda v: isinstance(v, list) and all(
        x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)) for x in v)),
}


def _check_types(d: dict, where: str) -> None:
    for name, (want, ok) in _FIELD_TYPES.items():
        if name in d and not ok(d[name]):
            raise ValueError(f"{where}: field '{name}' must be {want}, got {type(d[name]).__name__} {d[name]!r:.60}")


LONE_SURROGATE = ("a string holds a lone surrogate (an escaped \\ud800-\\udfff without its pair), which is not "
                  "Unicode text")


def has_lone_surrogate(value) -> bool:
    """Whether parsed JSON holds a lone surrogate: json.loads takes "\\ud800" alone, but no UTF-8 file (nor a
    tokenizer) can; only an escape makes one, so callers test values whose text has a backslash-u first."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def write_samples(path: str | os.PathLike, samples: Iterable[Sample]) -> int:
    """Write samples atomically (temp file, then rename) so a crash never leaves a half-written file."""
    return io.write_jsonl(path, (s.to_dict() for s in samples))


def iter_jsonl(path: str | os.PathLike) -> Iterator[Sample]:
    """Samples of a JSON-lines file, one per non-blank line; ValueError naming the file and line on bad input,
    and on a sample id used twice (scores, bootstrap groups and per-sample files are keyed by it)."""
    path = Path(path)
    seen: dict[str, int] = {}
    for lineno, sample in _numbered(path):
        if sample.id in seen:
            raise ValueError(f"{path}:{lineno}: sample id {sample.id!r} is already used on line {seen[sample.id]}; "
                             "ids must be unique in a file")
        seen[sample.id] = lineno
        yield sample


def _numbered(path: Path) -> Iterator[tuple[int, Sample]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not valid UTF-8 text (byte {e.start + 1}); samples files are UTF-8 "
                                 "JSON lines") from None
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise ValueError(f"{where}: {io.NESTED_TOO_DEEP}") from None
            except ValueError as e:  # an integer of more than 4300 digits
                raise ValueError(f"{where}: not valid JSON ({str(e).split(':')[0]})") from None
            if "\\u" in line and has_lone_surrogate(d):
                raise ValueError(f"{where}: {LONE_SURROGATE}")
            yield lineno, Sample.from_dict(d, where=where)


def read_jsonl(path: str | os.PathLike) -> list[Sample]:
    """Every sample of a file. Inside a prepared folder the folder must be complete (io.check_complete) and a split
    file must hold the number of samples the folder's stats.json gives it: a split of another run does not pass."""
    path = Path(path)
    io.check_complete(path.parent)
    samples = list(iter_jsonl(path))
    _check_split_size(path, len(samples))
    return samples


def _check_split_size(path: Path, n: int) -> None:
    stats = path.parent / "stats.json"
    if path.name not in ("train.jsonl", "valid.jsonl", "test.jsonl") or not stats.is_file():
        return
    try:
        sizes = json.loads(stats.read_text(encoding="utf-8")).get("split_sizes")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable stats.json is its readers' error to report
    want = sizes.get(path.stem) if isinstance(sizes, dict) else None
    if isinstance(want, int) and want != n:
        raise UserError(f"{path}: {n} samples, but {stats} says {want}: the folder mixes files of two runs (or one "
                        "was edited); prepare it again")

