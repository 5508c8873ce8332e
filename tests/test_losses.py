"""prefrec.training.losses against float64 brute force of their formulas, TRL's DPO formula, and extreme inputs."""

import math

import pytest
import torch

from prefrec.training import losses as L
from prefrec.training.losses import PreferenceBatch, ftx_term, reward_stats, sft_loss


def _batch(pc, pr, rc, rr, **kw):
    """A PreferenceBatch of summed log-probs, with one token per response unless given."""
    ones = lambda x: torch.ones_like(x)  # noqa: E731
    return PreferenceBatch(pc, pr, kw.pop("ct", ones(pc)), kw.pop("rt", ones(pr)), rc, rr, **kw)


# the old call form (policy chosen, policy rejected, ref chosen, ref rejected, beta), kept for these tests
def dpo_loss(pc, pr, rc, rr, beta):
    return L.dpo_loss(_batch(pc, pr, rc, rr), beta)


def dmpo_loss(pc, pr, rc, rr, beta):
    return L.dmpo_loss(_batch(pc, pr, rc, rr), beta)


def sdpo_loss(pc, pr, rc, rr, beta):
    return L.sdpo_loss(_batch(pc, pr, rc, rr), beta)


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
    with pytest.raises(ValueError, match="ref_rejected"):
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


# ---------------------------------------------------------------------------------------------------------------
# The six losses beyond DPO/DMPO/S-DPO, each against a scalar float64 loop over its formula

def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _listwise_inputs(B, k, seed, graded=True):
    """Summed log-probs, token counts 1..12 and (optionally) ratings 1..5 with ties, as float64."""
    pc, pr, rc, rr = _inputs(B, k, scale=0.3, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    ct = torch.randint(1, 13, (B,), generator=g).double()
    rt = torch.randint(1, 13, (B, k), generator=g).double()
    labels = torch.randint(1, 6, (B, k + 1), generator=g).double() if graded else None
    return _batch(pc, pr, rc, rr, ct=ct, rt=rt, labels=labels), (pc, pr, rc, rr, ct, rt, labels)


def _simpo_brute(pc, pr, ct, rt, beta, gamma):
    out = []
    for b in range(pc.shape[0]):
        w = beta * pc[b].item() / ct[b].item()
        ls = [beta * pr[b, i].item() / rt[b, i].item() for i in range(pr.shape[1])]
        out.append(_neg_log_sigmoid(w - sum(ls) / len(ls) - gamma))
    return torch.tensor(out, dtype=torch.float64)


def _orpo_brute(pc, pr, ct, rt, nll, lam):
    def log_odds(m):  # P = exp(m): log(P / (1 − P)) straight from the definition
        P = math.exp(m)
        return math.log(P / (1.0 - P))
    out = []
    for b in range(pc.shape[0]):
        w = log_odds(pc[b].item() / ct[b].item())
        terms = [-_neg_log_sigmoid(w - log_odds(pr[b, i].item() / rt[b, i].item())) for i in range(pr.shape[1])]
        out.append(nll[b].item() - lam * sum(terms) / len(terms))
    return torch.tensor(out, dtype=torch.float64)


def _rewards_list(pc, pr, rc, rr, beta, b):
    return [beta * (pc[b].item() - rc[b].item())] + [beta * (pr[b, i].item() - rr[b, i].item())
                                                     for i in range(pr.shape[1])]


def _pl_brute(pc, pr, rc, rr, labels, beta):
    out = []
    for b in range(pc.shape[0]):
        r = _rewards_list(pc, pr, rc, rr, beta, b)
        psi = [1.0] + [0.0] * (len(r) - 1) if labels is None else labels[b].tolist()
        order = sorted(range(len(r)), key=lambda i: -psi[i])  # Python's sort is stable: ties keep the data order
        total = 0.0
        for pos, i in enumerate(order):
            later = order[pos + 1:]
            if later and psi[i] > min(psi[j] for j in later):
                total += _lse([r[j] for j in order[pos:]]) - r[i]
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def _lipo_brute(pc, pr, rc, rr, labels, beta):
    out = []
    for b in range(pc.shape[0]):
        r = _rewards_list(pc, pr, rc, rr, beta, b)
        psi = labels[b].tolist()
        by_reward = sorted(range(len(r)), key=lambda i: -r[i])
        rank = {i: n + 1 for n, i in enumerate(by_reward)}
        total = 0.0
        for i in range(len(r)):
            for j in range(len(r)):
                if psi[i] > psi[j]:
                    delta = abs((2 ** psi[i] - 1) - (2 ** psi[j] - 1)) * abs(
                        1 / math.log2(1 + rank[i]) - 1 / math.log2(1 + rank[j]))
                    total += delta * math.log1p(math.exp(-(r[i] - r[j])))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def _infonca_brute(pc, pr, rc, rr, labels, beta, alpha):
    out = []
    for b in range(pc.shape[0]):
        r = _rewards_list(pc, pr, rc, rr, beta, b)
        psi = labels[b].tolist()
        zt, zr = _lse([p / alpha for p in psi]), _lse(r)
        out.append(-sum(math.exp(p / alpha - zt) * (x - zr) for p, x in zip(psi, r)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 3, 15])
def test_simpo_orpo_match_float64_brute_force(k):
    batch, (pc, pr, rc, rr, ct, rt, _) = _listwise_inputs(8, k, seed=k)
    batch.ref_chosen = batch.ref_rejected = None  # reference-free: they must not read it
    got, cr, rj = L.simpo_loss(batch, 2.0, gamma=0.7)
    torch.testing.assert_close(got, _simpo_brute(pc, pr, ct, rt, 2.0, 0.7), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cr, 2.0 * pc / ct)
    torch.testing.assert_close(rj, 2.0 * pr / rt)
    batch.chosen_nll = -pc / ct
    got = L.orpo_loss(batch, 0.25)[0]
    torch.testing.assert_close(got, _orpo_brute(pc, pr, ct, rt, -pc / ct, 0.25), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 5, 15])
@pytest.mark.parametrize("graded", [True, False])
def test_plackett_luce_lipo_infonca_match_float64_brute_force(k, graded):
    batch, (pc, pr, rc, rr, _, _, labels) = _listwise_inputs(8, k, seed=10 + k, graded=graded)
    psi = labels if graded else torch.cat([torch.ones(8, 1), torch.zeros(8, k)], dim=1).double()
    torch.testing.assert_close(L.plackett_luce_loss(batch, 0.5)[0], _pl_brute(pc, pr, rc, rr, labels, 0.5),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(L.lipo_loss(batch, 0.5)[0], _lipo_brute(pc, pr, rc, rr, psi, 0.5),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(L.infonca_loss(batch, 0.5, alpha=0.8)[0],
                               _infonca_brute(pc, pr, rc, rr, psi, 0.5, 0.8), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [L.dpo_loss, L.dmpo_loss, L.sdpo_loss])
def test_label_smoothing_matches_float64_brute_force(fn):
    pc, pr, rc, rr = _inputs(6, 4, seed=21)
    eps, beta = 0.2, 0.3
    want = []
    for b in range(6):
        rw = beta * (pc[b].item() - rc[b].item())
        rl = [beta * (pr[b, i].item() - rr[b, i].item()) for i in range(4)]
        margins = {L.dpo_loss: [rw - r for r in rl], L.dmpo_loss: [rw - sum(rl) / 4],
                   L.sdpo_loss: [-_lse([r - rw for r in rl])]}[fn]
        want.append(sum((1 - eps) * _neg_log_sigmoid(m) + eps * _neg_log_sigmoid(-m) for m in margins)
                    / len(margins))
    got = fn(_batch(pc, pr, rc, rr), beta, label_smoothing=eps)[0]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.equal(fn(_batch(pc, pr, rc, rr), beta, label_smoothing=0.0)[0], fn(_batch(pc, pr, rc, rr), beta)[0])


def test_listwise_losses_reduce_to_dpo_and_sdpo():
    """Without labels PL is S-DPO for any k; with k = 1 S-DPO is DPO; InfoNCA at a small α is PL's first term."""
    batch, _ = _listwise_inputs(8, 5, seed=3, graded=False)
    torch.testing.assert_close(L.plackett_luce_loss(batch, 0.4)[0], L.sdpo_loss(batch, 0.4)[0], rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(L.infonca_loss(batch, 0.4, alpha=1e-3)[0], L.sdpo_loss(batch, 0.4)[0], rtol=1e-9,
                               atol=1e-9)
    one, _ = _listwise_inputs(8, 1, seed=4, graded=False)
    for fn in (L.plackett_luce_loss, L.sdpo_loss, L.dmpo_loss):
        torch.testing.assert_close(fn(one, 0.4)[0], L.dpo_loss(one, 0.4)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [L.simpo_loss, L.orpo_loss, L.plackett_luce_loss, L.lipo_loss, L.infonca_loss])
def test_new_losses_are_finite_with_finite_gradients_at_extremes(fn):
    """float32, k = 63, chosen far behind or ahead, and a response of log-prob ~0 (ORPO's odds → ∞)."""
    for sign in (1.0, -1.0):
        pc = torch.full((3,), sign * 300.0).clamp(max=-1e-3).requires_grad_()
        pr = torch.full((3, 63), -150.0).requires_grad_()
        batch = PreferenceBatch(pc, pr, torch.full((3,), 2.0), torch.full((3, 63), 2.0), torch.zeros(3),
                                torch.zeros(3, 63), labels=torch.randint(1, 6, (3, 64)).float(),
                                chosen_nll=-pc / 2.0)
        out = fn(batch, 1.0)[0]
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


@pytest.mark.parametrize("fn", [L.simpo_loss, L.orpo_loss, L.plackett_luce_loss, L.lipo_loss, L.infonca_loss])
def test_new_losses_push_the_chosen_up(fn):
    batch, (pc, *_rest) = _listwise_inputs(4, 3, seed=9, graded=False)
    batch.chosen = batch.chosen.clone().requires_grad_()
    batch.chosen_nll = -batch.chosen / batch.chosen_tokens
    fn(batch, 0.5)[0].sum().backward()
    assert (batch.chosen.grad < 0).all()


def test_a_loss_that_needs_the_reference_says_so():
    batch, _ = _listwise_inputs(2, 2, seed=1)
    batch.ref_chosen = None
    with pytest.raises(ValueError, match="reference"):
        L.dmpo_loss(batch, 0.1)
    with pytest.raises(ValueError, match="labels must have shape"):
        _batch(*_inputs(2, 2)[:4], labels=torch.zeros(2, 2))
