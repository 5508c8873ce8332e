"""`prepare`: read a published log, apply a task's protocol (prefrec.tasks), write the prepared folder.

    OUT/train.jsonl, valid.jsonl, test.jsonl   one Sample per line (samples.py)
    OUT/stats.json        counts before/after each filter, split sizes (requested and actual), warnings, parameters
    OUT/items.tsv         item_id \\t title
    OUT/interactions.tsv  user \\t item \\t rating \\t timestamp \\t split   (the log after the read-level filters;
                          file order, or for a log without time each user's rows in the protocols' seeded order)

Read-level filters, applied before any protocol and listed first in stats.json `filters`: rows whose rating means
"not rated" (Goodreads 0) are dropped, and a repeated (user, item) pair keeps only its first interaction in time
order. The folder is written whole or not at all: into a temporary sibling, renamed into place when complete
(io.atomic_folder), so a kill midway never leaves one run's train.jsonl beside another run's stats.json. An existing
`--out` is replaced only when it is empty or a folder prepare wrote and nobody changed since (its manifest,
.prefrec-files.json, records every file with its sha256); anything else is refused before the work starts. Warnings (a smaller split than requested, missing titles) are
printed to stderr and stored in stats.json: never silent. Nothing is written when every split is empty or `--out`
is a file (both errors).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable

from prefrec import io
from prefrec.data import protocols
from prefrec.data.protocols import UNSET
from prefrec.data.readers import Log, read
from prefrec.errors import UserError
from prefrec.provenance import provenance
from prefrec.samples import write_samples
from prefrec.tasks import Task
from prefrec.tasks import task as task_row

# Parameters left out take the task's paper defaults (its row's `defaults`, docs/data.md). Candidates caps:
# LLaRA/S-DPO use every sample; we cap the splits so a CPU run finishes in minutes. None ("all") means no cap.
OWNER = "data prepare"  # the command named in the manifest of the folders it writes (io.owning)


def _warn_stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def read_filtered(dataset: str, source: str | os.PathLike, *, domain: str | None = None,
                  order_by: str | None = None) -> tuple[Log, list[dict], dict]:
    """Read the log and apply the read-level filters. Returns (log, filter rows, raw counts)."""
    log = read(dataset, source, domain=domain, order_by=order_by)
    raw = log.counts()
    filters = [{"name": "raw", **raw}]
    if log.unrated is not None:
        kept = [x for x in log.interactions if x.rating != log.unrated]
        if len(kept) != len(log.interactions):
            log.interactions = kept
            filters.append({"name": f"rated (rating {log.unrated:g} means not rated)", **log.counts()})
        if not kept:
            raise UserError(f"{source}: every row has rating {log.unrated:g} (not rated); nothing to build samples from")
    if len({(x.user, x.item) for x in log.interactions}) == len(log.interactions):
        return log, filters, raw  # no repeated (user, item): skip the time sort below
    seen: set[tuple[str, str]] = set()
    order = protocols.sequences(log, None)  # time order, or file order for a log without time
    keep = [False] * len(log.interactions)
    for seq in order.values():
        for i in seq:
            x = log.interactions[i]
            if (x.user, x.item) not in seen:
                seen.add((x.user, x.item))
                keep[i] = True
    if not all(keep):
        log.interactions = [x for x, k in zip(log.interactions, keep) if k]
        filters.append({"name": "repeated (user, item): first in time order kept", **log.counts()})
    return log, filters, raw


def _rows_in_order(log: Log, split: list[str], seed: int):
    """(interaction, split) in file order; for a log without time, each user's rows in the protocols' seeded order
    instead, so that tools that read interactions.tsv in order (the sequential baselines) do not learn the id
    order the prompts no longer show."""
    if protocols.timed(log):
        yield from zip(log.interactions, split)
        return
    for seq in protocols.sequences(log, seed).values():
        for i in seq:
            yield log.interactions[i], split[i]


def _cell(text: str) -> str:
    """Titles may in principle hold a tab or newline; ids never do (the readers split on them)."""
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def prepare(dataset: str, source: str | os.PathLike, task: str, out: str | os.PathLike, *, seed: int = 0,
            negatives=UNSET, n_train=UNSET, n_valid=UNSET, n_test=UNSET, history_len=UNSET,
            min_history=UNSET, threshold: float | None = None, min_pos: int = 5, min_neg: int = 5,
            n_candidates: int = 20, per_user: int = 1, history_ratings: bool = False, item_stats: bool = False,
            negative_below: float | None = None, same_time: str = "keep", order_by: str | None = None,
            domain: str | None = None, answers: str = "title", train_order: str | None = None,
            warn: Callable[[str], None] = _warn_stderr) -> dict:
    """Read `source` as `dataset`, build `task` samples and write them to `out`; returns the stats dict.

    Parameters left out take the task's paper default (its row's `defaults`); n_train/n_valid/n_test = None
    means "all".
    """
    _task(task)
    check_prepared_out(out)  # before the work, not after it
    log, filters, raw = read_filtered(dataset, source, domain=domain, order_by=order_by)
    return prepare_log(log, filters, raw, task, out, dataset=dataset, source=source, seed=seed, negatives=negatives,
                       n_train=n_train, n_valid=n_valid, n_test=n_test, history_len=history_len,
                       min_history=min_history, threshold=threshold, min_pos=min_pos, min_neg=min_neg,
                       n_candidates=n_candidates, per_user=per_user, history_ratings=history_ratings,
                       item_stats=item_stats, negative_below=negative_below, same_time=same_time, answers=answers,
                       train_order=train_order, warn=warn)


def _check_threshold(log: Log, threshold: float | None, negative_below: float | None) -> None:
    """--threshold is for star ratings; an error, not silence, where it would be ignored (the task's protocol
    refuses the options it does not take)."""
    if threshold is not None and log.value != "rating":
        raise UserError(f"--threshold applies to star ratings; {log.name} has play counts (liked = the top half of "
                        "each user's items by play count), so it would be ignored: leave it out")
    for flag, v in (("--threshold", threshold), ("--negative-below", negative_below)):
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= 10.0):  # nan labelled every sample "No."
            raise UserError(f"{flag} {v}: expected a finite rating between 0 and 10 (a star scale)")


def _task(name: str) -> Task:
    try:
        return task_row(name)
    except UserError as e:
        raise UserError(f"--{e}") from None


def check_prepared_out(out: str | os.PathLike) -> None:
    """--out must not exist yet, be empty, or be a folder prepare wrote and nobody changed since (its manifest
    says so: io.check_replaceable), which is then replaced whole; a file of the user's there would be lost."""
    io.check_out_folder(out)
    io.check_replaceable(out, OWNER)


def _check_not_empty(built: "protocols.Built", task: str) -> list[str]:
    """Every split empty is an error (with the protocol's reasons); one empty requested split is a warning."""
    sizes = {s: len(built.samples[s]) for s in protocols.SPLITS}
    if not any(sizes.values()):
        why = "; ".join(built.warnings) or "no user or position passed the protocol's filters"
        raise UserError(f"the {task} protocol produced no sample in any split ({why}); nothing was written")
    return [f"the {s} split is empty (requested {built.requested[s] if built.requested[s] is not None else 'all'})"
            for s in protocols.SPLITS if not sizes[s] and built.requested[s] != 0]


def _stats(log: Log, built: "protocols.Built", raw: dict, filters: list[dict], warnings: list[str], *, dataset: str,
           task: str, seed: int, source) -> dict:
    """stats.json: where the samples came from, the counts before and after each filter, and the split sizes."""
    per_split = lambda f: {s: f(built.samples[s]) for s in protocols.SPLITS}  # noqa: E731
    return {
        "dataset": dataset, "task": task, "seed": seed, "source": str(Path(source).resolve()), "domain": log.domain,
        "files": log.files, "protocol": {**built.protocol, "seed": seed}, **raw, "catalog": log.catalog,
        "users_eligible": built.users_eligible, "split_sizes": per_split(len),
        "requested_split_sizes": built.requested,
        "comparisons": per_split(lambda xs: sum(len(x.comparisons) for x in xs)),
        "filters": filters + built.filters, "warnings": warnings,
        **built.extra,
        "provenance": provenance(),
    }


def prepare_log(log: Log, filters: list[dict], raw: dict, task: str, out: str | os.PathLike, *, dataset: str,
                source: str | os.PathLike, seed: int = 0, negatives=UNSET, n_train=UNSET, n_valid=UNSET,
                n_test=UNSET, history_len=UNSET, min_history=UNSET, threshold: float | None = None,
                min_pos: int = 5, min_neg: int = 5, n_candidates: int = 20, per_user: int = 1,
                history_ratings: bool = False, item_stats: bool = False, negative_below: float | None = None,
                same_time: str = "keep", answers: str = "title", train_order: str | None = None,
                warn: Callable[[str], None] = _warn_stderr) -> dict:
    """`prepare` on a log already read by `read_filtered` (to build several tasks from one read)."""
    row = _task(task)
    given = {"negatives": negatives, "history_len": history_len, "min_history": min_history, "n_train": n_train,
             "n_valid": n_valid, "n_test": n_test}
    p = {k: (row.defaults[k] if v is UNSET else v) for k, v in given.items()}
    for k in ("n_train", "n_valid", "n_test"):
        if p[k] is not None and p[k] < 0:
            raise UserError(f"--{k[2:]} must be ≥ 0 or 'all', got {p[k]}")
    if answers not in row.formats:
        raise UserError(f"--answers {answers!r} does not apply to the {task} task; it takes {', '.join(row.formats)}")
    _check_threshold(log, threshold, negative_below)
    built = row.build(log, protocols.Options(
        seed=seed, threshold=threshold, min_pos=min_pos, min_neg=min_neg, n_candidates=n_candidates,
        per_user=per_user, history_ratings=history_ratings, item_stats=item_stats, negative_below=negative_below,
        same_time=same_time, answers=answers, train_order=train_order, **p))
    warnings = list(log.warnings) + built.warnings + _check_not_empty(built, task)
    check_prepared_out(out)
    stats = _stats(log, built, raw, filters, warnings, dataset=dataset, task=task, seed=seed, source=source)
    with io.atomic_folder(out, owner=OWNER) as tmp:
        _write_folder(tmp, log, built, seed)
        io.write_json(tmp / "stats.json", stats)
    for w in warnings:
        warn(w)
    return stats


def _write_folder(out: Path, log: Log, built: "protocols.Built", seed: int) -> None:
    """The splits, items.tsv and interactions.tsv (stats.json is the caller's)."""
    for s in protocols.SPLITS:
        write_samples(out / f"{s}.jsonl", built.samples[s])
    items = dict(log.titles)
    for x in log.interactions:
        items.setdefault(x.item, x.item)
    io.write_tsv(out / "items.tsv", "item_id\ttitle",
                 (f"{i}\t{_cell(t)}\n" for i, t in sorted(items.items(), key=lambda kv: protocols.user_key(kv[0]))))
    io.write_tsv(out / "interactions.tsv", "user\titem\trating\ttimestamp\tsplit",
                 (f"{x.user}\t{x.item}\t{x.rating:g}\t{'' if x.timestamp is None else x.timestamp}\t{sp}\n"
                  for x, sp in _rows_in_order(log, built.interaction_split, seed)))
