"""Answer formats: how a prompt labels its options and how the model answers (one row per format).

The papers answer with titles: the pairwise task (DMPO) with both titles, preferred first ("Heat (1995), Casino
(1995)"), the candidates task (S-DPO) with one title. A 135M model then spends its SFT gradient on ~30 copied
tokens per answer and one deciding token. The other formats put the decision in one short answer:

    title    the papers' answers (the default)
    letter   pairwise: the two items shown as options A and B; the answer is the preferred option's letter
    number   candidates: a numbered list 1..N; the answer is the chosen candidate's number

Each row says which tasks it applies to, the label shown before option i in the prompt, the response that names
option i (what training, likelihood ranking and explain score), and how a generated answer is matched back to an
option (the title format goes through prefrec.scoring.matching, the others read their label). The yes/no task has
its own answer ("Yes."/"No.") and no formats.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable, Sequence

TITLE, LETTER, NUMBER = "title", "letter", "number"


def _letter(i: int) -> str:
    if not 0 <= i < len(string.ascii_uppercase):
        raise ValueError(f"the letter format has 26 options; option {i} has no letter")
    return string.ascii_uppercase[i]


def _number(i: int) -> str:
    return str(i + 1)


def _read_label(labels: Callable[[int], str], pattern: str) -> Callable[[str, int], int | None]:
    """A matcher for labelled options: the first label-like token of the answer that names one of the n options
    ("B", "B.", "Option B" for letters; "7", "7." for numbers; "I think B" reads B, not the pronoun)."""
    rx = re.compile(pattern)

    def read(answer: str, n: int) -> int | None:
        index = {labels(i): i for i in range(n)}
        for m in rx.finditer(answer):
            if m.group(1).upper() in index:
                return index[m.group(1).upper()]
        return None
    return read


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    tasks: tuple[str, ...]
    label: Callable[[int], str] | None  # the label shown before option i (None: options are named by title)
    read: Callable[[str, int], int | None] | None  # answer text, number of options -> option index (None: titles)

    def response(self, i: int, title: str) -> str:
        """The response that names option i (the title itself in the title format)."""
        return title if self.label is None else self.label(i)

    def responses(self, titles: Sequence[str]) -> list[str]:
        return [self.response(i, t) for i, t in enumerate(titles)]


FORMATS: dict[str, AnswerFormat] = {row.name: row for row in (
    AnswerFormat(TITLE, ("pairwise", "candidates"), None, None),
    AnswerFormat(LETTER, ("pairwise",), _letter, _read_label(_letter, r"\b([A-Za-z])\b")),
    AnswerFormat(NUMBER, ("candidates",), _number, _read_label(_number, r"(?<![\d.])(\d{1,3})(?![\d])")),
)}


def answer_format(name: str, task: str | None = None) -> AnswerFormat:
    """The row of a format name (ValueError naming the choices, or a format that does not apply to `task`)."""
    if name not in FORMATS:
        raise ValueError(f"answer format {name!r} is not known; expected one of {sorted(FORMATS)}")
    row = FORMATS[name]
    if task is not None and task not in row.tasks:
        fits = [f for f, r in FORMATS.items() if task in r.tasks]
        raise ValueError(f"answer format {name!r} does not apply to the {task} task; it takes {fits or 'none'}")
    return row


def formats_for(task: str) -> list[str]:
    return [name for name, row in FORMATS.items() if task in row.tasks]
