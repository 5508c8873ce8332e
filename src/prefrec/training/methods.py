"""The method table: one row per training stage kind (sft and every preference loss), the one owner of which losses
exist. The config's allowed stage kinds, the trainer's loss call, the experiment's methods, cells and k, and the
report's row order all derive from `STAGES`, so a new loss is one function in prefrec.training.losses plus one row here
(docs/dev/extending.md walks through it).

An experiment method is a stage kind seen from the results tables:
    zero-shot     the base model, untrained
    sft           the sft stage alone
    <loss>        sft, then the preference stage (the SFT run is shared by every <loss> cell of a grid)
    <loss>-only   the preference stage straight from the base model (rows with only_variant=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class StageKind:
    """One training stage kind.

    loss: a preference loss `(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> (losses (B,),
    chosen_rewards (B,), rejected_rewards (B, k))`, or the name of one in prefrec.training.losses (imported when first used,
    so that the config, the experiment and the report load without torch), or None for supervised fine-tuning.
    default_k: negatives per sample when the stage sets no k: None = every response the data has (sft trains on
    the chosen only), an int = that many (the experiment grid then ignores its ks for this kind), "data" = all the
    data has, which must be the same for every sample.
    only_variant: the experiment also offers "<kind>-only" (the stage trained straight from the base model).
    """
    kind: str
    loss: str | Callable | None
    default_k: int | str | None = "data"
    only_variant: bool = False

    @property
    def aligned(self) -> bool:
        """A preference stage: a frozen reference, rewards, dropout off by default."""
        return self.loss is not None

    def loss_fn(self) -> Callable:
        if isinstance(self.loss, str):
            from prefrec.training import losses

            return getattr(losses, self.loss)
        if self.loss is None:
            raise ValueError(f"stage kind {self.kind!r} has no preference loss")
        return self.loss


STAGES: dict[str, StageKind] = {row.kind: row for row in (
    StageKind("sft", None, default_k=None),
    StageKind("dpo", "dpo_loss", default_k=1),
    StageKind("dmpo", "dmpo_loss", only_variant=True),
    StageKind("sdpo", "sdpo_loss", only_variant=True),
)}


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
