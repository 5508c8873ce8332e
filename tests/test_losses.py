"""prefrec.training.losses against float64 brute force of the DESIGN §4 formulas, TRL's DPO formula, and extreme inputs."""

import math

import pytest
import torch

from prefrec.training.losses import dmpo_loss, dpo_loss, ftx_term, reward_stats, sdpo_loss, sft_loss


def _inputs(B, k, scale=5.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pc = -scale * torch.rand(B, generator=g, dtype=dtype) * 10
    pr = -scale * torch.rand(B, k, generator=g, dtype=dtype) * 10
    rc = -scale * torch.rand(B, generator=g, dtype=dtype) * 10
    rr = -scale * torch.rand(B, k, generator=g, dtype=dtype) * 10
    return pc, pr, rc, rr


def _neg_log_sigmoid(z: float) -> float:
    # −log σ(z) = log(1 + e^{−z}), written two ways so neither overflows
    return math.log1p(math.exp(-z)) if z > 0 else -z + math.log1p(math.exp(z))


def _brute(pc, pr, rc, rr, beta):
    """Scalar Python float64 loops over the formulas, one example at a time."""
    out = {"dpo": [], "dmpo": [], "sdpo": []}
    for b in range(pc.shape[0]):
        rw = beta * (pc[b].item() - rc[b].item())
        rl = [beta * (pr[b, i].item() - rr[b, i].item()) for i in range(pr.shape[1])]
        k = len(rl)
        out["dpo"].append(sum(_neg_log_sigmoid(rw - r) for r in rl) / k)
        out["dmpo"].append(_neg_log_sigmoid(rw - sum(rl) / k))
        m = max(r - rw for r in rl)
        lse = m + math.log(sum(math.exp(r - rw - m) for r in rl))
        out["sdpo"].append(_neg_log_sigmoid(-lse))
    return {name: torch.tensor(v, dtype=torch.float64) for name, v in out.items()}


@pytest.mark.parametrize("k", [1, 2, 3, 7, 15])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_losses_match_float64_brute_force(k, beta):
    pc, pr, rc, rr = _inputs(6, k, seed=k)
    want = _brute(pc, pr, rc, rr, beta)
    for name, fn in (("dpo", dpo_loss), ("dmpo", dmpo_loss), ("sdpo", sdpo_loss)):
        losses, cr, rj = fn(pc, pr, rc, rr, beta)
        assert losses.shape == (6,) and cr.shape == (6,) and rj.shape == (6, k)
        torch.testing.assert_close(losses, want[name], rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(cr, beta * (pc - rc))
        torch.testing.assert_close(rj, beta * (pr - rr))


def test_multi_negative_losses_differ_from_each_other():
    # guards against two of the three accidentally being the same formula
    pc, pr, rc, rr = _inputs(4, 5, seed=3)
    a, b, c = (fn(pc, pr, rc, rr, 0.5)[0] for fn in (dpo_loss, dmpo_loss, sdpo_loss))
    assert (a - b).abs().min() > 1e-6 and (b - c).abs().min() > 1e-6 and (a - c).abs().min() > 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k1_equals_dpo_exactly(dtype):
    pc, pr, rc, rr = _inputs(16, 1, seed=7, dtype=dtype)
    dpo = dpo_loss(pc, pr, rc, rr, 0.1)[0]
    assert torch.equal(dmpo_loss(pc, pr, rc, rr, 0.1)[0], dpo)
    assert torch.equal(sdpo_loss(pc, pr, rc, rr, 0.1)[0], dpo)
    # rejected given as (B,) means k = 1
    assert torch.equal(dmpo_loss(pc, pr[:, 0], rc, rr[:, 0], 0.1)[0], dpo)


def test_dpo_equals_trl_sigmoid_loss():
    """TRL DPOTrainer, loss_type="sigmoid", label_smoothing=0 (https://huggingface.co/docs/trl/dpo_trainer, "Loss
    functions"):
    logits = (π_c − π_r) − (ref_c − ref_r);  loss = −logsigmoid(β · logits).  Written here independently."""
    pc, pr, rc, rr = _inputs(32, 1, seed=11)
    for beta in (0.01, 0.1, 0.5, 2.0):
        trl = -torch.nn.functional.logsigmoid(beta * ((pc - pr[:, 0]) - (rc - rr[:, 0])))
        torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta)[0], trl, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [dpo_loss, dmpo_loss, sdpo_loss])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_losses_and_gradients_at_extreme_gaps(fn, sign):
    # β·Δ = ±1e3 with k = 63 in float32: the naive log(Σ exp) of S-DPO overflows at ≈ 88
    B, k, beta = 3, 63, 1.0
    pc = torch.full((B,), sign * 1e3, requires_grad=True)
    pr = torch.zeros(B, k, requires_grad=True)
    rc, rr = torch.zeros(B), torch.zeros(B, k)
    losses, _, _ = fn(pc, pr, rc, rr, beta)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    if sign > 0:  # chosen far ahead: no loss, no gradient
        assert losses.max() < 1e-6 and pc.grad.abs().max() < 1e-6
    else:  # chosen far behind: loss ≈ 1e3 (+ log k for S-DPO), d loss / d π_c = −β
        want = 1e3 + (math.log(k) if fn is sdpo_loss else 0.0)
        torch.testing.assert_close(losses, torch.full((B,), want), rtol=1e-6, atol=1e-3)
        torch.testing.assert_close(pc.grad, torch.full((B,), -beta))
        torch.testing.assert_close(pr.grad.sum(dim=1), torch.full((B,), beta))


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr, rc, rr = _inputs(4, 3, seed=5)
    for fn in (dpo_loss, dmpo_loss, sdpo_loss):
        a, b = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        fn(a, b, rc, rr, 0.2)[0].sum().backward()
        assert (a.grad < 0).all() and (b.grad > 0).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="ref rejected"):
        dmpo_loss(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError, match="rejected log-probs"):
        dmpo_loss(torch.zeros(2), torch.zeros(3, 3), torch.zeros(2), torch.zeros(3, 3), 0.1)


def test_sft_loss_and_ftx_term():
    toks = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5]), torch.tensor([-3.0, -1.0, -2.0])]
    assert sft_loss(toks).item() == pytest.approx((1 + 2 + 0.5 + 3 + 1 + 2) / 6)
    torch.testing.assert_close(ftx_term(toks, 2.0), torch.tensor([3.0, 1.0, 4.0]))
    with pytest.raises(ValueError):
        sft_loss([])


def test_reward_stats():
    s = reward_stats(torch.tensor([1.0, 0.0]), torch.tensor([[0.5, -1.0], [0.5, -1.0]]))
    assert s["rewards/accuracy"] == 0.5
    assert s["rewards/margin"] == pytest.approx(((1 + 0.25) + 0.25) / 2)


def test_dpo_with_k_pairs_is_the_mean_of_k_independent_pairwise_losses():
    """Pairwise samples: comparison i has its own prompt, its own chosen and its own rejected response. DPO with
    k > 1 is the mean of the k one-pair DPO losses, each chosen paired with its own rejected (not the mean chosen
    paired with every rejected)."""
    pc, pr, rc, rr = _inputs(4, 3, seed=7)
    pc_pairs, rc_pairs = pc[:, None] + torch.tensor([0.0, -3.0, 2.0], dtype=torch.float64), rc[:, None].repeat(1, 3)
    got, cr, _ = dpo_loss(pc_pairs, pr, rc_pairs, rr, 0.5)
    singles = torch.stack([dpo_loss(pc_pairs[:, i], pr[:, i], rc_pairs[:, i], rr[:, i], 0.5)[0] for i in range(3)])
    torch.testing.assert_close(got, singles.mean(dim=0), rtol=1e-12, atol=1e-12)
    for b in range(4):  # and by hand
        want = sum(_neg_log_sigmoid(0.5 * ((pc_pairs[b, i] - rc_pairs[b, i]) - (pr[b, i] - rr[b, i])).item())
                   for i in range(3)) / 3
        assert got[b].item() == pytest.approx(want, rel=1e-12)
    torch.testing.assert_close(cr, 0.5 * (pc_pairs - rc_pairs).mean(dim=1))
    # a chosen column per rejected response changes nothing when all columns are the same
    same = dpo_loss(pc[:, None].expand(4, 3), pr, rc[:, None].expand(4, 3), rr, 0.5)[0]
    torch.testing.assert_close(same, dpo_loss(pc, pr, rc, rr, 0.5)[0], rtol=0, atol=0)
    # DMPO and S-DPO read per-pair chosen log-probs as their mean (DMPO eq. 3's r(y_w|x) over the k prompts)
    for fn in (dmpo_loss, sdpo_loss):
        torch.testing.assert_close(fn(pc_pairs, pr, rc_pairs, rr, 0.5)[0],
                                   fn(pc_pairs.mean(1), pr, rc_pairs.mean(1), rr, 0.5)[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="pair one-to-one"):
        dpo_loss(pc_pairs[:, :2], pr, rc_pairs[:, :2], rr, 0.5)
