"""Answer formats: how a prompt labels its options and how the model answers. Each task keeps a table of its own
formats (`FORMATS` in its module); this module has the row type and the labels the shipped rows share.

The papers answer with titles: the pairwise task (DMPO) with both titles, preferred first ("Heat (1995), Casino
(1995)"), the candidates task (S-DPO) with one title. A 135M model then spends its SFT gradient on ~30 copied
tokens per answer and one deciding token. The other formats put the decision in one short answer:

    title    the papers' answers (the default; the yes/no task's title row answers "Yes."/"No.")
    letter   pairwise: the two items shown as options A and B; the answer is the preferred option's letter
    number   candidates: a numbered list 1..N; the answer is the chosen candidate's number

A row holds the wording of its task's question, the label shown before option i (None: options are named by their
titles), and how a generated answer is read back to an option (None: titles, through prefrec.scoring.matching).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable, Sequence


def letter(i: int) -> str:
    if not 0 <= i < len(string.ascii_uppercase):
        raise ValueError(f"the letter format has 26 options; option {i} has no letter")
    return string.ascii_uppercase[i]


def number(i: int) -> str:
    return str(i + 1)


def read_label(labels: Callable[[int], str], pattern: str) -> Callable[[str, int], int | None]:
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
    question: Callable  # the task's question in this format (its signature is the task's)
    label: Callable[[int], str] | None = None  # the label shown before option i (None: options are named by title)
    read: Callable[[str, int], int | None] | None = None  # answer text, number of options -> option (None: titles)

    def response(self, i: int, title: str) -> str:
        """The response that names option i (the title itself in the title format)."""
        return title if self.label is None else self.label(i)

    def responses(self, titles: Sequence[str]) -> list[str]:
        return [self.response(i, t) for i, t in enumerate(titles)]
