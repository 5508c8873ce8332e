"""What the fuzz suites (tests/test_fuzz_*.py, issue #43 point 5) share: one Hypothesis settings maker and the checks
every suite makes (one clear line per error, nothing written on error).

The settings are derandomized (the examples follow from each test's source alone) and keep no example database, so
CI runs the same examples every time and a failure reproduces on any machine; sizes are chosen so that the fuzz
suites together take under 3 minutes on 2 cores. PREFREC_FUZZ_SCALE=10 runs ten times the examples (a local search;
with derandomize the same ones plus more). There is no per-example deadline: on a shared 2-core machine a timing
check would fail at random; the server suite bounds each request's time itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("PREFREC_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """Settings for one property: `examples` examples (times PREFREC_FUZZ_SCALE), derandomized, no database."""
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None, deadline=None,
                    print_blob=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                             HealthCheck.filter_too_much,
                                                             HealthCheck.function_scoped_fixture])


def one_line(e: BaseException) -> str:
    """The message of a user-facing error: non-empty, one line (what the CLI prints after 'error: ')."""
    msg = str(e)
    assert msg.strip(), f"{type(e).__name__} without a message"
    assert "\n" not in msg, f"a message of {msg.count(chr(10)) + 1} lines: {msg!r:.300}"
    return msg


def snapshot(folder: str | os.PathLike) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`, by relative path: equal snapshots = nothing written,
    removed or left behind."""
    root = Path(folder)
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
