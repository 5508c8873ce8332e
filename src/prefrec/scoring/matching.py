"""Which candidate did a generated answer name? Never ambiguous (docs/evaluate.md).

The S-DPO code counts a hit when the target title is a substring of the answer; 25 of its test prompts have a
candidate whose title contains another's ("Star Wars" inside "Star Wars: Episode V"), so one answer can "hit" two
candidates. Here an answer names at most one candidate:

1. normalised exact match: the answer, normalised, equals exactly one candidate's normalised title;
2. else candidate in answer: candidates whose normalised title occurs in the answer as a whole-word phrase. An
   occurrence that lies inside an occurrence of a longer matching candidate does not count (an answer
   "Star Wars: Episode V" names Episode V, not also "Star Wars"); it is a match only when exactly one candidate is
   left, and no match at all when two or more are (ambiguous);
3. else answer in candidate: the normalised answer occurs as a whole-word phrase in exactly one candidate's title
   (an answer "Star Wars" when the titles carry years, "Star Wars (1977)").
Otherwise the answer is invalid.

Normalisation: Unicode NFKC, case-folded, HTML entities unescaped, every run of non-alphanumeric characters turned
into one space, trimmed. Matching on words means "Up" never matches inside "Pickup".
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Sequence

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """'  Star Wars: Episode V (1980)!' -> 'star wars episode v 1980'."""
    text = unicodedata.normalize("NFKC", html.unescape(text)).casefold()
    return _NON_WORD.sub(" ", text).strip()


def _spans(phrase: str, text: str) -> list[tuple[int, int]]:
    """Character spans of whole-word occurrences of `phrase` in `text` (both normalised, words separated by one
    space), overlapping occurrences included."""
    if not phrase:
        return []
    padded, needle = f" {text} ", f" {phrase} "
    out, start = [], padded.find(needle)
    while start != -1:
        out.append((start, start + len(phrase)))  # span in `text` coordinates (padding shifts by one, needle too)
        start = padded.find(needle, start + 1)
    return out


def match(answer: str, candidates: Sequence[str]) -> tuple[int | None, str]:
    """(index of the named candidate or None, rule): rule is "exact", "contains" (candidate in answer),
    "within" (answer in candidate), "ambiguous" or "none"."""
    a = normalize(answer)
    cands = [normalize(c) for c in candidates]
    if not a:
        return None, "none"

    exact = [i for i, c in enumerate(cands) if c == a]
    if len(exact) == 1:
        return exact[0], "exact"
    if len(exact) > 1:
        # two candidates that only differ in punctuation or case: the raw text may still tell them apart
        raw = [i for i in exact if candidates[i].strip() == answer.strip()]
        return (raw[0], "exact") if len(raw) == 1 else (None, "ambiguous")

    spans = {i: _spans(c, a) for i, c in enumerate(cands)}
    spans = {i: s for i, s in spans.items() if s}
    if spans:
        def covered(i: int, span: tuple[int, int]) -> bool:
            return any(len(cands[j]) > len(cands[i]) and s0 <= span[0] and span[1] <= s1
                       for j, sj in spans.items() if j != i for s0, s1 in sj)

        named = [i for i, s in spans.items() if any(not covered(i, sp) for sp in s)]
        if len(named) == 1:
            return named[0], "contains"
        return None, "ambiguous"

    within = [i for i, c in enumerate(cands) if _spans(a, c)]
    if len(within) == 1:
        return within[0], "within"
    if len(within) > 1:
        return None, "ambiguous"
    return None, "none"


def match_answer(answer: str, candidates: Sequence[str]) -> int | None:
    """Index of the one candidate the answer names, or None when it names none or more than one."""
    return match(answer, candidates)[0]
