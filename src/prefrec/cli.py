"""The `prefrec` command line. Each command is a thin wrapper over a library function: parse, call, print paths.

Errors that come from bad user input are raised as `prefrec.errors.UserError` (or ValueError/FileNotFoundError from
readers) and reported as one line on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="LLM personalized ranking: data, SFT, DPO/DMPO/S-DPO, evaluation.")
data_app = typer.Typer(no_args_is_help=True, help="Read rating logs, build protocol samples, import peer prompt files.")
app.add_typer(data_app, name="data")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# ---- data commands (region owned by the data work) ----

# ---- end data commands ----

# ---- train commands (region owned by the trainer work) ----

# ---- end train commands ----

# ---- eval / report commands (region owned by the evaluation work) ----

# ---- end eval / report commands ----

# ---- baseline commands (region owned by the baselines work) ----

# ---- end baseline commands ----

# ---- explain / rank / serve commands (region owned by the explanation work) ----

# ---- end explain / rank / serve commands ----

# ---- quickstart / experiment commands ----

# ---- end quickstart / experiment commands ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
