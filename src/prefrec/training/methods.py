"""The method table: one row per training stage kind (sft and every preference loss), the one owner of which losses
exist and what each needs (a reference or not, token counts, graded labels, its β and extra hyper-parameters). The
config's allowed stage kinds and params, the trainer's loss call and reference pass, the experiment's methods, cells
and k, and the report's row order all derive from `STAGES`, so a new loss is one function in
prefrec.training.losses plus one row here (docs/dev/extending.md walks through it).

An experiment method is a stage kind seen from the results tables:
    zero-shot     the base model, untrained
    sft           the sft stage alone
    <loss>        sft, then the preference stage (the SFT run is shared by every <loss> cell of a grid)
    <loss>-only   the preference stage straight from the base model (rows with only_variant=True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from prefrec.training import losses

ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class Param:
    """An extra hyper-parameter of a loss, set in a stage's `params:` mapping: its default and its range
    [low, high) (None = unbounded on that side)."""
    default: float
    low: float | None = None
    high: float | None = None
    doc: str = ""

    def check(self, value: float) -> str | None:
        """None when `value` is in range, else what was expected."""
        if (self.low is not None and value < self.low) or (self.high is not None and value >= self.high):
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            return f"expected a number in [{lo}, {hi})"
        return None


@dataclass(frozen=True)
class StageKind:
    """One training stage kind: its loss and what the loss needs.

    loss: `fn(batch: losses.PreferenceBatch, beta, **params) -> (losses (B,), chosen_rewards (B,),
    rejected_rewards (B, k))`, or None for supervised fine-tuning.
    reference: the loss reads the frozen reference's log-probs (computed once per stage and cached); False skips
    that pass. length_normalised: it reads p̄ = logp / |y| (the batch always carries the token counts; this says
    which losses depend on them, for the docs and the report). labels: it reads graded labels ψ (the user's
    ratings of the responses, when the samples carry them; 1 for the chosen and 0 otherwise).
    reward: how the logged chosen/rejected rewards are defined ("β(logp − logp_ref)" or "β·p̄"); the likelihood
    displacement warning reads them only when the reward is relative to the reference.
    beta: the default β (a stage's `beta:` overrides it); params: the loss's extra hyper-parameters.
    default_k: negatives per sample when the stage sets no k: None = every response the data has (sft trains on
    the chosen only), an int = that many (the experiment grid then ignores its ks for this kind), "data" = all the
    data has, the same for every sample.
    only_variant: the experiment also offers "<kind>-only" (the stage trained straight from the base model).
    """
    kind: str
    loss: Callable | None
    reference: bool = True
    length_normalised: bool = False
    labels: bool = False
    reward: str = "β(logp − logp_ref)"
    beta: float = 0.1
    params: dict[str, Param] = field(default_factory=dict)
    default_k: int | str | None = "data"
    only_variant: bool = False

    @property
    def aligned(self) -> bool:
        """A preference stage: rewards, dropout off by default (and a frozen reference when `reference`)."""
        return self.loss is not None

    def loss_fn(self) -> Callable:
        if self.loss is None:
            raise ValueError(f"stage kind {self.kind!r} has no preference loss")
        return self.loss


SMOOTHING = {"label_smoothing": Param(0.0, 0.0, 0.5, "ε: the chance that a preference label is flipped (cDPO)")}
SMOOTHED = {"label_smoothing": Param(0.1, 1e-9, 0.5, SMOOTHING["label_smoothing"].doc)}

STAGES: dict[str, StageKind] = {row.kind: row for row in (
    StageKind("sft", None, default_k=None),
    StageKind("dpo", losses.dpo_loss, params=SMOOTHING, default_k=1),
    StageKind("dmpo", losses.dmpo_loss, params=SMOOTHING, only_variant=True),
    StageKind("sdpo", losses.sdpo_loss, params=SMOOTHING, only_variant=True),
    StageKind("simpo", losses.simpo_loss, reference=False, length_normalised=True, reward="β·p̄", beta=2.0,
              params={"gamma": Param(1.0, 0.0, None, "γ: the target reward margin")}, only_variant=True),
    StageKind("orpo", losses.orpo_loss, reference=False, length_normalised=True, reward="β·p̄", only_variant=True),
    StageKind("pl", losses.plackett_luce_loss, labels=True, only_variant=True),
    StageKind("lipo", losses.lipo_loss, labels=True, only_variant=True),
    StageKind("infonca", losses.infonca_loss, labels=True,
              params={"alpha": Param(1.0, 1e-6, None, "α: the temperature of the labels' soft targets")},
              only_variant=True),
    StageKind("dmpo-ls", losses.dmpo_loss, params=SMOOTHED, only_variant=True),
    StageKind("sdpo-ls", losses.sdpo_loss, params=SMOOTHED, only_variant=True),
)}


def loss_params(kind: str, given: dict[str, float]) -> dict[str, float]:
    """The row's params with their defaults, overridden by a stage's `params:` (checked by the config)."""
    return {name: float(given.get(name, p.default)) for name, p in STAGES[kind].params.items()}


def stage(kind: str) -> StageKind:
    """The row of a stage kind (KeyError for an unknown one; config validation names the allowed kinds)."""
    return STAGES[kind]


def stage_kinds() -> tuple[str, ...]:
    return tuple(STAGES)


def alignment_kinds() -> tuple[str, ...]:
    return tuple(k for k, row in STAGES.items() if row.aligned)


def is_aligned(kind: str) -> bool:
    return kind in STAGES and STAGES[kind].aligned


# ---------------------------------------------------------------------------------------------------------------
# Experiment methods

def llm_methods() -> tuple[str, ...]:
    """Every LLM method an experiment accepts: zero-shot, each stage kind, then the -only variants."""
    return (ZERO_SHOT, *STAGES, *(f"{k}-only" for k, row in STAGES.items() if row.only_variant))


def table_order() -> list[str]:
    """LLM methods in the order of the papers' tables: zero-shot, sft, then each loss with its -only variant first."""
    order = [ZERO_SHOT]
    for kind, row in STAGES.items():
        order += [f"{kind}-only", kind] if row.only_variant else [kind]
    return order


def method_kind(method: str) -> str | None:
    """The stage kind a method trains last (None for zero-shot)."""
    return None if method == ZERO_SHOT else method.removesuffix("-only")


def method_is_aligned(method: str) -> bool:
    kind = method_kind(method)
    return kind is not None and is_aligned(kind)


def method_stages(method: str) -> tuple[list[str], bool]:
    """(stage kinds this method trains itself, whether it starts from the shared SFT run of its grid)."""
    kind = method_kind(method)
    if kind is None:
        return [], False
    if kind == "sft" or method.endswith("-only"):
        return [kind], False
    return [kind], True


def cell_k(method: str, grid_k: int | None) -> int | None:
    """The k of an experiment cell: None for untrained and sft cells, a fixed default_k (dpo: 1), else the grid's."""
    if not method_is_aligned(method):
        return None
    default = STAGES[method_kind(method)].default_k
    return default if isinstance(default, int) else grid_k
