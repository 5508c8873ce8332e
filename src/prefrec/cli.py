"""The `prefrec` command line. Each command is a thin wrapper over a library function: parse, call, print paths.

Errors that come from bad user input are raised as `prefrec.errors.UserError` (or ValueError/FileNotFoundError from
readers) and reported as one line on stderr with a non-zero exit code, never as a traceback. Every error starts with
"error: ", click's own usage errors (a missing option, a value of the wrong type) included (_Group).

Imports: at the top, except the modules that load torch, transformers, scipy or matplotlib (model loading, training,
evaluation, the report, the baselines, the server), which the commands that need them import inside themselves:
those imports take 1.5-6 s, and `prefrec --help`, the data commands and argument errors should answer at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import typer
from typer._click.exceptions import (  # typer >= 0.29 vendors click: its own classes
    ClickException,
    UsageError,
)
from typer.core import TyperGroup

from prefrec import io
from prefrec.data.fetch import fetch
from prefrec.data.prepared import load_prepared
from prefrec.data.protocols import UNSET
from prefrec.errors import UserError, printable
from prefrec.export import export_run
from prefrec.quickstart import run_quickstart
from prefrec.results import PER_SAMPLE, RESULTS, is_run_dir
from prefrec.samples import read_jsonl, write_samples

# Plain click help (rich_markup_mode=None): flags print as `--resume / --no-resume`, not `--resume <bool>`, and the
# help reads the same in a terminal and in a log file. -h is --help.
_CLI = {"rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}


class _Group(TyperGroup):
    """The top command: click's own usage errors (a missing option, `--port abc`) print as `error: ...` like
    prefrec's, with the help hint after it, and exit 2; everything else is click's standalone behaviour."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except UsageError as e:
            if e.format_message().startswith("Usage:"):  # no command given: the help itself, as click prints it
                typer.echo(e.format_message(), err=True)
                sys.exit(e.exit_code)
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            typer.echo(f"error: {printable(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        except ClickException as e:
            typer.echo(f"error: {printable(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # typer.Exit(code) comes back as its code


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False,
                  help="LLM personalized ranking: data, SFT, DPO/DMPO/S-DPO, evaluation.", **_CLI)
data_app = typer.Typer(no_args_is_help=True, help="Read rating logs, build protocol samples, import peer prompt files.",
                       **_CLI)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"prefrec {version('prefrec')}")
        except PackageNotFoundError:
            typer.echo("prefrec (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print prefrec's version and exit.")) -> None:
    """LLM personalized ranking: data, SFT, DPO/DMPO/S-DPO, evaluation."""
    # Progress bars in a log file: tqdm reads TQDM_* defaults when first imported (after this point in a CLI
    # process); at most one update a minute instead of many carriage-return updates a second.
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "60")


_LIMIT_HELP = "Use the first N samples (file order); 'all' for every sample."


def _count(value: Optional[str], flag: str, absent, what: str = ""):
    """A count option: `absent` when not given, None for 'all', else a whole number (UserError naming the flag)."""
    if value is None:
        return absent
    if value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{flag} must be a whole number{what} or 'all', got {value!r}") from None


def _limit(value: Optional[str], default: int | None = None) -> int | None:
    """--limit, the same in every command: N >= 1 takes the first N samples, 'all' (or leaving it out where the
    command has no default) takes every sample, and 0 or a negative number is an error, never a silent 'all'."""
    n = _count(value, "--limit", default, " of samples")
    if n is not None and n < 1:
        raise UserError(f"--limit must be at least 1 (or 'all' for every sample), got {n}")
    return n


def _fail(e: Exception) -> None:
    typer.secho(f"error: {printable(str(e))}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _table(rows: list[dict]) -> str:
    """Rows as a plain aligned text table (floats to 4 decimals), the one stdout format of result commands."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _emit(rows: list[dict], as_json: bool) -> None:
    """Result commands print a short table (metrics + results file), or with --json the same rows as JSON."""
    typer.echo(json.dumps(rows if len(rows) != 1 else rows[0], indent=2, ensure_ascii=False) if as_json
               else _table(rows))


_JSON_HELP = "Print the results as JSON instead of a table."


# ---- data commands (region owned by the data work) ----

_DATASET_HELP = "ml-100k | ml-1m | amazon-2014 | amazon-2018 | lastfm | goodreads | recbole (any RecBole atomic files)"


def _size_arg(value: Optional[str], flag: str):
    """--train/--valid/--test: a number, 'all', or absent (the task's paper default)."""
    return _count(value, flag, UNSET)


@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Option(..., "--dataset", help=_DATASET_HELP),
    source: Path = typer.Option(..., "--source", help="Folder or file of the original published files."),
    task: str = typer.Option(..., "--task", help="pairwise (DMPO) | candidates (S-DPO/LLaRA) | yesno (TALLRec)"),
    out: Path = typer.Option(..., "--out", help="Folder to write train/valid/test.jsonl, stats.json, items.tsv, interactions.tsv."),
    seed: int = typer.Option(0, "--seed"),
    negatives: Optional[int] = typer.Option(None, "--negatives", help="k negatives per sample (default: pairwise 1, candidates 3)."),
    train: Optional[str] = typer.Option(None, "--train", help="Train size: users (pairwise, yesno) or a sample cap (candidates); 'all' for no limit."),
    valid: Optional[str] = typer.Option(None, "--valid", help="Valid size (as --train)."),
    test: Optional[str] = typer.Option(None, "--test", help="Test size (as --train)."),
    history_len: Optional[int] = typer.Option(None, "--history-len", help="History items shown (default: pairwise 40, candidates/yesno 10)."),
    min_history: Optional[int] = typer.Option(None, "--min-history", help="Fewest earlier items a target needs (default: pairwise 5, candidates 3, yesno 10)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Ratings above this are positives (liked); default 3. Star ratings only (pairwise, yesno)."),
    negative_below: Optional[float] = typer.Option(None, "--negative-below", help="Pairwise: negatives are ratings below this (the papers' other reading: 3, so 3s are neither); default: every rating not above --threshold."),
    same_time: str = typer.Option("keep", "--same-time", help="keep | drop: history items with the target's exact timestamp (keep = the papers' stable sort; see docs/data.md)."),
    order_by: Optional[str] = typer.Option(None, "--order-by", help="For a log without timestamps: 'file' (its line order is time order) or a numeric column of the interactions file. Default: a seeded random order per user."),
    min_positives: int = typer.Option(5, "--min-positives", help="Pairwise: users need this many positives."),
    min_negatives: int = typer.Option(5, "--min-negatives", help="Pairwise: users need this many negatives."),
    candidates: int = typer.Option(20, "--candidates", help="Candidates task: titles shown (target + n-1 negatives)."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Prompt wording: movies | games | music | books | items (default: from the dataset)."),
    per_user: int = typer.Option(1, "--per-user", help="Pairwise: training samples per train user, taken along the user's timeline (the papers: 1)."),
    history_ratings: bool = typer.Option(False, "--history-ratings", help="Show the user's own rating after each history title (off in the papers)."),
    item_stats: bool = typer.Option(False, "--item-stats", help="Show each candidate's mean rating and rater count from training interactions of other users (off in the papers)."),
    train_order: Optional[str] = typer.Option(None, "--train-order", help="Candidates: the order of train.jsonl, whose first N a learning curve trains on: time (the papers) | round-robin (every user's sample before any user's second, users and samples in a seeded order)."),
    answers: str = typer.Option("title", "--answers", help="Answer format: title (the papers) | letter (pairwise: options A/B) | number (candidates: a numbered list)."),
) -> None:
    """Read a published log and write protocol samples + stats.json."""
    from prefrec.data.prepare import prepare  # torch, via the task table: only this command pays for it

    try:
        stats = prepare(dataset, source, task, out, seed=seed,
                        negatives=UNSET if negatives is None else negatives,
                        n_train=_size_arg(train, "--train"), n_valid=_size_arg(valid, "--valid"),
                        n_test=_size_arg(test, "--test"),
                        history_len=UNSET if history_len is None else history_len,
                        min_history=UNSET if min_history is None else min_history,
                        threshold=threshold, min_pos=min_positives, min_neg=min_negatives, n_candidates=candidates,
                        per_user=per_user, history_ratings=history_ratings, item_stats=item_stats,
                        negative_below=negative_below, same_time=same_time, order_by=order_by, domain=domain,
                        answers=answers, train_order=train_order)
    except (UserError, FileNotFoundError) as e:
        _fail(e)
    sizes = stats["split_sizes"]
    typer.echo(f"{dataset} {task}: {stats['interactions']:,} interactions, {stats['users']:,} users, "
               f"{stats['items']:,} items; {stats['users_eligible']:,} eligible users")
    typer.echo(f"samples: train {sizes['train']:,}, valid {sizes['valid']:,}, test {sizes['test']:,}"
               + (f"  ({len(stats['warnings'])} warning(s), see stats.json)" if stats["warnings"] else ""))
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "stats.json", "items.tsv", "interactions.tsv"):
        typer.echo(str(out / name))


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="ml-100k | ml-1m | lastfm"),
    url: Optional[str] = typer.Option(None, "--url", help="Download from here instead (http(s):// or file://)."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected SHA-256 of the archive (overrides the known one)."),
    force: bool = typer.Option(False, "--force/--no-force", help="Download again even if the cache has the dataset."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the server."),
) -> None:
    """Download a public dataset archive into the cache, checking its SHA-256."""
    try:
        path = fetch(name, url=url, sha256=sha256, force=force, timeout=timeout, echo=lambda m: typer.echo(m, err=True))
    except (UserError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(str(path))


@data_app.command("import")
def data_import(
    files: list[Path] = typer.Argument(..., help="Peer files or folders: LLaMA-Factory alpaca/sharegpt, TRL (explicit "
                                      "or implicit prompt), OpenAI preference JSON(L), k-rejected JSONL, Hugging Face "
                                      "datasets save_to_disk folders."),
    out: Path = typer.Option(..., "--out", help="Folder for one NAME.jsonl per input file and import_report.json."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Domain to record when the prompt does not say."),
) -> None:
    """Convert peer preference files to prefrec samples; report every rejected row with its reason."""
    from prefrec.data.importers import import_files, summary_lines  # torch, via the task table: this command only

    try:
        report = import_files(files, out, domain=domain)
    except (UserError, FileNotFoundError) as e:
        _fail(e)
    for r in report["files"]:
        for line in summary_lines(r):
            typer.echo(line)
    typer.echo(str(out / "import_report.json"))
    if report["total"]["samples"] == 0:
        _fail(UserError(f"nothing was imported: all {report['total']['files']} file(s) rejected "
                        f"(reasons above and in {out / 'import_report.json'})"))


def _samples_file(samples: Path, split: str) -> Path:
    """A samples .jsonl given as itself or as a prepared folder (its SPLIT.jsonl); UserError when there is none."""
    path = samples / f"{split}.jsonl" if samples.is_dir() else samples
    if not path.is_file():
        raise UserError(f"{path}: no such samples file")
    return path


@data_app.command("export")
def data_export(
    samples: Path = typer.Argument(..., help="Samples .jsonl, or a prepared folder (its --split file)."),
    fmt: str = typer.Option(..., "--format", help="trl | sharegpt | alpaca | messages (see docs/data.md)."),
    out: Path = typer.Option(..., "--out", help="Output .jsonl file (with --datasets: a folder)."),
    split: str = typer.Option("train", "--split", help="Which split of a prepared folder."),
    to_datasets: bool = typer.Option(False, "--datasets/--jsonl", help="Write a Hugging Face datasets folder "
                                     "(save_to_disk; needs the 'datasets' extra) instead of JSON lines."),
    force: bool = typer.Option(False, "--force", help="Replace --out if an earlier `prefrec data export` wrote it "
                               "(nothing else is ever replaced)."),
) -> None:
    """Write prefrec samples in TRL, LLaMA-Factory or chat-messages layout (one row per rejected response)."""
    from prefrec.data.exporters import export_samples  # torch, via the task table: only this command pays for it

    try:
        n = export_samples(read_jsonl(_samples_file(samples, split)), out, fmt, datasets=to_datasets, force=force)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"{n:,} rows -> {out}")


@data_app.command("swap-histories")
def data_swap_histories(
    samples: Path = typer.Argument(..., help="Samples .jsonl, or a prepared folder (its --split file)."),
    out: Path = typer.Option(..., "--out", help="The swapped samples' .jsonl (must not exist)."),
    split: str = typer.Option("test", "--split", help="Which split of a prepared folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutation of histories."),
) -> None:
    """Give every sample another user's history (same ids, candidates and targets): `prefrec eval` on the result,
    paired with the own-history scores, shows how much a model reads the user (docs/evaluate.md)."""
    from prefrec.data.swap import swap_histories

    try:
        path = _samples_file(samples, split)
        if out.exists():
            raise UserError(f"{out}: already exists; give a new file for the swapped samples")
        n = write_samples(out, swap_histories(read_jsonl(path), seed=seed))
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"{n:,} samples, each with another user's history -> {out}")


@data_app.command("stats")
def data_stats(
    path: Optional[Path] = typer.Argument(None, help="A prepared folder (prints its stats.json)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Or count a raw log: " + _DATASET_HELP),
    source: Optional[Path] = typer.Option(None, "--source", help="With --dataset: the original files."),
) -> None:
    """Counts of a prepared folder, or of a raw log read from its original files."""
    from prefrec.data.prepare import read_filtered  # torch, via the task table: only this command pays for it

    try:
        if path is not None:
            f = path / "stats.json" if path.is_dir() else path
            if not f.is_file():
                raise UserError(f"{f}: no stats.json (expected a folder written by `prefrec data prepare`)")
            typer.echo(f.read_text(encoding="utf-8").rstrip())
            return
        if not dataset or source is None:
            raise UserError("give a prepared folder, or --dataset and --source")
        log, filters, raw = read_filtered(dataset, source)
        typer.echo(json.dumps({"dataset": dataset, "source": str(source), "domain": log.domain, **raw,
                               "catalog": log.catalog, "filters": filters, "warnings": log.warnings},
                              indent=2, ensure_ascii=False))
    except (UserError, FileNotFoundError) as e:
        _fail(e)

# ---- end data commands ----

# ---- cache commands ----

cache_app = typer.Typer(no_args_is_help=True, help="The trunk cache (the stored bottom-layer states of top-N LoRA "
                        "runs, docs/train.md): list and prune.", **_CLI)
app.add_typer(cache_app, name="cache")
_CACHE_DIR_HELP = "The trunk caches' place: a run's trunk_cache_dir or eval's --cache-dir (default: the prefrec " \
    "cache's trunk/ folder, under $PREFREC_CACHE or ~/.cache/prefrec)."


def _cache_rows(caches: list[dict]) -> list[dict]:
    import datetime

    return [{"folder": Path(c["folder"]).name, "MiB": f"{c['size_bytes'] / 2**20:,.1f}", "trees": c["trees"],
             "start_layer": c["start_layer"],
             "last_used": datetime.datetime.fromtimestamp(c["last_used"]).isoformat(" ", "minutes"),
             **({"action": c["action"]} if "action" in c else
                {"note": "not prefrec's" if not c["owned"] else f"building (pid {c['building']})"
                 if c["building"] is not None else ""})} for c in caches]


@cache_app.command("list")
def cache_list(cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_DIR_HELP)) -> None:
    """Each stored trunk cache: its size, trees, start layer and when a run last opened it."""
    from prefrec.scoring import trunk

    root = trunk.place(cache_dir)
    caches = trunk.stored_caches(root)
    if caches:
        typer.echo(_table(_cache_rows(caches)))
    typer.echo(f"{len(caches)} cache folder(s), {sum(c['size_bytes'] for c in caches) / 2**20:,.1f} MiB in {root}")


@cache_app.command("prune")
def cache_prune(
    older_than: Optional[float] = typer.Option(None, "--older-than", help="Remove the caches no run or evaluation "
                                               "has opened for this many days."),
    all_: bool = typer.Option(False, "--all", help="Remove every cache (a later run builds what it needs again)."),
    dry_run: bool = typer.Option(False, "--dry-run/--no-dry-run", help="Say what would be removed; remove nothing."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_CACHE_DIR_HELP),
) -> None:
    """Remove trunk caches: only folders that hold nothing but prefrec's shards, never one being built."""
    import time

    from prefrec.scoring import trunk

    try:
        if (older_than is None) == (not all_):
            raise UserError("give --older-than DAYS or --all (one of them)")
        if older_than is not None and not (0 <= older_than < float("inf")):
            raise UserError(f"--older-than {older_than}: expected a number of days ≥ 0")
        done = trunk.prune(trunk.place(cache_dir), None if all_ else older_than * 86400, now=time.time(),
                           dry_run=dry_run)
    except (UserError, OSError) as e:
        _fail(e)
    if done:
        typer.echo(_table(_cache_rows(done)))
    gone = [c for c in done if c["action"] in ("removed", "would remove")]
    typer.echo(f"{'would remove' if dry_run else 'removed'} {len(gone)} of {len(done)} cache folder(s), "
               f"{sum(c['size_bytes'] for c in gone) / 2**20:,.1f} MiB")

# ---- end cache commands ----

# ---- train commands (region owned by the trainer work) ----

@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="Training config (YAML); see configs/ and docs/train.md."),
    resume: bool = typer.Option(False, "--resume/--no-resume", help="Continue the run in the output folder from "
                                "its last checkpoint (model, optimizer, scheduler, RNG, data position)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (overrides output_dir)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                                   help="Override one config value, e.g. "
                                                   "--set stages[1].beta=0.2 --set data.max_train_samples=50."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where the trunk cache (lora.layers) keeps "
                                             "its stored states (overrides trunk_cache_dir; default: the user cache "
                                             "folder)."),
) -> None:
    """SFT then DPO / DMPO / S-DPO on one LoRA adapter; several processes via `accelerate launch -m prefrec train`."""
    from prefrec.training.recipe import train

    try:
        from prefrec.training.config import load_config  # the method table's losses import torch

        cfg = load_config(config, overrides or [], output_dir=str(out) if out is not None else None)
        if cache_dir is not None:
            cfg.trunk_cache_dir = str(cache_dir.expanduser().resolve())
        io.check_out_folder(cfg.output_dir, "--out" if out is not None else "output_dir")
        run = train(cfg, resume=resume)
    except (UserError, FileNotFoundError) as e:
        _fail(e)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        typer.echo(str(run))


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A finished run folder (run.json + adapter/)."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged model (safetensors), tokenizer and card."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 | fp16: the dtype the merged weights are saved in."),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace --out if it is not empty."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="ORG/NAME", help="Then upload the "
                                              "export (weights, tokenizer, model card) to this Hub model repo."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repository private."),
) -> None:
    """Merge the run's LoRA adapter into its base: a model folder plain transformers loads (no peft, no prefrec)."""
    from prefrec.export import check_push, push_export

    try:
        token = check_push(push_to_hub) if push_to_hub else None  # before the merge, which takes a while
        path = export_run(run, out, dtype=dtype, force=force)
        url = push_export(path, push_to_hub, token=token, private=private) if push_to_hub else None
    except (UserError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(str(path) if url is None else f"{path}\n{url}")

# ---- end train commands ----

# ---- eval / report commands (region owned by the evaluation work) ----

@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="'embedded', 'gemma3-270m', a Hugging Face id/folder, or a prefrec run "
                                "folder."),
    samples: Optional[Path] = typer.Option(None, "--samples", help="Prepared folder (its SPLIT.jsonl) or a .jsonl."),
    split: str = typer.Option("test", "--split", help="Which split of the prepared folder."),
    peer: Optional[Path] = typer.Option(None, "--peer", help="Instead of --samples: a peer-format test file "
                                        "(.json/.jsonl/.csv/.tsv); see --peer-format."),
    peer_format: str = typer.Option("candidates", "--peer-format", help="alpaca-yesno | candidates"),
    history_field: str = typer.Option("historyList", "--history-field", help="Peer candidates: history field."),
    candidates_field: str = typer.Option("itemList", "--candidates-field", help="Peer candidates: candidate list."),
    target_field: str = typer.Option("trueSelection", "--target-field", help="Peer candidates: target title."),
    domain: str = typer.Option("movies", "--domain", help="Peer files: movies | music | games | books."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name in results.json (default: "
                                          "stats.json's, or the file name for peer files)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/eval/DATASET-TASK-SPLIT "
                                       "for a run, else eval/METHOD-MODEL-DATASET-TASK-SPLIT)."),
    limit: Optional[str] = typer.Option(None, "--limit", help=_LIMIT_HELP + " Default: all."),
    generate: bool = typer.Option(True, "--generate/--no-generate", help="Candidates task: greedy generation for "
                                  "HR@1/ValidRatio (likelihood ranking is always computed)."),
    constrained: bool = typer.Option(False, "--constrained", help="Candidates task: also decode through the trie of "
                                     "the candidates' answers (HR@1 and ValidRatio _constrained beside the papers')."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Generation length limit."),
    gen_backend: str = typer.Option("transformers", "--gen-backend", help="Candidates generation: transformers, or "
                                    "vllm (optional, CUDA GPU: pip install vllm)."),
    method: Optional[str] = typer.Option(None, "--method", help="Method name in results.json (default: the run's "
                                         "last stage, 'zero-shot' for an untrained model)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed recorded in results.json (default: the run's, "
                                       "else the data's)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16 (default: fp32 on CPU)."),
    trunk_layers: Optional[int] = typer.Option(None, "--trunk-layers", min=0, help="Run only the top N layers, "
                                               "from the trunk cache (default: a run's lora.layers; 0: off)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="The trunk cache's folder (default: user cache)."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Evaluate a run on another task's samples."),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Evaluate a model on the pairwise, candidates or yes/no task: results.json + per_sample.jsonl."""
    from prefrec.data.peer import load_peer  # torch, via the task table and the model: this command only
    from prefrec.evaluation.evaluate import evaluate

    try:
        if (samples is None) == (peer is None):
            raise UserError("give exactly one of --samples DIR and --peer FILE")
        with io.owning(out, "eval", names=[RESULTS, PER_SAMPLE]) if out else contextlib.nullcontext():
            data = samples if peer is None else load_peer(peer, peer_format, history_field=history_field,
                                                          candidates_field=candidates_field,
                                                          target_field=target_field, domain=domain)
            res = evaluate(model, data, split=split, out=out, limit=_limit(limit), generate=generate, method=method,
                           seed=seed, dataset=dataset or (peer.stem if peer is not None else None),
                           max_new_tokens=max_new_tokens, dtype=dtype, constrained=constrained,
                           gen_backend=gen_backend, trunk_layers=trunk_layers, cache_dir=cache_dir,
                           allow_mismatch=allow_mismatch)
    except (UserError, ValueError, FileNotFoundError) as e:
        _fail(e)
    if is_run_dir(model):  # the run's model card lists its test metrics
        from prefrec.card import write_card

        write_card(model)
    _emit([{"method": res["method"], "dataset": res["dataset"], "task": res["task"], "n": res["n_samples"],
            **{k: v for k, v in res["metrics"].items() if isinstance(v, (int, float))},
            "results": str(Path(res["out"]) / RESULTS)}], as_json)


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Folders (searched recursively) or results.json files."),
    out: Path = typer.Option(Path("report"), "--out", help="Output folder for results.md, results.json, plots/."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples per run (0 = no CIs)."),
) -> None:
    """Mean ± std over seeds, paired t-tests, bootstrap CIs and plots from many results.json -> results.md."""
    from prefrec.evaluation.report import REPORT_JSON, REPORT_MD, make_report

    try:
        with io.owning(out, "report", names=[REPORT_MD, REPORT_JSON]):
            md = make_report(runs, out, n_boot=bootstrap)
    except (UserError, ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(str(md))

# ---- end eval / report commands ----

# ---- baseline commands (region owned by the baselines work) ----

_BASELINE_HELP = ("popularity | liked-share | bpr | sasrec | gru4rec | bert4rec | caser | stamp | core | gcsan | shan | cmf "
                  "| prompt-facts | item-prior, or 'all'")


@app.command("baseline")
def baseline(
    name: str = typer.Argument(..., help=_BASELINE_HELP),
    samples: Path = typer.Option(..., "--samples", help="A folder from `prefrec data prepare` (its test.jsonl is scored)."),
    regime: str = typer.Option("both", "--regime", help="few-shot (train split samples) | full (every non-test interaction) | both"),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Parent folder; each run writes OUT/NAME-REGIME/results.json "
                                       "(default baselines/DATASET-TASK)."),
    train_samples: Optional[Path] = typer.Option(None, "--train-samples", help="Cross-domain: train on this folder "
                                                 "(another domain) and score --samples (cmf only)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: few-shot 20, full 10)."),
    examples_per_epoch: int = typer.Option(10000, "--examples-per-epoch", help="Training examples drawn per epoch."),
    dim: int = typer.Option(64, "--dim", help="Embedding size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: MF 0.01, sequential 0.001)."),
    limit: Optional[str] = typer.Option(None, "--limit", help=_LIMIT_HELP + " Default: all (score the same samples "
                                        "as `prefrec eval --limit`)."),
    test: Optional[Path] = typer.Option(None, "--test", help="Score this samples file instead of the folder's "
                                        "test.jsonl (its samples must be of the folder's test users), e.g. from "
                                        "`prefrec data swap-histories`."),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Train a traditional recommender on the same samples and score them with the shared metrics."""
    from prefrec.baselines.run import BASELINES, CROSS_DOMAIN, run_baseline
    try:
        names = list(CROSS_DOMAIN if train_samples else BASELINES) if name.lower() == "all" else [name.lower()]
        regimes = ["few-shot", "full"] if regime == "both" else [regime]
        if out is None:
            prep = load_prepared(samples)  # the run checks that the baseline takes its task
            label = f"{load_prepared(train_samples).name}-to-{prep.name}" if train_samples else prep.name
            out = Path("baselines") / f"{label}-{prep.task}"
        rows = []
        cells = [(n, r) for n in names for r in regimes]
        files = [f"{n}-{r}/{f}" for n, r in cells for f in (RESULTS, PER_SAMPLE)]
        with io.owning(out, "baseline", names=files):
            for n, r in cells:
                folder = out / f"{n}-{r}"
                res = run_baseline(n, samples, regime=r, seed=seed, out=folder, epochs=epochs,
                                   examples_per_epoch=examples_per_epoch, dim=dim, lr=lr,
                                   train_samples=train_samples, limit=_limit(limit), test_file=test)
                metrics = {k: v for k, v in res["metrics"].items() if isinstance(v, float) and k != "valid_ratio"}
                rows.append({"baseline": n, "regime": r, "n": res["n_samples"], **metrics,
                             "seconds": round(res["training"]["train_seconds"], 1),
                             "results": str(folder / RESULTS)})
    except (UserError, FileNotFoundError) as e:
        _fail(e)
    _emit(rows, as_json)

# ---- end baseline commands ----

# ---- explain / rank / serve commands (region owned by the explanation work) ----

@app.command("explain")
def explain_cmd(
    models: list[str] = typer.Argument(..., help="Model(s): 'embedded', a run folder or a HF folder/id; label one "
                                            "with LABEL=NAME (e.g. sft=runs/sft sft+dmpo=runs/dmpo)."),
    samples: Path = typer.Option(..., "--samples", help="Samples .jsonl (or a prepared folder: its test.jsonl)."),
    index: int = typer.Option(0, "--index", help="Which sample to explain (0-based position in the file)."),
    sample_id: Optional[str] = typer.Option(None, "--id", help="Explain the sample with this id instead of --index."),
    compare: bool = typer.Option(False, "--compare", help="Instead of one sample: mean conditional probability of "
                                 "positive vs negative candidates over the file, per model (DMPO Figure 7)."),
    limit: Optional[str] = typer.Option(None, "--limit", help="With --compare: " + _LIMIT_HELP + " Default: 200."),
    out: Path = typer.Option(Path("explain"), "--out", help="Output folder (default: explain/)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16 (default: fp32 on CPU)."),
) -> None:
    """Token-level conditional probabilities of each candidate: HTML page + PNG heatmap (or the Figure-7 table)."""
    from prefrec.serving.explain import compare_models, explain_file  # torch, via the task table

    try:
        with io.owning(out, "explain"):
            if compare:
                paths = compare_models(list(models), samples, out, limit=_limit(limit, default=200), dtype=dtype)
            else:
                paths = explain_file(list(models), samples, out, index=index, sample_id=sample_id, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:  # UserError is a ValueError
        _fail(e)
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


@app.command("rank")
def rank_cmd(
    model: str = typer.Argument(..., help="'embedded', a prefrec run folder or a HF model folder/id."),
    history: Path = typer.Option(..., "--history", help="Titles the user interacted with, oldest first: one per "
                                 "line, or a JSON list (decided by the content)."),
    candidates: Path = typer.Option(..., "--candidates", help="Titles to rank: one per line, or a JSON list "
                                    "(decided by the content)."),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Print only the best N."),
    domain: str = typer.Option("movies", "--domain", help="Prompt wording: movies | games | music | books | items."),
    max_history: Optional[int] = typer.Option(None, "--max-history", min=1, help="Keep only the last N history "
                                              "titles (the candidates protocol trains with at most 10)."),
    max_tokens: int = typer.Option(4096, "--max-tokens", min=16, help="Most tokens of prompt + candidates (also "
                                   "capped by the model's context); the oldest history titles are dropped to fit."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON here instead of stdout."),
    force: bool = typer.Option(False, "--force", help="Replace --out if an earlier `prefrec rank` wrote it."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16 (default: fp32 on CPU)."),
    order_by: str = typer.Option("sum", "--order-by", help="sum: summed log-prob (what evaluation ranks by); mean: "
                                 "per token (candidates runs; favours short titles less)."),
) -> None:
    """Rank candidate titles for a user history with the prompt of the run's task (JSON: title, score, rank)."""
    from prefrec.items import attached
    from prefrec.model import load_model
    from prefrec.serving.rank import missing_items_note

    from prefrec.prompts import check_domain
    from prefrec.serving.rank import rank, ranker_of, read_titles  # torch: the packed forward

    try:
        check_domain(domain)  # before the model loads
        if out is not None:
            io.check_out_file(out, "rank", force=force)
        hist = read_titles(history, "history")
        cands = read_titles(candidates, "candidates")
        ranker = ranker_of(model)
        m, tok = load_model(model, dtype=dtype)
        ranking = rank(m, tok, hist, cands, domain=domain, top=top, max_history=max_history, max_tokens=max_tokens,
                       ranker=ranker, order_by=order_by)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    result = {"model": model, "task": ranker.task, "answers": ranker.answers, "domain": domain,
              "n_candidates": len(cands), "notes": list(ranker.notes), "ranking": ranking}
    note = missing_items_note(attached(m), hist, cands)  # a hybrid model: titles scored without their item token
    if note:
        result["note"] = note
    if out is not None:
        with io.owning(out.parent, "rank"):
            io.write_json(out, result)
        typer.echo(f"ranking: {out}")
    else:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


def _seconds(default: float, flag: str, help: str):
    """A time limit option of the server (at least 0.1 s)."""
    return typer.Option(default, flag, min=0.1, help=help)


@app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="'embedded', a prefrec run folder or a HF model folder/id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on. Any host but loopback needs a "
                             "bearer token ($PREFREC_SERVE_TOKEN or --token-file)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File whose first line is the bearer "
                                              "token clients must send (else $PREFREC_SERVE_TOKEN; never on the "
                                              "command line, where `ps` shows it)."),
    allow_host: Optional[list[str]] = typer.Option(None, "--allow-host", help="A Host header value to answer, "
                                                   "besides the loopback names and --host (repeatable; '*' for "
                                                   "any)."),
    label: Optional[str] = typer.Option(None, "--label", help="The model's name in answers and /health (default: "
                                        "MODEL, or a folder's own name: never a local path)."),
    max_history: int = typer.Option(50, "--max-history", min=1, help="Most history titles per request."),
    max_candidates: int = typer.Option(100, "--max-candidates", min=1, help="Most candidates per request."),
    max_title_chars: int = typer.Option(300, "--max-title-chars", min=1, help="Longest title, in characters."),
    max_body_bytes: int = typer.Option(256 * 1024, "--max-body-bytes", min=1, help="Largest request body."),
    max_tokens: int = typer.Option(4096, "--max-tokens", min=16, help="Most tokens per request after tokenisation "
                                   "(also capped by the model's context); the history is shortened to fit."),
    max_seconds: float = _seconds(60.0, "--max-seconds", "Time limit per request, queueing included; the work "
                                  "stops when it passes (503)."),
    max_queue: int = typer.Option(16, "--max-queue", min=1, help="Requests admitted at once (uploading, waiting "
                                  "or running); more get 503."),
    read_timeout: float = _seconds(5.0, "--read-timeout", "Seconds for a whole request body; then 408 and the "
                                   "connection is closed."),
    idle_timeout: float = _seconds(5.0, "--idle-timeout", "Seconds a connection may take to send a complete "
                                   "request head (after opening or after its last answer)."),
    max_connections: int = typer.Option(64, "--max-connections", min=1, help="Open connections at once; more get "
                                        "503."),
    docs: bool = typer.Option(False, "--docs", help="Serve /openapi.json and Swagger UI at /docs (the browser "
                              "loads it from a CDN)."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="A page at / to try the model in a browser (the same limits "
                            "and token as POST /rank)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16 (default: fp32 on CPU)."),
) -> None:
    """HTTP ranking service: POST /rank {history, candidates, top?, domain?}, GET /health (FastAPI + uvicorn)."""
    from prefrec.model import load_model
    from prefrec.serving.rank import ranker_of
    from prefrec.serving.serve import (
        Limits,
        check_exposure,
        default_label,
        read_token,
        run_server,
    )

    try:
        token = read_token(token_file)
        check_exposure(host, token)  # before the model loads, so a refused start is quick
        ranker = ranker_of(model)  # the run's own task and answer format, as `prefrec rank` takes them
        pair = load_model(model, dtype=dtype)  # once, before listening, so a bad name fails here with one line
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    limits = Limits(max_history=max_history, max_candidates=max_candidates, max_title_chars=max_title_chars,
                    max_body_bytes=max_body_bytes, max_tokens=max_tokens, max_seconds=max_seconds,
                    max_queue=max_queue, read_seconds=read_timeout, idle_seconds=idle_timeout,
                    max_connections=max_connections)
    run_server(pair, host=host, port=port, limits=limits, model_label=label or default_label(model), docs=docs,
               token=token, allowed_hosts=allow_host, ranker=ranker, ui=ui)

# ---- end explain / rank / serve commands ----

# ---- quickstart / experiment commands ----


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Folder for data, runs, evaluations and the report."),
    n_test: Optional[int] = typer.Option(None, help="Evaluate only the first N pairwise test users (default: all 702, 3 comparisons each)."),
    dtype: str = typer.Option("auto", help="auto (bf16 where this CPU's bf16 matmuls are fast, or on a GPU), fp32 "
                              "or bf16."),
    model: str = typer.Option("embedded", help="The base model: embedded (SmolLM2-135M-Instruct), gemma3-270m, or "
                              "a local model folder."),
    smoke: bool = typer.Option(False, "--smoke", help="A few minutes: every step on 40 training samples and 30 test "
                               "users (shows no learning; checks that everything runs)."),
) -> None:
    """ML-100K -> SFT (hybrid prompt, 3,000 pairs), evaluated against zero-shot and prompt-facts, then a report."""
    if dtype not in ("auto", "fp32", "bf16"):
        _fail(ValueError(f"--dtype {dtype!r}: expected auto, fp32 or bf16"))
    try:
        run_quickstart(out, n_test=n_test, dtype=dtype, model=model, smoke=smoke)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="An experiment YAML (see configs/experiments/)."),
    only: Optional[list[str]] = typer.Option(None, help="Run only these methods or dataset labels (repeatable)."),
    dry_run: bool = typer.Option(False, help="List the cells still to run and stop."),
    report_only: bool = typer.Option(False, help="Run no cell; write the report of the finished cells."),
    report: bool = typer.Option(True, help="Write the report after the cells (--no-report: only copy the finished "
                                "cells' small files beside it; a queue of several invocations reports once at the "
                                "end, with --report-only)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a config value, KEY=VALUE with VALUE in YAML (repeatable): --set seeds=[0] "
                            "--set eval.limit=50 --set datasets.ml-100k.prepare.n_train=50."),
    launcher: Optional[str] = typer.Option(
        None, help="local or slurm: submit each unfinished cell as its own job through submitit (resources from "
                   "the config's launcher: section), wait, then report. Default: run the cells here, in turn."),
) -> None:
    """Run a grid of methods x datasets x k x shots x beta x seeds (finished cells are skipped), then report."""
    try:
        from prefrec.experiment import run_experiment  # the method table's losses import torch

        md = run_experiment(config, only=only, dry_run=dry_run, overrides=set_, report_only=report_only,
                            report=report, launcher=launcher)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    if md is not None:
        typer.echo(f"report: {md}")


# ---- end quickstart / experiment commands ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
