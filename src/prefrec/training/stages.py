"""A training stage's model side: the scorer Accelerate wraps, per-tree loss inputs, the LR schedule, dropout, and the
metrics of a step or a validation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prefrec.scoring.packing import response_logps
from prefrec.scoring.trees import Scores, Tree
from prefrec.training import methods
from prefrec.training.config import StageConfig
from prefrec.training.losses import PreferenceBatch, ftx_term, reward_stats, sft_loss


class TreeScorer(torch.nn.Module):
    """The module Accelerate wraps (DDP/FSDP/DeepSpeed): its forward is the packed scoring of a list of trees.

    prefrec.scoring.packing calls the decoder trunk and the LM head directly (to run the head at response positions
    only); routing that through this module's forward is what lets a distributed wrapper see the forward pass.
    pack_tokens: lay several trees of a micro-batch into one row up to this many tokens (block-diagonal attention,
    positions restarting per tree, no padding between them) instead of one padded row per tree."""

    def __init__(self, lm, pack_tokens: int | None = None):
        super().__init__()
        self.lm = lm
        self.pack_tokens = pack_tokens

    def forward(self, trees: list[Tree], per_token: bool = False):
        return response_logps(self.lm, trees, per_token=per_token, pack_tokens=self.pack_tokens)


def tree_terms(scores: Scores, trees: list[Tree]) -> dict:
    """Per-tree tensors from Scores: chosen (B, k) [(B,) without rejected responses] and rejected (B, k) summed
    log-probs (graph kept; chosen[:, i] is the chosen of rejected i's own comparison), their token counts
    chosen_len and rejected_len (same shapes), the chosen responses' token log-probs concatenated per tree (list of B
    tensors), and their NLL sum and count (B,)."""
    chosen, rejected = scores.chosen_rejected(pairs=True)
    lengths = torch.tensor([len(r) for t in trees for b in t.branches for r in b.responses], dtype=torch.float32)
    chosen_len, rejected_len = Scores(lengths, None, scores.index).chosen_rejected(pairs=True)
    per_tree: list[list[torch.Tensor]] = [[] for _ in trees]
    for n, (t, _b, i) in enumerate(scores.index):
        if i == 0:
            per_tree[t].append(scores.token_logps[n])
    tokens = [torch.cat(x) for x in per_tree]
    nll_sum = torch.stack([-x.sum() for x in tokens])
    n_tok = torch.tensor([x.numel() for x in tokens], dtype=torch.float32, device=nll_sum.device)
    return {"chosen": chosen, "rejected": rejected, "chosen_len": chosen_len.to(chosen.device),
            "rejected_len": rejected_len.to(chosen.device), "tokens": tokens, "nll_sum": nll_sum, "n_tokens": n_tok}


def preference_batch(terms: dict, ref: tuple | None, labels: torch.Tensor | None) -> PreferenceBatch:
    """The losses' one input from a split's terms (training micro-batch or validation), its reference log-probs
    (chosen, rejected) or None, and its graded labels or None."""
    device = terms["chosen"].device
    return PreferenceBatch(chosen=terms["chosen"], rejected=terms["rejected"], chosen_tokens=terms["chosen_len"],
                           rejected_tokens=terms["rejected_len"],
                           ref_chosen=None if ref is None else ref[0].to(device),
                           ref_rejected=None if ref is None else ref[1].to(device),
                           labels=None if labels is None else labels.to(device),
                           chosen_nll=terms["nll_sum"] / terms["n_tokens"])


def set_dropout(model: torch.nn.Module, rates: dict[torch.nn.Dropout, float], off: bool) -> None:
    """Dropout rate of every dropout module: 0 when `off`, else its configured rate (`rates`, taken once)."""
    for m, p in rates.items():
        m.p = 0.0 if off else p


# Likelihood displacement: DPO-family losses lower the chosen answer's log-prob along with the rejected ones', and
# too high a learning rate turns that into unlearning the answers (the learning curve's DMPO at lr 5e-4: chosen
# log-prob -0.8 -> -28 nats in 80 steps, loss above ln 2). Training warns once per stage past this mark.
DISPLACEMENT_NATS = 5.0
DISPLACEMENT_WINDOW = 10  # optimizer steps averaged


def chosen_displacement(chosen_rewards: list[float], beta: float) -> float | None:
    """Nats by which the chosen responses' log-prob lies below the reference's, averaged over the last
    DISPLACEMENT_WINDOW steps: −mean(chosen reward) / β, since a reward is β (log π − log π_ref). None before a full
    window."""
    if len(chosen_rewards) < DISPLACEMENT_WINDOW:
        return None
    return -sum(chosen_rewards[-DISPLACEMENT_WINDOW:]) / DISPLACEMENT_WINDOW / beta


def cosine_with_warmup(step: int, *, warmup: int, total: int) -> float:
    """LR factor of optimizer step `step` (0-based): linear warmup (s+1)/warmup, so the first step already learns,
    then half a cosine from 1 down towards 0 over the remaining steps (the last step still has a small LR).

    This is transformers' get_cosine_schedule_with_warmup from step `warmup` on (tests check it), but not during
    the warmup: the library's step s has factor s/warmup, so its first step has LR 0 and is wasted. prefrec keeps its
    own warmup so that runs and published results keep their numbers (issue 16)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def alignment_metrics(cfg: StageConfig, terms: dict, ref: tuple | None, labels) -> dict[str, float]:
    """Mean loss and reward statistics of a set of samples (inputs detached, one row per sample)."""
    losses, cr, rr = stage_loss(cfg, preference_batch(terms, ref, labels))
    if cfg.ftx:
        losses = losses + cfg.ftx * terms["nll_sum"] / terms["n_tokens"]
    return row_metrics(losses, cr, rr, terms["chosen"], terms["rejected"])


def stage_loss(cfg: StageConfig, batch: PreferenceBatch):
    """The stage's row loss on one batch, with the stage's β and params."""
    return methods.stage(cfg.kind).loss_fn()(batch, cfg.beta, **cfg.params)


def row_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, float]:
    stats = reward_stats(chosen_rewards, rejected_rewards)
    return {
        "loss": losses.mean().item(),
        "chosen_reward": stats["rewards/chosen"],
        "rejected_reward": stats["rewards/rejected"],
        # chosen reward above every rejected reward (random policy: 1/(k+1)); the _vs_mean variant compares with
        # the mean rejected reward, which is what the DMPO loss pushes (random: 1/2); equal for k = 1
        "reward_accuracy": stats["rewards/accuracy"],
        "reward_accuracy_vs_mean": (chosen_rewards > rejected_rewards.mean(dim=1)).float().mean().item(),
        "reward_margin": stats["rewards/margin"],
        "chosen_logp": chosen_logps.mean().item(),
        "rejected_logp": rejected_logps.mean().item(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Stage: what differs between SFT and a preference stage, in one place

@dataclass(frozen=True)
class StepScale:
    """What a micro-batch's loss is scaled by, so that the loss of a global batch is its mean whatever W and A are."""
    world: int  # processes W
    accum: int  # micro-batches per process and optimizer step A
    global_batch: int  # samples per optimizer step G
    global_tokens: int  # chosen tokens in the global batch (SFT's mean is per token)


class Stage:
    """One training stage as the loop sees it: the loss of a micro-batch, the metrics of an optimizer step (from the
    stats every process gathered) and the metrics of a validation pass. The loop itself is the same for every kind."""

    def __init__(self, cfg: StageConfig, ref: dict | None = None):
        self.cfg, self.kind, self.ref = cfg, cfg.kind, ref

    def loss(self, terms: dict, idx: list[int], scale: StepScale) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def step_metrics(self, g: dict) -> dict[str, float]:
        raise NotImplementedError

    def valid_metrics(self, got: dict) -> dict[str, float]:
        raise NotImplementedError


class SFTStage(Stage):
    def loss(self, terms, idx, scale):
        local = sum(x.numel() for x in terms["tokens"])
        # a token mean over the *global* batch: DDP averages over W, backward divides by A
        loss = sft_loss(terms["tokens"]) * (local * scale.world * scale.accum / scale.global_tokens)
        return loss, {"nll_sum": terms["nll_sum"], "n_tokens": terms["n_tokens"], "chosen_logp": terms["chosen"]}

    def step_metrics(self, g):
        return _sft_metrics(g["nll_sum"], g["n_tokens"], g["chosen_logp"])

    def valid_metrics(self, got):
        return _sft_metrics(got["nll_sum"], got["n_tokens"], got["chosen"])


def _sft_metrics(nll_sum, n_tokens, chosen_logp) -> dict[str, float]:
    return {"loss": (nll_sum.sum() / n_tokens.sum()).item(), "chosen_logp": chosen_logp.mean().item()}


class PreferenceStage(Stage):
    """A stage whose kind has a preference loss in prefrec.training.methods.STAGES. `ref` holds the reference
    log-probs per split ({"train": (chosen, rejected), "valid": ...}) when the row needs them, else None; `labels`
    the graded labels per split (or None per split when the samples carry none)."""

    def __init__(self, cfg: StageConfig, ref: dict | None = None, labels: dict | None = None):
        super().__init__(cfg, ref)
        self.labels = labels or {}

    def _split(self, split: str, idx: list[int] | None):
        sel = None if idx is None else torch.tensor(idx)
        pick = (lambda x: x) if sel is None else (lambda x: x[sel])
        ref = None if self.ref is None else tuple(pick(x) for x in self.ref[split])
        labels = self.labels.get(split)
        return ref, None if labels is None else pick(labels)

    def loss(self, terms, idx, scale):
        losses, cr, rr = stage_loss(self.cfg, preference_batch(terms, *self._split("train", idx)))
        if self.cfg.ftx:
            losses = losses + ftx_term(terms["tokens"], self.cfg.ftx)
        loss = losses.sum() * (scale.world * scale.accum / scale.global_batch)  # mean over the global batch
        return loss, {"losses": losses, "chosen_reward": cr, "rejected_reward": rr, "chosen_logp": terms["chosen"],
                      "rejected_logp": terms["rejected"]}

    def step_metrics(self, g):
        return row_metrics(g["losses"], g["chosen_reward"], g["rejected_reward"], g["chosen_logp"], g["rejected_logp"])

    def valid_metrics(self, got):
        return alignment_metrics(self.cfg, got, *self._split("valid", None))


def make_stage(cfg: StageConfig, ref: dict | None, labels: dict | None = None) -> Stage:
    return PreferenceStage(cfg, ref, labels) if methods.is_aligned(cfg.kind) else SFTStage(cfg)
