"""Preference losses for one chosen and k rejected responses, plus SFT and the ftx term.

Every loss here is a pure function of sequence log-probabilities; the model never appears. Each preference loss
takes one `PreferenceBatch` and its hyper-parameters (β and the row's extra ones, prefrec.training.methods) and
returns `(losses (B,), chosen_rewards (B,), rejected_rewards (B, k))`; the rewards are detached, for logging.

Notation (B samples, k negatives each):

    logp(y|x)   = Σ_t log π(y_t | x, y_<t)      summed over the response tokens only (not averaged)
    p̄(y|x)      = logp(y|x) / |y|               length-normalised (mean token log-prob)
    h(y|x)      = logp_θ(y|x) − logp_ref(y|x)   log-ratio to the frozen reference
    r(y|x)      = β · h(y|x)                     DPO's implicit reward
    w = the chosen response, l_1..l_k the rejected ones; ψ_i a graded label (a rating) of response i

    DPO     (Rafailov et al. 2023, eq. 7):     −log σ(r_w − r_l); k > 1: the mean over i of −log σ(r_w,i − r_l,i), k
            independent pairs (what the DMPO repository trains under the name "multiple negatives")
    DMPO    (DMPO paper, eq. 3):               −log σ(r_w − (1/k) Σ_i r_l,i)
    S-DPO   (Chen et al. 2024, 2406.09215):    −log σ(−log Σ_i exp(r_l,i − r_w)) = softplus(logsumexp_i(r_l,i − r_w))
    SimPO   (Meng et al. 2024, 2405.14734), multi-negative, no reference:  −log σ(β p̄_w − β · mean_i p̄_l,i − γ)
    ORPO    (Hong et al. 2024, 2403.07691), no reference:   SFT(w) − λ · mean_i log σ(log odds_w − log odds_l,i),
            odds(y) = P(y) / (1 − P(y)), P(y) = exp(p̄(y)); λ is β here (as in TRL)
    PL      Plackett–Luce listwise DPO (DPO paper, appendix A.3): for the ranking y_1 ≻ … ≻ y_K by ψ,
            −Σ_k log(exp(r_k) / Σ_{j ≥ k} exp(r_j)); with one positive and unranked negatives only the first term
            is left, which is S-DPO
    LiPO-λ  (Liu et al. 2024, 2402.01878):     Σ_{ψ_i > ψ_j} Δ_ij · log(1 + exp(−(r_i − r_j))),
            Δ_ij = |G_i − G_j| · |1/D_i − 1/D_j|, G = 2^ψ − 1, D_i = log2(1 + rank of i by the current rewards)
    InfoNCA (Chen et al. 2024, 2402.05369):    −Σ_i softmax(ψ/α)_i · log softmax(r)_i over the K = k+1 responses
    Label smoothing (cDPO, Mitchell 2023; RosePO, 2410.12519) on DPO, DMPO, S-DPO: with Δ the margin inside
            −log σ(Δ):  (1 − ε) · (−log σ(Δ)) + ε · (−log σ(−Δ))

With k = 1, DMPO and S-DPO equal DPO bit for bit (they share the reward computation and `−logsigmoid`, and a mean
or a logsumexp over one element returns it unchanged), and PL and InfoNCA at α → 0 equal it up to rounding; with
unlabelled negatives PL equals S-DPO for any k (tests/test_losses.py checks each).

Numerics: `−log σ(z)` is `−F.logsigmoid(z)`, finite with a finite gradient for any finite z; S-DPO and PL go through
`torch.logsumexp`, never `log(Σ exp)` (the S-DPO authors' version overflows at β·Δ ≈ 88 in float32); ORPO's
log(1 − P) is computed from log P without forming 1 − P.

Pairwise samples (DMPO task) give each rejected response its own prompt, hence its own chosen: `chosen` is then
(B, k), column i the chosen of rejected i's comparison. DPO pairs the columns; every other loss reads their mean
(the reward is linear in the log-probs, so that is the mean of the k chosen rewards, DMPO eq. 3's r(y_w|x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LossOutput = tuple[Tensor, Tensor, Tensor]  # losses (B,), chosen rewards (B,), rejected rewards (B, k), detached


@dataclass
class PreferenceBatch:
    """The inputs of every preference loss, one row per sample.

    chosen (B,) or (B, k), rejected (B, k): summed policy log-probs (graph kept). chosen_tokens, rejected_tokens:
    response token counts of the same shapes (for p̄). ref_chosen, ref_rejected: the reference's summed log-probs,
    same shapes, or None for a loss that needs no reference. labels (B, 1 + k): graded labels ψ of [chosen,
    rejected...] (e.g. the user's ratings), or None (then ψ = [1, 0, …, 0]). chosen_nll (B,): mean token NLL of the
    chosen response(s) (ORPO's SFT term, ftx)."""
    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    labels: Tensor | None = None
    chosen_nll: Tensor | None = None

    def __post_init__(self):
        if self.rejected.dim() == 1:  # (B,) means k = 1
            self.rejected, self.rejected_tokens = self.rejected[:, None], self.rejected_tokens[:, None]
            if self.ref_rejected is not None:
                self.ref_rejected = self.ref_rejected[:, None]
        self._check()

    def _check(self) -> None:
        B, shape = self.rejected.shape[0], tuple(self.rejected.shape)
        if self.chosen.dim() not in (1, 2):
            raise ValueError(f"chosen log-probs must have shape (B,) or (B, k), got {tuple(self.chosen.shape)}")
        if self.rejected.dim() != 2 or self.chosen.shape[0] != B:
            raise ValueError(f"rejected log-probs must have shape ({self.chosen.shape[0]}, k), got {shape}")
        if self.chosen.dim() == 2 and tuple(self.chosen.shape) != shape:
            raise ValueError(f"chosen log-probs of shape {tuple(self.chosen.shape)} must pair one-to-one with "
                             f"rejected of shape {shape}")
        for name, want in (("chosen_tokens", self.chosen.shape), ("rejected_tokens", self.rejected.shape),
                           ("ref_chosen", self.chosen.shape), ("ref_rejected", self.rejected.shape),
                           ("labels", (B, shape[1] + 1)), ("chosen_nll", (B,))):
            got = getattr(self, name)
            if got is not None and tuple(got.shape) != tuple(want):
                raise ValueError(f"{name} must have shape {tuple(want)}, got {tuple(got.shape)}")

    @property
    def k(self) -> int:
        return self.rejected.shape[1]

    def graded(self) -> Tensor:
        """ψ (B, 1 + k): the labels, or 1 for the chosen and 0 for every rejected response."""
        if self.labels is not None:
            return self.labels.to(self.rejected.dtype)
        psi = torch.zeros(self.rejected.shape[0], self.k + 1, dtype=self.rejected.dtype, device=self.rejected.device)
        psi[:, 0] = 1.0
        return psi


def _mean_chosen(chosen: Tensor) -> Tensor:
    """(B,) from per-pair chosen values (B, k) (their mean), or chosen (B,) itself."""
    return chosen.mean(dim=1) if chosen.dim() == 2 else chosen


def _listed(chosen: Tensor, rejected: Tensor) -> Tensor:
    """(B, 1 + k): [mean chosen, rejected...], the list the listwise losses rank."""
    return torch.cat([_mean_chosen(chosen)[:, None], rejected], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Implicit rewards (what a row logs as chosen/rejected rewards)

def dpo_rewards(batch: PreferenceBatch, beta: float) -> tuple[Tensor, Tensor]:
    """r = β (logp_θ − logp_ref): chosen (B,) or (B, k), rejected (B, k). Keeps the graph."""
    if batch.ref_chosen is None or batch.ref_rejected is None:
        raise ValueError("this loss needs the reference log-probs (ref_chosen, ref_rejected)")
    return beta * (batch.chosen - batch.ref_chosen), beta * (batch.rejected - batch.ref_rejected)


def normalised_rewards(batch: PreferenceBatch, beta: float) -> tuple[Tensor, Tensor]:
    """r = β p̄ = β logp / |y| (SimPO's reward; no reference): chosen (B,) or (B, k), rejected (B, k)."""
    return beta * batch.chosen / batch.chosen_tokens, beta * batch.rejected / batch.rejected_tokens


def _out(losses: Tensor, chosen: Tensor, rejected: Tensor) -> LossOutput:
    return losses, _mean_chosen(chosen).detach(), rejected.detach()


def _smoothed(margin: Tensor, label_smoothing: float) -> Tensor:
    """(1 − ε)(−log σ(Δ)) + ε(−log σ(−Δ)); exactly −log σ(Δ) when ε = 0."""
    loss = -F.logsigmoid(margin)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-margin)
    return loss


# ---------------------------------------------------------------------------------------------------------------
# The losses

def dpo_loss(batch: PreferenceBatch, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    """DPO: (1/k) Σ_i −log σ(r_w,i − r_l,i). chosen (B,) is one chosen for all (candidates: one prompt); chosen
    (B, k) gives each rejected its own (pairwise). With k = 1 and ε = 0 this is TRL's `loss_type="sigmoid"`."""
    chosen, rejected = dpo_rewards(batch, beta)
    paired = chosen if chosen.dim() == 2 else chosen[:, None]
    return _out(_smoothed(paired - rejected, label_smoothing).mean(dim=1), chosen, rejected)


def dmpo_loss(batch: PreferenceBatch, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    """DMPO eq. 3: −log σ(r_w − (1/k) Σ_i r_l,i). The rewards are averaged before the sigmoid, unlike the DMPO
    repository, which averages k pairwise losses (docs/evaluate.md, the papers' code)."""
    chosen, rejected = dpo_rewards(batch, beta)
    return _out(_smoothed(_mean_chosen(chosen) - rejected.mean(dim=1), label_smoothing), chosen, rejected)


def sdpo_loss(batch: PreferenceBatch, beta: float, label_smoothing: float = 0.0) -> LossOutput:
    """S-DPO: −log σ(−logsumexp_i(r_l,i − r_w)), finite for any reward gap."""
    chosen, rejected = dpo_rewards(batch, beta)
    margin = -torch.logsumexp(rejected - _mean_chosen(chosen)[:, None], dim=1)
    return _out(_smoothed(margin, label_smoothing), chosen, rejected)


def simpo_loss(batch: PreferenceBatch, beta: float, gamma: float = 1.0) -> LossOutput:
    """SimPO, multi-negative: −log σ(β p̄_w − β · mean_i p̄_l,i − γ); no reference; γ the target margin."""
    chosen, rejected = normalised_rewards(batch, beta)
    return _out(-F.logsigmoid(_mean_chosen(chosen) - rejected.mean(dim=1) - gamma), chosen, rejected)


def _log_odds(mean_logp: Tensor) -> Tensor:
    """log(P / (1 − P)) from log P = p̄ ≤ 0, with log(1 − P) as log(−expm1(p̄)) near 0 and log1p(−exp(p̄)) below
    −log 2 (each accurate where the other loses digits). p̄ = 0 exactly (P = 1) is clamped to just below 0."""
    m = mean_logp.clamp(max=-1e-6)
    log1m = torch.where(m > -0.6931, torch.log(-torch.expm1(m)), torch.log1p(-torch.exp(m)))
    return m - log1m


def orpo_loss(batch: PreferenceBatch, beta: float) -> LossOutput:
    """ORPO: SFT(w) − λ · mean_i log σ(log odds_w − log odds_l,i), λ = β; no reference. The SFT term is the chosen
    responses' mean token NLL (`batch.chosen_nll`); rewards logged as β p̄ (as TRL's ORPOTrainer does)."""
    if batch.chosen_nll is None:
        raise ValueError("orpo_loss needs chosen_nll (the SFT term)")
    p_w = _mean_chosen(batch.chosen / batch.chosen_tokens)
    p_l = batch.rejected / batch.rejected_tokens
    ratio = F.logsigmoid(_log_odds(p_w)[:, None] - _log_odds(p_l)).mean(dim=1)
    chosen, rejected = normalised_rewards(batch, beta)
    return _out(batch.chosen_nll - beta * ratio, chosen, rejected)


def plackett_luce_loss(batch: PreferenceBatch, beta: float) -> LossOutput:
    """Plackett–Luce over the responses ranked by ψ (descending; ties keep the data order): Σ over ranked positions
    k of logsumexp(r_{k:}) − r_k. A position counts only when some later response has a lower ψ, so an unranked tail
    (all ψ equal) adds nothing: without labels only the first term is left (= S-DPO)."""
    chosen, rejected = dpo_rewards(batch, beta)
    psi = batch.graded()
    order = torch.sort(psi, dim=1, descending=True, stable=True).indices
    r = _listed(chosen, rejected).gather(1, order)
    psi = psi.gather(1, order)
    tail_lse = torch.flip(torch.logcumsumexp(torch.flip(r, [1]), dim=1), [1])  # logsumexp(r_{k:}) for each k
    tail_min = torch.flip(torch.cummin(torch.flip(psi, [1]), dim=1).values, [1])
    ranked = torch.cat([psi[:, :-1] > tail_min[:, 1:], torch.zeros_like(psi[:, :1], dtype=torch.bool)], dim=1)
    return _out(((tail_lse - r) * ranked).sum(dim=1), chosen, rejected)


def lipo_loss(batch: PreferenceBatch, beta: float) -> LossOutput:
    """LiPO-λ: Σ_{ψ_i > ψ_j} Δ_ij · softplus(−(r_i − r_j)), with the LambdaRank weight Δ_ij = |G_i − G_j| ·
    |1/D_i − 1/D_j| from gains G = 2^ψ − 1 and discounts D = log2(1 + rank), the ranks by the current rewards
    (detached; ties keep the data order)."""
    chosen, rejected = dpo_rewards(batch, beta)
    r, psi = _listed(chosen, rejected), batch.graded()
    rank = torch.argsort(torch.argsort(-r.detach(), dim=1, stable=True), dim=1) + 1  # 1 = best
    inv_d = 1.0 / torch.log2(1.0 + rank.to(r.dtype))
    gain = torch.pow(2.0, psi) - 1.0
    delta = (gain[:, :, None] - gain[:, None, :]).abs() * (inv_d[:, :, None] - inv_d[:, None, :]).abs()
    better = psi[:, :, None] > psi[:, None, :]
    pair_loss = F.softplus(-(r[:, :, None] - r[:, None, :]))
    return _out((delta * pair_loss * better).sum(dim=(1, 2)), chosen, rejected)


def infonca_loss(batch: PreferenceBatch, beta: float, alpha: float = 1.0) -> LossOutput:
    """InfoNCA: −Σ_i softmax(ψ/α)_i log softmax(r)_i over [chosen, rejected...]: a cross-entropy of the policy's
    rewards against the labels' soft targets; α the labels' temperature."""
    chosen, rejected = dpo_rewards(batch, beta)
    target = torch.softmax(batch.graded() / alpha, dim=1)
    losses = -(target * torch.log_softmax(_listed(chosen, rejected), dim=1)).sum(dim=1)
    return _out(losses, chosen, rejected)


# ---------------------------------------------------------------------------------------------------------------
# SFT, ftx, logging

def sft_loss(token_logps: list[Tensor]) -> Tensor:
    """SFT: mean token negative log-likelihood over all response tokens of the batch (scalar).

    token_logps: one tensor (T_j,) of per-token log-probs per response. Every token weighs the same, as in a
    causal-LM cross-entropy with the prompt tokens masked out (DMPO paper eq. 2)."""
    if not token_logps:
        raise ValueError("sft_loss needs at least one response")
    flat = torch.cat([t.reshape(-1) for t in token_logps])
    if flat.numel() == 0:
        raise ValueError("sft_loss: the responses have no tokens")
    return -flat.mean()


def ftx_term(chosen_token_logps: list[Tensor], gamma: float) -> Tensor:
    """The optional ftx regulariser, per example: γ · (mean token NLL of the chosen response), shape (B,) (the DMPO
    code trains with γ = 1). Each example is averaged over its own tokens, so the term does not grow with the title."""
    return torch.stack([-t.mean() for t in chosen_token_logps]) * gamma


def reward_stats(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, float]:
    """Logging helpers from detached rewards: accuracy = 1[r_w > max_i r_l,i], margin = r_w − mean_i r_l,i."""
    if rejected_rewards.dim() == 1:
        rejected_rewards = rejected_rewards[:, None]
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards.max(dim=1).values).float().mean().item(),
        "rewards/margin": (chosen_rewards - rejected_rewards.mean(dim=1)).mean().item(),
    }
