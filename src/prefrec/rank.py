"""Rank candidate titles for one user: the likelihood ranking of the candidates task (DESIGN §6), for new users.

The prompt is the candidates-task prompt the models are trained and evaluated on (prefrec.prompts: role + the
user's history, then "which one of these N will the user watch next? Candidates: …"), and every candidate title is
scored as the answer to it,

    score(c)           = logp(c | x) = Σ_t log π(c_t | x, c_<t)      (title tokens + the end-of-turn token)
    score_per_token(c) = score(c) / n_tokens(c)

all in ONE packed forward pass (prefrec.packing: the prompt once, each title attending only to the prompt and to
itself). Candidates are sorted by `score` (the quantity evaluation ranks by), ties keeping input order. The
length-normalised score is reported too, because summed log-probs favour short titles; use it to re-sort if you
prefer.

Titles in, titles out: the titles you give come back exactly (minus surrounding whitespace), duplicates removed with
the first occurrence kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefrec.errors import UserError

_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def clean_titles(titles, field: str) -> list[str]:
    """Strip, validate (non-empty strings without control characters) and deduplicate, keeping first occurrences."""
    if isinstance(titles, str) or not isinstance(titles, (list, tuple)):
        raise UserError(f"{field}: expected a list of titles, got {type(titles).__name__}")
    out: dict[str, None] = {}
    for i, t in enumerate(titles):
        if not isinstance(t, str):
            raise UserError(f"{field}[{i}]: expected a string, got {type(t).__name__}")
        t = t.strip()
        if not t:
            raise UserError(f"{field}[{i}]: empty title")
        bad = _CONTROL.intersection(t)
        if bad:
            raise UserError(f"{field}[{i}]: title contains control character(s) "
                            f"{sorted(repr(c) for c in bad)} (newlines and tabs are not allowed in titles)")
        out.setdefault(t, None)
    if not out:
        raise UserError(f"{field}: no titles given")
    return list(out)


def build_prompt(history: list[str], candidates: list[str], domain: str = "movies") -> tuple[str, str]:
    """(prefix, question) of the candidates-task prompt, exactly as the data protocol writes it."""
    from prefrec import prompts

    if domain not in prompts.DOMAINS:
        raise UserError(f"domain {domain!r}: expected one of {sorted(prompts.DOMAINS)}")
    return prompts.history_prefix(domain, history), prompts.candidates_question(domain, candidates)


def rank(model, tokenizer, history: list[str], candidates: list[str], *, domain: str = "movies",
         top: int | None = None, max_history: int | None = None) -> list[dict]:
    """Rank `candidates` for a user who interacted with `history` (oldest first).

    Returns [{"title", "score", "score_per_token", "n_tokens", "rank"}] best first (rank 1 = best), cut to `top`.
    `max_history` keeps only the last N history titles (the candidates protocol trains with ≤ 10).
    """
    import torch

    from prefrec.packing import encode_texts, response_logps

    history = clean_titles(history, "history")
    candidates = clean_titles(candidates, "candidates")
    if max_history is not None:
        history = history[-max_history:]
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise UserError(f"top: expected a positive integer, got {top!r}")
    prefix, question = build_prompt(history, candidates, domain)
    tree = encode_texts(tokenizer, prefix, [question], [candidates])
    with torch.inference_mode():
        scores = response_logps(model, [tree])
    summed = scores.summed.double().cpu().tolist()
    lengths = [len(r) for r in tree.branches[0].responses]
    order = sorted(range(len(candidates)), key=lambda i: -summed[i])  # stable: ties keep input order
    # 4 decimals (nats): finer than the packed-vs-naive agreement, and readable; the order uses full precision
    ranking = [{"title": candidates[i], "score": round(summed[i], 4),
                "score_per_token": round(summed[i] / lengths[i], 4), "n_tokens": lengths[i], "rank": r + 1}
               for r, i in enumerate(order)]
    return ranking[:top] if top is not None else ranking


def read_titles(path: str | os.PathLike, field: str) -> list[str]:
    """Titles from a file: a JSON list of strings (.json) or one title per line (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--{field} {path}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of title strings")
        return clean_titles(data, str(path))
    return clean_titles([line for line in text.splitlines() if line.strip()], str(path))
