"""ppo.train.loss against an independent float64 numpy implementation of the formulas in docs/concepts/loss.md."""

import math

import mlx.core as mx
import numpy as np
import pytest

from ppo.train.loss import dpo_loss, implicit_rewards, logprob_gap_advantages, ppo_loss

MAX_LOG_RATIO = 20.0


def reference_ppo(pc, pr, rc, rr, eps, beta, adv=None):
    """The seed's loss (docs/concepts/loss.md), written out plainly in numpy float64 (log-ratio clamp as documented)."""
    pc, pr, rc, rr = (np.asarray(x, np.float64) for x in (pc, pr, rc, rr))
    if adv is None:
        gap = pc - pr
        adv = (gap - gap.mean()) / (gap.std() + 1e-8)  # population std
    adv = np.asarray(adv, np.float64)
    rho_c = np.exp(np.clip(pc - rc, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    rho_r = np.exp(np.clip(pr - rr, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    l_c = -np.minimum(rho_c * adv, np.clip(rho_c, 1 - eps, 1 + eps) * adv)
    l_r = -np.minimum(rho_r * -adv, np.clip(rho_r, 1 - eps, 1 + eps) * -adv)
    policy_loss = l_c.mean() + l_r.mean()
    kl = np.concatenate([pc - rc, pr - rr]).mean()
    ratios = np.concatenate([rho_c, rho_r])
    clip_fraction = np.mean((ratios < 1 - eps) | (ratios > 1 + eps))
    return policy_loss + beta * kl, {"policy_loss": policy_loss, "kl": kl, "kl_penalty": beta * kl, "clip_fraction": clip_fraction}


def _inputs(rng, b, scale_policy, scale_gap):
    ref_c = rng.normal(-30, 5, b)
    ref_r = rng.normal(-30, 5, b)
    return (ref_c + rng.normal(0, scale_gap, b), ref_r + rng.normal(0, scale_gap, b), ref_c, ref_r)


CASES = [
    ("random-small", 8, 0.1),
    ("random-medium", 16, 1.0),
    ("single-pair", 1, 0.3),
    ("extreme", 8, 1000.0),
]


@pytest.mark.parametrize("name,b,scale", CASES)
@pytest.mark.parametrize("judge_advantage", [True, False])
def test_ppo_loss_matches_formula(name, b, scale, judge_advantage):
    rng = np.random.default_rng(hash(name) % 2**32)
    pc, pr, rc, rr = _inputs(rng, b, 1.0, scale)
    adv = rng.uniform(0, 1, b) if judge_advantage else None
    for eps, beta in [(0.2, 0.1), (0.1, 0.0), (0.3, 0.5)]:
        expected, expected_metrics = reference_ppo(pc, pr, rc, rr, eps, beta, adv)
        loss, metrics = ppo_loss(*(mx.array(x, mx.float32) for x in (pc, pr, rc, rr)), epsilon=eps, beta=beta,
                                 advantages=None if adv is None else mx.array(adv, mx.float32))
        scale_tol = max(1.0, abs(expected))
        assert np.isfinite(loss.item())
        assert abs(loss.item() - expected) <= 1e-4 * scale_tol, (name, eps, beta)
        for key, value in expected_metrics.items():
            assert abs(metrics[key].item() - value) <= 1e-4 * max(1.0, abs(value)), key


@pytest.mark.parametrize("log_ratio", [1000.0, -1000.0, 88.0, -88.0])
def test_no_nan_or_inf_in_loss_or_gradient_for_extreme_log_ratios(log_ratio):
    b = 4
    ref = mx.full((b,), -50.0)
    adv = mx.array([1.0, -1.0, 0.5, 0.0])

    def f(pc, pr):
        loss, _ = ppo_loss(pc, pr, ref, ref, epsilon=0.2, beta=0.1, advantages=adv)
        return loss

    pc = ref + log_ratio
    pr = ref - log_ratio
    loss, (gc, gr) = mx.value_and_grad(f, argnums=(0, 1))(pc, pr)
    assert np.isfinite(loss.item())
    assert np.all(np.isfinite(np.array(gc))) and np.all(np.isfinite(np.array(gr)))
    _, metrics = ppo_loss(pc, pr, ref, ref, epsilon=0.2, beta=0.1, advantages=adv)
    assert all(np.isfinite(v.item()) for v in metrics.values())


def test_ratio_one_means_no_clipping_and_loss_minus_zero():
    x = mx.array([-10.0, -20.0])
    loss, metrics = ppo_loss(x, x, x, x, epsilon=0.2, beta=0.1, advantages=mx.array([1.0, 0.5]))
    assert metrics["clip_fraction"].item() == 0.0
    assert metrics["kl"].item() == 0.0
    # rho = 1: L_c = -A, L_r = +A, they cancel
    assert abs(loss.item()) < 1e-7


def _grad_of_policy(pc, pr, rc, rr, adv):
    def f(pc, pr):
        return ppo_loss(pc, pr, rc, rr, epsilon=0.2, beta=0.1, advantages=adv)[0]

    return mx.grad(f, argnums=(0, 1))(pc, pr)


def test_judge_advantage_swap_changes_gradient():
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (mx.array(x, mx.float32) for x in _inputs(rng, 6, 1.0, 0.05))
    adv = mx.ones((6,))
    gc, gr = _grad_of_policy(pc, pr, rc, rr, adv)
    # swap which completion is chosen: the gradient on the first sequences must flip sign
    sc, sr = _grad_of_policy(pr, pc, rr, rc, adv)
    # gradient on the first sequences: gc when they are chosen, sr when they are rejected
    assert np.abs(np.array(gc) - np.array(sr)).max() > 0.1
    # the policy term pushes them up when chosen and down when rejected
    assert np.all(np.array(gc) < 0) and np.all(np.array(sr) > 0)


def test_logprob_gap_advantage_is_label_blind():
    """The seed-literal advantage gives the same loss when chosen and rejected swap (docs/concepts/loss.md)."""
    rng = np.random.default_rng(1)
    pc, pr, rc, rr = (mx.array(x, mx.float32) for x in _inputs(rng, 6, 1.0, 0.05))
    loss, _ = ppo_loss(pc, pr, rc, rr, epsilon=0.2, beta=0.1)
    swapped, _ = ppo_loss(pr, pc, rr, rc, epsilon=0.2, beta=0.1)
    assert abs(loss.item() - swapped.item()) < 1e-5

    def f(pc, pr, rc, rr):
        return ppo_loss(pc, pr, rc, rr, epsilon=0.2, beta=0.1)[0]

    gc, gr = mx.grad(f, argnums=(0, 1))(pc, pr, rc, rr)
    sc, sr = mx.grad(f, argnums=(0, 1))(pr, pc, rr, rc)
    assert np.allclose(np.array(gc), np.array(sr), atol=1e-5)
    one, _ = ppo_loss(pc[:1], pr[:1], rc[:1], rr[:1], epsilon=0.2, beta=0.0)
    assert abs(one.item()) < 1e-6  # batch of one pair: zero advantage


def test_logprob_gap_uses_population_std():
    c, r = mx.array([1.0, 2.0, 4.0]), mx.array([0.0, 0.0, 0.0])
    gap = np.array([1.0, 2.0, 4.0])
    expected = (gap - gap.mean()) / (gap.std(ddof=0) + 1e-8)
    assert np.allclose(np.array(logprob_gap_advantages(c, r)), expected, atol=1e-6)


def test_advantages_carry_no_gradient():
    pc, pr, rc, rr = mx.array([-5.0]), mx.array([-6.0]), mx.array([-5.5]), mx.array([-5.5])

    def f(a):
        return ppo_loss(pc, pr, rc, rr, epsilon=0.2, beta=0.1, advantages=a)[0]

    assert mx.grad(f)(mx.array([0.7])).item() == 0.0


def reference_dpo(pc, pr, rc, rr, beta, kind, delta=50.0):
    h = (pc - rc) - (pr - rr)
    if kind == "sigmoid":
        return np.mean(np.log1p(np.exp(-beta * h)))
    if kind == "hinge":
        return np.mean(np.maximum(0, 1 - beta * h))
    if kind == "ipo":
        return np.mean((h - 1 / (2 * beta)) ** 2)
    return np.mean(np.log1p(np.exp(-beta * (h - delta * np.maximum(0, rc - pc)))))


@pytest.mark.parametrize("kind", ["sigmoid", "hinge", "ipo", "dpop"])
def test_dpo_family_matches_formula(kind):
    rng = np.random.default_rng(3)
    pc, pr, rc, rr = _inputs(rng, 8, 1.0, 0.5)
    loss, _ = dpo_loss(*(mx.array(x, mx.float32) for x in (pc, pr, rc, rr)), beta=0.1, loss_type=kind)
    assert abs(loss.item() - reference_dpo(pc, pr, rc, rr, 0.1, kind)) < 1e-4 * max(1, abs(loss.item()))


def test_implicit_rewards():
    m = implicit_rewards(mx.array([-1.0]), mx.array([-3.0]), mx.array([-2.0]), mx.array([-2.0]), beta=0.5)
    assert m["rewards/chosen"].item() == 0.5 and m["rewards/rejected"].item() == -0.5
    assert m["rewards/margins"].item() == 1.0 and m["rewards/accuracies"].item() == 1.0


def test_sequence_kl_estimators_match_formulas():
    from ppo.train.loss import sequence_kl

    rng = np.random.default_rng(5)
    logp = rng.normal(-3, 1, (3, 5)).astype(np.float32)
    ref = (logp + rng.normal(0, 0.5, (3, 5))).astype(np.float32)
    mask = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.float32)
    d = ref - logp
    k1 = ((logp - ref) * mask).sum(1)
    k3 = ((np.exp(d) - d - 1) * mask).sum(1)
    args = (mx.array(logp), mx.array(ref), mx.array(mask))
    np.testing.assert_allclose(np.array(sequence_kl(*args, estimator="k1")), k1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(sequence_kl(*args, estimator="k3")), k3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(sequence_kl(*args, estimator="k3", reduction="mean")), k3 / mask.sum(1), rtol=1e-5)
    assert np.all(np.array(sequence_kl(*args, estimator="k3")) >= 0)
    extreme = sequence_kl(mx.full((1, 2), -1000.0), mx.zeros((1, 2)), mx.ones((1, 2)), estimator="k3")
    assert np.isfinite(extreme.item())


def test_ratio_against_rollout_policy():
    pc, pr = mx.array([-5.0]), mx.array([-6.0])
    ref = mx.array([-9.0])
    loss, metrics = ppo_loss(pc, pr, ref, ref, epsilon=0.2, beta=0.0, advantages=mx.array([1.0]),
                             old_chosen_logps=pc, old_rejected_logps=pr)
    assert metrics["ratio/mean"].item() == 1.0 and metrics["clip_fraction"].item() == 0.0
    assert metrics["kl"].item() == pytest.approx(3.5)  # KL still against the reference


# ---- loss.ratio_level=token, loss.missing_eos_penalty, approx_kl, the adaptive KL controller ----------------------

def reference_token_ppo(pc, pr, bc, br, mc, mr, adv, eps, beta, kl_seq, pen_c=None, pen_r=None):
    """The token-level surrogate (ppo_token_loss's docstring), written out plainly in numpy float64:
    a loop over pairs and tokens, the per-side token mean, and its gradient in the policy's log-probs."""
    b, t = pc.shape
    pen_c = np.zeros(b) if pen_c is None else pen_c
    pen_r = np.zeros(b) if pen_r is None else pen_r
    sides = [(pc, bc, mc, adv - pen_c), (pr, br, mr, -adv - pen_r)]
    policy_loss, grads, ratios, outside = 0.0, [], [], []
    for logp, base, mask, a in sides:
        n = max(mask.sum(), 1.0)
        total, grad = 0.0, np.zeros((b, t))
        for i in range(b):
            for j in range(t):
                if not mask[i, j]:
                    continue
                log_ratio = logp[i, j] - base[i, j]
                clamped = min(max(log_ratio, -MAX_LOG_RATIO), MAX_LOG_RATIO)
                rho = math.exp(clamped)
                clipped = min(max(rho, 1 - eps), 1 + eps)
                total += -min(rho * a[i], clipped * a[i])
                ratios.append(rho)
                outside.append(rho < 1 - eps or rho > 1 + eps)
                # d/dlogp: -a * rho where the unclipped term is the minimum (and inside the clamp), else 0
                if clamped == log_ratio and rho * a[i] <= clipped * a[i]:
                    grad[i, j] = -a[i] * rho / n
        policy_loss += total / n
        grads.append(grad)
    kl = float(np.mean(kl_seq))
    return policy_loss + beta * kl, {
        "policy_loss": policy_loss, "kl": kl, "kl_penalty": beta * kl, "clip_fraction": float(np.mean(outside)),
        "ratio/mean": float(np.mean(ratios)), "ratio/max": max(ratios), "ratio/min": min(ratios),
        "advantage/mean": float(np.mean(adv)),
    }, grads


def _token_inputs(rng, b, t, scale):
    lengths_c, lengths_r = rng.integers(1, t + 1, b), rng.integers(1, t + 1, b)
    mc = (np.arange(t)[None, :] < lengths_c[:, None]).astype(np.float64)
    mr = (np.arange(t)[None, :] < lengths_r[:, None]).astype(np.float64)
    bc, br = rng.normal(-3, 1, (b, t)) * mc, rng.normal(-3, 1, (b, t)) * mr
    pc, pr = (bc + rng.normal(0, scale, (b, t))) * mc, (br + rng.normal(0, scale, (b, t))) * mr
    return pc, pr, bc, br, mc, mr


TOKEN_CASES = [("small-moves", 6, 7, 0.05), ("clipping", 5, 9, 0.4), ("one-pair", 1, 4, 0.3), ("extreme", 4, 5, 100.0)]


@pytest.mark.parametrize("name,b,t,scale", TOKEN_CASES)
@pytest.mark.parametrize("penalised", [False, True])
def test_token_level_surrogate_matches_float64(name, b, t, scale, penalised):
    from ppo.train.loss import ppo_token_loss

    rng = np.random.default_rng(abs(hash((name, penalised))) % 2**32)
    pc, pr, bc, br, mc, mr = _token_inputs(rng, b, t, scale)
    adv = rng.uniform(0, 1, b)
    kl_seq = rng.uniform(0, 0.5, 2 * b)
    pen_c, pen_r = (rng.integers(0, 2, b) * 0.7, rng.integers(0, 2, b) * 0.7) if penalised else (None, None)
    f32 = lambda x: None if x is None else mx.array(x, mx.float32)  # noqa: E731
    for eps, beta in [(0.2, 0.1), (0.1, 0.0), (0.3, 0.5)]:
        expected, expected_metrics, (grad_c, grad_r) = reference_token_ppo(pc, pr, bc, br, mc, mr, adv, eps, beta, kl_seq,
                                                                           pen_c, pen_r)

        def f(pc_, pr_):
            return ppo_token_loss(pc_, pr_, f32(bc), f32(br), f32(mc), f32(mr), epsilon=eps, beta=beta, advantages=f32(adv),
                                  kl_per_sequence=f32(kl_seq), chosen_penalty=f32(pen_c), rejected_penalty=f32(pen_r))

        (loss, metrics), (gc, gr) = mx.value_and_grad(f, argnums=(0, 1))(f32(pc), f32(pr))
        assert abs(loss.item() - expected) <= 1e-5 * max(1.0, abs(expected)), (name, eps, beta)
        for key, value in expected_metrics.items():
            assert abs(metrics[key].item() - value) <= 1e-5 * max(1.0, abs(value)), (key, eps)
        np.testing.assert_allclose(np.array(gc), grad_c, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(np.array(gr), grad_r, rtol=1e-4, atol=1e-7)


def test_token_level_clip_fraction_counts_tokens_not_sequences():
    from ppo.train.loss import ppo_token_loss

    base = mx.zeros((1, 4))
    mask_c, mask_r = mx.array([[1.0, 1.0, 1.0, 0.0]]), mx.array([[1.0, 0.0, 0.0, 0.0]])
    chosen = mx.array([[0.5, 0.0, 0.0, 9.0]])  # one of three tokens outside 1 +- 0.2 (the 4th is padding)
    _, metrics = ppo_token_loss(chosen, base, base, base, mask_c, mask_r, epsilon=0.2, beta=0.0,
                                advantages=mx.array([1.0]), kl_per_sequence=mx.zeros((2,)))
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 4)  # 1 clipped token among the 4 completion tokens
    assert metrics["ratio/max"].item() == pytest.approx(math.exp(0.5))  # padding is not a ratio
    assert metrics["ratio/min"].item() == 1.0


def test_token_level_loss_is_finite_at_extreme_log_ratios():
    from ppo.train.loss import ppo_token_loss

    ones = mx.ones((2, 3))
    for log_ratio in (1000.0, -1000.0):
        def f(p):
            return ppo_token_loss(p, -p, mx.zeros((2, 3)), mx.zeros((2, 3)), ones, ones, epsilon=0.2, beta=0.1,
                                  advantages=mx.array([1.0, 0.0]), kl_per_sequence=mx.zeros((4,)))[0]

        loss, grad = mx.value_and_grad(f)(mx.full((2, 3), log_ratio))
        assert np.isfinite(loss.item()) and np.all(np.isfinite(np.array(grad)))


def test_missing_eos_penalty_lowers_each_truncated_completions_advantage():
    """Sequence form: A_c = a - p * [chosen truncated], A_r = -a - p * [rejected truncated]."""
    from ppo.train.loss import missing_eos_penalties

    rng = np.random.default_rng(11)
    pc, pr, rc, rr = _inputs(rng, 6, 1.0, 0.3)
    adv = rng.uniform(0, 1, 6)
    finished_c, finished_r = np.array([1, 0, 1, 0, 1, 1.0]), np.array([0, 0, 1, 1, 1, 0.0])
    pen_c, pen_r = missing_eos_penalties(0.5, mx.array(finished_c), mx.array(finished_r))
    np.testing.assert_array_equal(np.array(pen_c), 0.5 * (1 - finished_c))
    np.testing.assert_array_equal(np.array(pen_r), 0.5 * (1 - finished_r))
    eps, beta = 0.2, 0.1
    rho_c, rho_r = np.exp(pc - rc), np.exp(pr - rr)
    a_c, a_r = adv - 0.5 * (1 - finished_c), -adv - 0.5 * (1 - finished_r)
    l_c = -np.minimum(rho_c * a_c, np.clip(rho_c, 1 - eps, 1 + eps) * a_c)
    l_r = -np.minimum(rho_r * a_r, np.clip(rho_r, 1 - eps, 1 + eps) * a_r)
    expected = l_c.mean() + l_r.mean() + beta * np.concatenate([pc - rc, pr - rr]).mean()
    loss, metrics = ppo_loss(*(mx.array(x, mx.float32) for x in (pc, pr, rc, rr)), epsilon=eps, beta=beta,
                             advantages=mx.array(adv, mx.float32), chosen_penalty=pen_c, rejected_penalty=pen_r)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert metrics["advantage/mean"].item() == pytest.approx(adv.mean(), rel=1e-6)  # the judge's, before penalties
    # Zero penalties change nothing, bit for bit.
    plain, _ = ppo_loss(*(mx.array(x, mx.float32) for x in (pc, pr, rc, rr)), epsilon=eps, beta=beta,
                        advantages=mx.array(adv, mx.float32))
    zero, _ = ppo_loss(*(mx.array(x, mx.float32) for x in (pc, pr, rc, rr)), epsilon=eps, beta=beta,
                       advantages=mx.array(adv, mx.float32), chosen_penalty=mx.zeros(6), rejected_penalty=mx.zeros(6))
    assert plain.item() == zero.item()


def test_approx_kl_matches_cleanrl():
    from ppo.train.loss import approx_kl

    rng = np.random.default_rng(2)
    new, old = rng.normal(-3, 1, (3, 6)), rng.normal(-3, 1, (3, 6))
    mask = (rng.uniform(size=(3, 6)) > 0.3).astype(np.float64)
    log_ratio = new - old
    expected = (((np.exp(log_ratio) - 1) - log_ratio) * mask).sum() / mask.sum()
    got = approx_kl(mx.array(new, mx.float32), mx.array(old, mx.float32), mx.array(mask, mx.float32)).item()
    assert got == pytest.approx(expected, rel=1e-5)
    same = approx_kl(mx.array(new, mx.float32), mx.array(new, mx.float32), mx.array(mask, mx.float32)).item()
    assert same == 0.0


def test_adaptive_kl_controller_is_ziegler_et_al():
    from ppo.train.loss import adaptive_kl_beta

    # e = clip(kl / target - 1, -0.2, 0.2); beta *= 1 + e * n / horizon
    assert adaptive_kl_beta(0.1, 0.11, target_kl=0.1, horizon=100, n_steps=16) == pytest.approx(0.1 * (1 + 0.1 * 0.16))
    assert adaptive_kl_beta(0.1, 5.0, target_kl=0.1, horizon=100, n_steps=16) == pytest.approx(0.1 * (1 + 0.2 * 0.16))
    assert adaptive_kl_beta(0.1, 0.0, target_kl=0.1, horizon=100, n_steps=16) == pytest.approx(0.1 * (1 - 0.2 * 0.16))
    assert adaptive_kl_beta(0.1, -3.0, target_kl=0.1, horizon=100, n_steps=16) == pytest.approx(0.1 * (1 - 0.2 * 0.16))
    assert adaptive_kl_beta(0.1, 0.1, target_kl=0.1, horizon=100, n_steps=16) == 0.1
    assert adaptive_kl_beta(0.1, float("nan"), target_kl=0.1, horizon=100, n_steps=16) == 0.1
