"""Preference losses for one chosen and k rejected responses: DPO, DMPO, S-DPO, plus SFT and the ftx term.

Every loss here is a pure function of sequence log-probabilities; the model never appears. Notation (DESIGN §4):

    logp(y|x)   = Σ_t log π(y_t | x, y_<t)          summed over the response tokens only (not averaged)
    r(y|x)      = β · (logp_θ(y|x) − logp_ref(y|x))  the implicit reward of DPO
    r_w         = r(y_w|x)                            chosen response,        shape (B,)
    r_l,i       = r(y_l,i|x_i), i = 1..k              rejected responses,     shape (B, k)

    DPO    (Rafailov et al. 2023, eq. 7):  −log σ(r_w − r_l)
           with k > 1 rejected responses: the mean over i of −log σ(r_w,i − r_l,i), i.e. k independent pairs, each
           rejected response with the chosen of its own comparison (one prompt: the same chosen for all; what the
           DMPO repository trains under the name "multiple negatives").
    DMPO   (DMPO paper, eq. 3):            −log σ(r_w − (1/k) Σ_i r_l,i)
    S-DPO  (Chen et al. 2024, arXiv 2406.09215):
           −log σ(−log Σ_i exp(r_l,i − r_w)) = softplus(logsumexp_i(r_l,i − r_w))

With k = 1 the three are the same number, bit for bit: every loss goes through the same reward computation and the
same `−logsigmoid`, and a mean or a logsumexp over one element returns it unchanged.

Numerics: `−log σ(z)` is computed as `−F.logsigmoid(z)`, finite with a finite gradient for any finite z (an
explicit `log(1 + exp(−z))` overflows at z ≈ −88 in float32); S-DPO goes through `torch.logsumexp`, never
`log(Σ exp)` (the authors' version overflows at β·Δ ≈ 88 in float32, DESIGN §7).

Each preference loss returns `(losses (B,), chosen_rewards (B,), rejected_rewards (B, k))`; the rewards are detached,
for logging (reward accuracy = mean over the batch of 1[chosen_reward > every rejected reward], margin =
chosen_reward − mean rejected reward). Reduce the per-example losses with `.mean()` yourself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rewards(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
            ref_rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Implicit rewards r = β (logp_θ − logp_ref): chosen (B,) [or (B, k)], rejected (B, k). Keeps the graph.

    `policy_rejected_logps` / `ref_rejected_logps` of shape (B,) are read as k = 1 and returned as (B, 1).
    Chosen log-probs of shape (B, k) pair column i with rejected response i (each comparison's own chosen, as
    `Scores.chosen_rejected(pairs=True)` gives them); the policy and reference chosen must have the same shape.
    """
    if policy_chosen_logps.dim() not in (1, 2):
        raise ValueError(f"chosen log-probs must have shape (B,) or (B, k), got {tuple(policy_chosen_logps.shape)}")
    if policy_rejected_logps.dim() == 1:
        policy_rejected_logps = policy_rejected_logps[:, None]
    if ref_rejected_logps.dim() == 1:
        ref_rejected_logps = ref_rejected_logps[:, None]
    B = policy_chosen_logps.shape[0]
    if ref_chosen_logps.shape != policy_chosen_logps.shape:
        raise ValueError(f"ref chosen log-probs must have shape {tuple(policy_chosen_logps.shape)}, "
                         f"got {tuple(ref_chosen_logps.shape)}")
    if policy_rejected_logps.dim() != 2 or policy_rejected_logps.shape[0] != B:
        raise ValueError(f"rejected log-probs must have shape ({B}, k), got {tuple(policy_rejected_logps.shape)}")
    if ref_rejected_logps.shape != policy_rejected_logps.shape:
        raise ValueError(f"ref rejected log-probs must have shape {tuple(policy_rejected_logps.shape)}, "
                         f"got {tuple(ref_rejected_logps.shape)}")
    if policy_chosen_logps.dim() == 2 and policy_chosen_logps.shape != policy_rejected_logps.shape:
        raise ValueError(f"chosen log-probs of shape {tuple(policy_chosen_logps.shape)} must pair one-to-one with "
                         f"rejected of shape {tuple(policy_rejected_logps.shape)}")
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    return chosen, rejected


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023): loss_b = (1/k) Σ_i −log σ(r_w,i − r_l,i), k independent pairwise DPO losses.

    r_w,i is the reward of the chosen response that rejected response i is compared with: chosen (B,) means one
    chosen for all (candidates: one prompt), chosen (B, k) gives each rejected its own (pairwise: comparison i's
    prompt and its chosen ordering). Shapes: rejected (B, k) [or (B,) for k = 1] -> (losses (B,), chosen_rewards
    (B,) (averaged over k when given per pair), rejected_rewards (B, k)). With k = 1 this is exactly TRL's
    `loss_type="sigmoid"` with label_smoothing = 0.
    """
    chosen, rejected = rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    paired = chosen if chosen.dim() == 2 else chosen[:, None]
    losses = -F.logsigmoid(paired - rejected).mean(dim=1)
    return losses, _mean_chosen(chosen).detach(), rejected.detach()


def _mean_chosen(chosen: Tensor) -> Tensor:
    """(B,) chosen rewards: per-pair chosen rewards (B, k) averaged (the reward is linear in the log-probs)."""
    return chosen.mean(dim=1) if chosen.dim() == 2 else chosen


def dmpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """DMPO (DMPO paper eq. 3): loss_b = −log σ(r_w − (1/k) Σ_i r_l,i).

    The k rejected responses may answer different prompts x_i (pairwise task: one prompt per negative item); their
    rewards are averaged before the sigmoid, unlike the DMPO repository, which averages k pairwise losses (§7).
    Shapes: chosen (B,), rejected (B, k) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B, k)).
    """
    chosen, rejected = rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    chosen = _mean_chosen(chosen)
    losses = -F.logsigmoid(chosen - rejected.mean(dim=1))
    return losses, chosen.detach(), rejected.detach()


def sdpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """S-DPO (Chen et al. 2024, arXiv 2406.09215): loss_b = −log σ(−log Σ_i exp(r_l,i − r_w)).

    Computed as −logsigmoid(−logsumexp_i(r_l,i − r_w)), which stays finite for any reward gap.
    Shapes: chosen (B,), rejected (B, k) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B, k)).
    """
    chosen, rejected = rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    chosen = _mean_chosen(chosen)
    losses = -F.logsigmoid(-torch.logsumexp(rejected - chosen[:, None], dim=1))
    return losses, chosen.detach(), rejected.detach()


def sft_loss(token_logps: list[Tensor]) -> Tensor:
    """SFT: mean token negative log-likelihood over all response tokens of the batch (scalar).

    token_logps: one tensor (T_j,) of per-token log-probs per response (e.g. `Scores.token_logps` of the chosen
    responses). Every token weighs the same, as in a causal-LM cross-entropy with the prompt tokens masked out
    (DMPO paper eq. 2).
    """
    if not token_logps:
        raise ValueError("sft_loss needs at least one response")
    flat = torch.cat([t.reshape(-1) for t in token_logps])
    if flat.numel() == 0:
        raise ValueError("sft_loss: the responses have no tokens")
    return -flat.mean()


def ftx_term(chosen_token_logps: list[Tensor], gamma: float) -> Tensor:
    """The optional ftx regulariser, per example: γ · (mean token NLL of the chosen response), shape (B,).

    Add it to a preference loss's per-example losses: `losses + ftx_term(chosen_tokens, gamma)` (the DMPO code trains
    with γ = 1). Each example's chosen response is averaged over its own tokens, so the term does not grow with the
    length of the title.
    """
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
