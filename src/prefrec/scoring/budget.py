"""Token budgets: how many tokens one packed prompt + responses tree may have (docs/serve.md).

Limits in bytes or titles do not bound the work: a packed tree of L tokens costs an L×L attention mask and
attention scores per head, and the model's position embeddings end at `max_position_embeddings`. So every path that
scores user-supplied text (`prefrec rank`, `prefrec serve`, `prefrec explain`, `prefrec eval`) checks the token
count AFTER tokenisation against

    budget = min(the model's context (config.max_position_embeddings), a configurable cap)

and either shortens the history (oldest titles first, as the data protocols do) or refuses with a message naming
the limit, before any forward pass.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from prefrec.errors import UserError

# Default cap of `prefrec rank` / `prefrec serve`: a 4096-token tree fits 50 history titles and 100 typical
# candidates, and keeps one request's attention memory near 1 GB on SmolLM2-135M (benchmarks/serve_load.py).
DEFAULT_MAX_TOKENS = 4096


class TokenBudgetError(UserError):
    """The input does not fit the token budget even after shortening what may be shortened."""


def model_context(model) -> int | None:
    """The model's context length (max_position_embeddings of its config, under a PEFT wrapper too), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


@dataclass(frozen=True)
class Budget:
    """At most `tokens` tokens per tree; `source` says which limits set it (for error messages)."""
    tokens: int
    source: str

    def __str__(self) -> str:
        return f"{self.tokens} tokens ({self.source})"


def token_budget(model, cap: int | None = None) -> Budget:
    """min(model context, cap); the cap alone when the config states no context; no limit when neither is known."""
    ctx = model_context(model)
    if ctx is None and cap is None:
        return Budget(sys.maxsize, "no limit known: the model config has no max_position_embeddings")
    parts = ([f"model context {ctx}"] if ctx is not None else []) + ([f"max_tokens {cap}"] if cap is not None else [])
    return Budget(min(n for n in (ctx, cap) if n is not None), "min of " + " and ".join(parts) if len(parts) > 1
                  else parts[0])


def check_tokens(n_tokens: int, budget: Budget, what: str) -> None:
    """Raise TokenBudgetError when `what` needs more tokens than the budget allows."""
    if n_tokens > budget.tokens:
        raise TokenBudgetError(f"{what} needs {n_tokens} tokens; the limit is {budget}")


def fit_history(n_tokens_with: Callable[[int], int], n_history: int, budget: Budget, *, min_keep: int = 1) -> int:
    """How many of the most recent history titles to keep so that the tree fits: the largest k in
    [min_keep, n_history] with n_tokens_with(k) ≤ budget.tokens (token counts grow with k), or TokenBudgetError
    when even min_keep titles do not fit. Binary search: about log2(n_history) tokenisations."""
    if n_tokens_with(n_history) <= budget.tokens:
        return n_history
    lo, hi = min_keep, n_history - 1  # the answer, if any, is in [lo, hi]
    check_tokens(n_tokens_with(lo), budget, f"the prompt with the candidates and {lo} history title(s) "
                                            "(send fewer or shorter candidates)")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tokens_with(mid) <= budget.tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo
