"""Rank candidate titles for one user, for new users, with the prompt of the task the model was trained on.

A run folder says its task (its training data's stats.json, through its config.yaml), and ranking follows it:

    candidates  the candidates-task prompt (role + history, "which one of these N will the user watch next?"), every
                candidate's answer (its title, or its number in the number format) scored as the answer to it:
                    score(c) = logp(answer(c) | x)    (answer tokens + the end-of-turn token)
    pairwise    the pairwise prompt for every pair of candidates, in both shown orders (so that the model's
                preference for the first-shown option cancels): preference(a over b) = logp(a first) − logp(b first)
                (the orderings "a, b" / "b, a", or the letters A / B); score(c) = the mean of c's preferences over
                every other candidate (a Borda count of log-odds). Cost grows with N²: the token budget bounds N.
    yesno       refused: a new user's history has no liked/disliked split to write the TALLRec prompt from.

A model that is not a run (the embedded model, a Hugging Face id) ranks with the candidates prompt. A run trained on
the hybrid prompt saw each user's ratings and each item's facts; a new user's prompt has neither, and the answer
says so in its notes.

Every tree goes through prefrec.scoring.packing (the prompt once, each response attending only to the prompt and
itself), in forward chunks over a KV cache (`chunked_response_logps`), so the attention mask is never L×L and a caller
(the HTTP service) can stop or interleave work between chunks. The tree must fit a token budget (prefrec.scoring.budget):
the history is shortened oldest-first to fit, and candidates that do not fit are refused. Candidates are sorted by
`score`, ties keeping input order, or by `score_per_token` (order_by="mean": summed log-probs favour short titles;
candidates task only).

Titles in, titles out: the titles you give come back exactly (minus surrounding whitespace), duplicates removed with
the first occurrence kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generator

from prefrec import io, prompts
from prefrec.data.prepared import training_stats
from prefrec.errors import UserError
from prefrec.items import attached
from prefrec.scoring.budget import DEFAULT_MAX_TOKENS, Budget, fit_history, token_budget
from prefrec.scoring.encoding import encode_texts
from prefrec.scoring.packing import chunked_response_logps
from prefrec.scoring.soft import mark_prompt
from prefrec.scoring.trees import Tree
from prefrec.tasks import TASKS, Task
from prefrec.tasks import task as task_row

# Query tokens per forward chunk: small enough that a waiting short request gets the worker within about one
# short request's time, large enough that the per-chunk overhead stays small (benchmarks/serve_load.py).
DEFAULT_CHUNK_TOKENS = 256

_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def check_title(t, where: str) -> str:
    """One title, stripped: a non-empty string without control characters, else UserError naming `where`."""
    if not isinstance(t, str):
        raise UserError(f"{where}: expected a string, got {type(t).__name__}")
    t = t.strip()
    if not t:
        raise UserError(f"{where}: empty title")
    bad = _CONTROL.intersection(t)
    if bad:
        raise UserError(f"{where}: title contains control character(s) "
                        f"{sorted(repr(c) for c in bad)} (newlines and tabs are not allowed in titles)")
    return t


def clean_titles(titles, field: str) -> list[str]:
    """Strip, validate (non-empty strings without control characters) and deduplicate, keeping first occurrences."""
    if isinstance(titles, str) or not isinstance(titles, (list, tuple)):
        raise UserError(f"{field}: expected a list of titles, got {type(titles).__name__}")
    out = dict.fromkeys(check_title(t, f"{field}[{i}]") for i, t in enumerate(titles))
    if not out:
        raise UserError(f"{field}: no titles given")
    return list(out)


@dataclass(frozen=True)
class RankPrompt:
    """How a model ranks: the task it was trained on, its answer format, and notes for the answers."""
    task: str = "candidates"
    answers: str = "title"
    notes: tuple[str, ...] = ()

    def row(self) -> Task:
        """The task's row; UserError for a task rank/serve cannot rank with."""
        return task_row(self.task)


def ranker_of(model: str | os.PathLike) -> RankPrompt:
    """The ranker of a run folder (its training data's task and answer format; a task without a ranking refused),
    else candidates."""
    stats = training_stats(model)
    if stats is None:
        return RankPrompt()
    proto = stats.get("protocol") or {}
    ranker = RankPrompt(stats.get("task", RankPrompt.task), proto.get("answers") or RankPrompt.answers)
    row = ranker.row()
    if row.rank is None:
        able = [name for name, t in TASKS.items() if t.rank is not None]
        raise UserError(f"{model}: a {row.name} run cannot rank a new user's candidates ({row.why_no_rank}); rank "
                        f"with a {' or '.join(able)} run")
    row.format(ranker.answers)
    if proto.get("history_ratings") or proto.get("item_stats"):
        return RankPrompt(ranker.task, ranker.answers, (
            "the run was trained on prompts showing the user's ratings and each item's facts; a new user's prompt "
            "shows titles only",))
    return ranker


def build_tree(tokenizer, history: list[str], candidates: list[str], domain: str, ranker: RankPrompt,
               items=None) -> Tree:
    """The tree of the ranker's prompt, exactly as the data protocols write it (with the model's item tokens after
    the titles its table knows, when it has some)."""
    prompts.check_domain(domain, "domain")
    prefix = prompts.history_prefix(domain, history)
    row = ranker.row()
    questions, responses = row.rank.questions(domain, candidates, row.format(ranker.answers))
    if items is None:
        return encode_texts(tokenizer, prefix, questions, responses)
    m = mark_prompt(prefix, questions, [(t, t) for t in history], [(t, t) for t in candidates],
                    items.source.title_rows)
    return encode_texts(tokenizer, m.prefix, m.questions, responses, marked=True)


def budgeted_tree(tokenizer, history: list[str], candidates: list[str], *, budget: Budget, domain: str = "movies",
            max_history: int | None = None, ranker: RankPrompt = RankPrompt(), items=None) -> tuple[Tree, list[str], list[str]]:
    """(tree, history kept, candidates) for the ranker's prompt, within the token budget: the titles are cleaned,
    the history cut to its last `max_history` titles, then to the most recent titles that fit `budget` (oldest
    dropped first, as the data protocols truncate); TokenBudgetError when even one history title and the candidates
    do not fit. Tokenisation only, no model. items: the model's item tokens (prefrec.items.attached): each title
    that names one item of its table gets its item token (found by title: a new user's request has no item ids)."""
    history = clean_titles(history, "history")
    candidates = clean_titles(candidates, "candidates")
    need = ranker.row().rank.min_candidates
    if len(candidates) < need:
        raise UserError(f"candidates: a {ranker.task} run ranks by comparing candidates; give at least {need}")
    if max_history is not None:
        history = history[-max_history:]
    trees: dict[int, Tree] = {}

    def n_tokens(k: int) -> int:  # the tree with the last k history titles
        if k not in trees:
            trees[k] = build_tree(tokenizer, history[len(history) - k:], candidates, domain, ranker, items)
        return trees[k].n_tokens()

    k = fit_history(n_tokens, len(history), budget)
    return trees[k], history[len(history) - k:], candidates


def missing_items_note(items, history: list[str], candidates: list[str]) -> str | None:
    """What a response says when some titles have no item token (not in the model's item table, or naming two of
    its items): they are scored from their text alone. None for a text-only model or when every title has one."""
    if items is None:
        return None
    rows = items.source.title_rows
    missing = [t for t in history if t not in rows], [t for t in candidates if t not in rows]
    if not any(missing):
        return None
    shown = ", ".join(repr(t) for t in (missing[0] + missing[1])[:3])
    return (f"{len(missing[0])} of {len(history)} history titles and {len(missing[1])} of {len(candidates)} "
            f"candidates are not in the model's item table (e.g. {shown}): they are shown as text only, without "
            f"an item token")


def ranking_of(tree: Tree, candidates: list[str], summed: list[float], top: int | None = None,
               ranker: RankPrompt = RankPrompt(), order_by: str = "sum") -> list[dict]:
    """[{"title", "score", "score_per_token" | "wins", "n_tokens" | "comparisons", "rank"}] best first, cut to
    `top`; order_by "mean" sorts by score_per_token (candidates task)."""
    if order_by not in ("sum", "mean"):
        raise UserError(f"order_by: expected 'sum' or 'mean', got {order_by!r}")
    rows = ranker.row().rank.rows(tree, candidates, summed)
    key = "score_per_token" if order_by == "mean" and "score_per_token" in rows[0] else "score"
    order = sorted(range(len(rows)), key=lambda i: -rows[i][key])  # stable: ties keep input order
    # 4 decimals (nats): finer than the packed-vs-naive agreement, and readable; the order uses full precision
    ranking = [{**{k: round(v, 4) if isinstance(v, float) else v for k, v in rows[i].items()}, "rank": r + 1}
               for r, i in enumerate(order)]
    return ranking[:top] if top is not None else ranking


def run_steps(steps: Generator):
    """Drive a chunked_response_logps generator to the end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def rank(model, tokenizer, history: list[str], candidates: list[str], *, domain: str = "movies",
         top: int | None = None, max_history: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS,
         chunk_tokens: int = DEFAULT_CHUNK_TOKENS, ranker: RankPrompt = RankPrompt(), order_by: str = "sum") -> list[dict]:
    """Rank `candidates` for a user who interacted with `history` (oldest first), with `ranker`'s prompt (a run's:
    `ranker_of(run)`).

    Returns ranking_of's rows best first (rank 1 = best), cut to `top`.
    `max_history` keeps only the last N history titles (the candidates protocol trains with ≤ 10); the history is
    also cut (oldest first) to fit the token budget min(model context, max_tokens), and candidates that do not fit
    with one history title are refused (TokenBudgetError, a UserError naming the limit).
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise UserError(f"top: expected a positive integer, got {top!r}")
    tree, _, candidates = budgeted_tree(tokenizer, history, candidates, budget=token_budget(model, max_tokens),
                                  domain=domain, max_history=max_history, ranker=ranker, items=attached(model))
    summed = run_steps(chunked_response_logps(model, tree, chunk_tokens=chunk_tokens))
    return ranking_of(tree, candidates, summed, top, ranker, order_by)


def _decode(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        "save the file as UTF-8") from None


def _json_list(text: str, p: Path) -> list:
    return io.json_value(text, str(p), list, "{where}: not valid JSON ({msg} at line {line}, column {col})",
                         "{where}: expected a JSON list of title strings, got a JSON {type}")


def _json_lines(lines: list[str], p: Path) -> list:
    return [v for _, v in io.json_lines(lines, str(p), str, "{where}: not valid JSON ({msg}); expected one JSON "
                                        "string per line", "{where}: expected a JSON string (one title per line), "
                                        "got {type}")]


def read_titles(path: str | os.PathLike, field: str) -> list[str]:
    """Titles from a file, decided by its content: a JSON list of strings (any extension, e.g. a list saved as
    .jsonl), JSON Lines with one string per line (.jsonl), or plain text with one title per line (blank lines
    skipped). A text file whose first line merely starts with "[" (a title such as "[REC] (2007)") and is not a
    JSON list is read as lines, unless the file is named .json/.jsonl."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--{field} {path}: no such file")
    text = _decode(p)
    suffix = p.suffix.lower()
    if text.lstrip().startswith("[") and (suffix in (".json", ".jsonl") or _is_json(text)):
        return clean_titles(_json_list(text, p), str(p))
    if suffix == ".json":
        return clean_titles(_json_list(text, p), str(p))  # names what is wrong
    lines = text.splitlines()
    if suffix == ".jsonl":
        return clean_titles(_json_lines(lines, p), str(p))
    return clean_titles([line for line in lines if line.strip()], str(p))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
