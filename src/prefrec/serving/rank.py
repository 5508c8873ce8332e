"""Rank candidate titles for one user: the likelihood ranking of the candidates task (DESIGN §6), for new users.

The prompt is the candidates-task prompt the models are trained and evaluated on (prefrec.prompts: role + the
user's history, then "which one of these N will the user watch next? Candidates: …"), and every candidate title is
scored as the answer to it,

    score(c)           = logp(c | x) = Σ_t log π(c_t | x, c_<t)      (title tokens + the end-of-turn token)
    score_per_token(c) = score(c) / n_tokens(c)

all in one packed row (prefrec.scoring.packing: the prompt once, each title attending only to the prompt and to itself),
run through the model in chunks of 256 tokens over a KV cache (`score_steps`), so the attention mask is never L×L
and a caller (the HTTP service) can stop or interleave work between chunks. The row must fit a token budget
(prefrec.scoring.budget: min(model context, max_tokens)): the history is shortened oldest-first to fit, and candidates that
do not fit are refused. Candidates are sorted by `score` (the quantity evaluation ranks by), ties keeping input order. The
length-normalised score is reported too, because summed log-probs favour short titles; use it to re-sort if you
prefer.

Titles in, titles out: the titles you give come back exactly (minus surrounding whitespace), duplicates removed with
the first occurrence kept.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Generator

from prefrec import io
from prefrec.errors import UserError
from prefrec.scoring.budget import DEFAULT_MAX_TOKENS, Budget, fit_history, token_budget

if TYPE_CHECKING:
    from prefrec.scoring.trees import Tree

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


def build_prompt(history: list[str], candidates: list[str], domain: str = "movies") -> tuple[str, str]:
    """(prefix, question) of the candidates-task prompt, exactly as the data protocol writes it."""
    from prefrec import prompts

    if domain not in prompts.DOMAINS:
        raise UserError(f"domain {domain!r}: expected one of {sorted(prompts.DOMAINS)}")
    return prompts.history_prefix(domain, history), prompts.candidates_question(domain, candidates)


def prepare(tokenizer, history: list[str], candidates: list[str], *, budget: Budget, domain: str = "movies",
            max_history: int | None = None, items=None) -> tuple[Tree, list[str], list[str]]:
    """(tree, history kept, candidates) for the candidates prompt, within the token budget: the titles are cleaned,
    the history cut to its last `max_history` titles, then to the most recent titles that fit `budget` (oldest
    dropped first, as the data protocols truncate); TokenBudgetError when even one history title and the candidates
    do not fit. Tokenisation only, no model. items: the model's item tokens (prefrec.items.attached): each title
    that names one item of its table gets its item token (found by title: a new user's request has no item ids)."""
    from prefrec.scoring.encoding import encode_texts
    from prefrec.scoring.soft import mark_prompt

    history = clean_titles(history, "history")
    candidates = clean_titles(candidates, "candidates")
    if max_history is not None:
        history = history[-max_history:]
    trees: dict[int, Tree] = {}

    def n_tokens(k: int) -> int:  # the tree with the last k history titles
        if k not in trees:
            kept = history[len(history) - k:]
            prefix, question = build_prompt(kept, candidates, domain)
            if items is None:
                trees[k] = encode_texts(tokenizer, prefix, [question], [candidates])
            else:
                m = mark_prompt(prefix, [question], [(t, t) for t in kept], [(t, t) for t in candidates],
                                items.source.title_rows)
                trees[k] = encode_texts(tokenizer, m.prefix, m.questions, [candidates], marked=True)
        return trees[k].n_tokens()

    k = fit_history(n_tokens, len(history), budget)
    return trees[k], history[len(history) - k:], candidates


def item_note(items, history: list[str], candidates: list[str]) -> str | None:
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


def score_steps(model, tree: Tree, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Generator[int, None, list[float]]:
    """Summed log-prob of every response of `tree` (as packing.response_logps), computed in forward chunks of
    `chunk_tokens` query tokens over a KV cache. A generator: it yields the number of tokens done after each chunk,
    so a caller can stop between chunks (client gone, time limit) or interleave other work, and returns the scores.

    Each chunk's mask is (chunk × tokens so far) and its LM head runs only at its own response positions, so memory
    is bounded by chunk_tokens × budget instead of L × L. The cache is a plain DynamicCache (full attention on every
    layer), so the result equals the one-shot packed forward up to floating-point summation order."""
    import torch
    from transformers import DynamicCache

    from prefrec.scoring.packing import (
        _base,
        _head_logits,
        _model_device_dtype,
        _token_logps,
        mixed_precision,
        pack_trees,
    )

    base = _base(model)
    device, dtype = _model_device_dtype(model)
    batch = pack_trees([tree], pad_id=base.config.pad_token_id or 0)
    L = batch.input_ids.shape[1]
    logps = torch.zeros(len(batch.targets), dtype=torch.float64)
    decoder = base.get_decoder()
    # transformers 5.24 renamed the decoder's `past_key_values` argument to `cache` (the old name still works, with
    # a deprecation warning per call)
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    cache = DynamicCache()
    with torch.inference_mode(), mixed_precision(model, device, dtype):
        inputs = batch.model_inputs(base, device)  # input_ids, or inputs_embeds with the item tokens in place
        for start in range(0, L, chunk_tokens):
            stop = min(L, start + chunk_tokens)
            out = decoder(**{key: x[:, start:stop] for key, x in inputs.items()},
                          attention_mask=batch.attention_mask(dtype, device, rows=(start, stop)),
                          position_ids=batch.position_ids[:, start:stop].to(device), use_cache=True,
                          **{cache_arg: cache})
            here = ((batch.gather_pos >= start) & (batch.gather_pos < stop)).nonzero()[:, 0]
            if len(here):
                hidden = out.last_hidden_state[0, (batch.gather_pos[here] - start).to(device)]
                logps[here] = _token_logps(_head_logits(base, hidden), batch.targets[here].to(device)).double().cpu()
            yield stop
    summed = torch.zeros(len(batch.lengths), dtype=torch.float64).index_add_(0, batch.token_response, logps)
    return summed.tolist()


def ranking_of(tree: Tree, candidates: list[str], summed: list[float], top: int | None = None) -> list[dict]:
    """[{"title", "score", "score_per_token", "n_tokens", "rank"}] best first, cut to `top`."""
    lengths = [len(r) for r in tree.branches[0].responses]
    order = sorted(range(len(candidates)), key=lambda i: -summed[i])  # stable: ties keep input order
    # 4 decimals (nats): finer than the packed-vs-naive agreement, and readable; the order uses full precision
    ranking = [{"title": candidates[i], "score": round(summed[i], 4),
                "score_per_token": round(summed[i] / lengths[i], 4), "n_tokens": lengths[i], "rank": r + 1}
               for r, i in enumerate(order)]
    return ranking[:top] if top is not None else ranking


def run_steps(steps: Generator):
    """Drive a score_steps generator to the end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def rank(model, tokenizer, history: list[str], candidates: list[str], *, domain: str = "movies",
         top: int | None = None, max_history: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS,
         chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[dict]:
    """Rank `candidates` for a user who interacted with `history` (oldest first).

    Returns [{"title", "score", "score_per_token", "n_tokens", "rank"}] best first (rank 1 = best), cut to `top`.
    `max_history` keeps only the last N history titles (the candidates protocol trains with ≤ 10); the history is
    also cut (oldest first) to fit the token budget min(model context, max_tokens), and candidates that do not fit
    with one history title are refused (TokenBudgetError, a UserError naming the limit).
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise UserError(f"top: expected a positive integer, got {top!r}")
    from prefrec.items import attached

    tree, _, candidates = prepare(tokenizer, history, candidates, budget=token_budget(model, max_tokens),
                                  domain=domain, max_history=max_history, items=attached(model))
    return ranking_of(tree, candidates, run_steps(score_steps(model, tree, chunk_tokens=chunk_tokens)), top)


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
