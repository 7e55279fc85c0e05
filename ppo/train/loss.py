"""Losses on judged pairs: the seed's PPO-clip and the online-DPO family.

Every function here is pure: per-sequence (or, for `ppo_token_loss`, per-token)
log-probabilities in, a scalar loss and a dict of scalar metrics out. No model, no
sampling, so each one is tested against its formula (tests/test_loss.py).

Numerics: a sequence log-ratio summed over hundreds of tokens can be +-1000, and
exp(1000) overflows float32. Every log-ratio that is exponentiated is first clamped
to [-max_log_ratio, +max_log_ratio] (default 20, so a ratio lies in [2e-9, 4.9e8]).
Beyond the clamp the ratio is constant, so an out-of-range sequence (or token) contributes a
finite loss and no gradient through its ratio. The KL term is linear in the
log-ratios and needs no clamp.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

DEFAULT_MAX_LOG_RATIO = 20.0


def logprob_gap_advantages(chosen_logps: mx.array, rejected_logps: mx.array) -> mx.array:
    """The seed-literal advantage (what mlx-lm-lora 5.10.2 ships).

        A = log pi(y_c) - log pi(y_r);   A_norm = (A - mean(A)) / (std(A) + 1e-8)

    with the population std over the batch of pairs. This advantage is blind to the
    judge: swapping chosen and rejected maps A to -A and the two surrogate terms of
    `ppo_loss` trade places, so loss and gradient are unchanged; with one pair it is 0.
    Kept to reproduce the seed, not as a default.
    """
    gap = mx.stop_gradient(chosen_logps - rejected_logps)
    return (gap - gap.mean()) / (mx.sqrt(mx.var(gap)) + 1e-8)


def _clipped_surrogate(log_ratio: mx.array, advantages: mx.array, epsilon: float, max_log_ratio: float):
    """L = -min(rho * A, clip(rho, 1-eps, 1+eps) * A) per sequence, and whether rho was clipped."""
    ratio = mx.exp(mx.clip(log_ratio, -max_log_ratio, max_log_ratio))
    unclipped = ratio * advantages
    clipped = mx.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * advantages
    outside = (ratio < 1.0 - epsilon) | (ratio > 1.0 + epsilon)
    return -mx.minimum(unclipped, clipped), ratio, outside


def _side_advantages(advantages: mx.array, chosen_penalty: mx.array | None, rejected_penalty: mx.array | None):
    """(A_c, A_r) = (A - penalty_c, -A - penalty_r); without penalties exactly (A, -A)."""
    chosen, rejected = advantages, -advantages
    if chosen_penalty is not None:
        chosen = chosen - mx.stop_gradient(chosen_penalty.astype(mx.float32))
    if rejected_penalty is not None:
        rejected = rejected - mx.stop_gradient(rejected_penalty.astype(mx.float32))
    return chosen, rejected


def missing_eos_penalties(penalty: float, chosen_finished: mx.array, rejected_finished: mx.array):
    """TRL's ``missing_eos_penalty`` on a judged pair: (penalty_c, penalty_r), each ``penalty`` where
    that completion was cut at generation.max_completion_length without its EOS, else 0.

    They enter the pairwise advantage as A_c = a - penalty_c and A_r = -a - penalty_r (a: the
    judge's advantage of the chosen completion, `ppo_loss`), so a truncated completion is pushed
    down by ``penalty`` on top of what the judge said, whichever side it is on; a tie (a = 0)
    between two truncated completions pushes both down. Constants in the gradient.
    """
    return (penalty * (1.0 - chosen_finished.astype(mx.float32)),
            penalty * (1.0 - rejected_finished.astype(mx.float32)))


def ppo_loss(
    policy_chosen_logps: mx.array,
    policy_rejected_logps: mx.array,
    ref_chosen_logps: mx.array,
    ref_rejected_logps: mx.array,
    *,
    epsilon: float,
    beta: float,
    advantages: mx.array | None = None,
    old_chosen_logps: mx.array | None = None,
    old_rejected_logps: mx.array | None = None,
    kl_per_sequence: mx.array | None = None,
    max_log_ratio: float = DEFAULT_MAX_LOG_RATIO,
    chosen_penalty: mx.array | None = None,
    rejected_penalty: mx.array | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """PPO-clip on B judged pairs, in the seed's notation (docs/concepts/loss.md).

        rho_c = exp(logp_c - ref_c),   rho_r = exp(logp_r - ref_r)
        L_c   = -min(rho_c * A, clip(rho_c, 1 - eps, 1 + eps) * A)
        L_r   = -min(rho_r * (-A), clip(rho_r, 1 - eps, 1 + eps) * (-A))
        policy_loss   = mean_pairs(L_c) + mean_pairs(L_r)
        kl            = mean over the 2B sequences of (logp - ref)
        kl_penalty    = beta * kl
        loss          = policy_loss + kl_penalty
        clip_fraction = share of the 2B ratios outside [1 - eps, 1 + eps]

    Args:
        policy_*_logps, ref_*_logps: shape (B,), per-sequence log-probs of the chosen and
            rejected completions under the policy (with gradient) and the reference.
        advantages: shape (B,), the judge's advantage a of each chosen completion (its
            rejected twin gets -a), used as is. ``None`` selects the seed-literal
            log-prob-gap advantage (`logprob_gap_advantages`). Always a constant in the
            gradient.
        old_*_logps: when given, the ratio is taken against these (the policy at sampling
            time, textbook PPO) instead of the reference; the KL stays against the reference.
        kl_per_sequence: shape (2B,), a per-sequence KL estimate (chosen first) to use
            instead of the seed's ``logp - ref`` (for example the per-token k3 estimator).
        max_log_ratio: log-ratios are clamped to +-this before exp (see module docstring).
        chosen_penalty, rejected_penalty: shape (B,), subtracted from the chosen completion's
            advantage A and from the rejected one's -A (`missing_eos_penalties`); ``None``: 0.

    Returns:
        (loss, metrics) with metrics ``policy_loss``, ``kl``, ``kl_penalty``,
        ``clip_fraction``, ``ratio/mean``, ``ratio/max``, ``ratio/min``, ``advantage/mean``
        (the mean of A, before any penalty).
    """
    if advantages is None:
        advantages = logprob_gap_advantages(policy_chosen_logps, policy_rejected_logps)
    advantages = mx.stop_gradient(advantages.astype(mx.float32))
    chosen_advantages, rejected_advantages = _side_advantages(advantages, chosen_penalty, rejected_penalty)

    base_chosen = ref_chosen_logps if old_chosen_logps is None else old_chosen_logps
    base_rejected = ref_rejected_logps if old_rejected_logps is None else old_rejected_logps
    loss_c, ratio_c, out_c = _clipped_surrogate(
        policy_chosen_logps - mx.stop_gradient(base_chosen), chosen_advantages, epsilon, max_log_ratio
    )
    loss_r, ratio_r, out_r = _clipped_surrogate(
        policy_rejected_logps - mx.stop_gradient(base_rejected), rejected_advantages, epsilon, max_log_ratio
    )
    policy_loss = loss_c.mean() + loss_r.mean()

    if kl_per_sequence is None:
        kl_per_sequence = mx.concatenate(
            [policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps]
        )
    kl = kl_per_sequence.mean()
    kl_penalty = beta * kl
    loss = policy_loss + kl_penalty

    ratios = mx.stop_gradient(mx.concatenate([ratio_c, ratio_r]))
    metrics = {
        "policy_loss": policy_loss,
        "kl": kl,
        "kl_penalty": kl_penalty,
        "clip_fraction": mx.concatenate([out_c, out_r]).astype(mx.float32).mean(),
        "ratio/mean": ratios.mean(),
        "ratio/max": ratios.max(),
        "ratio/min": ratios.min(),
        "advantage/mean": advantages.mean(),
    }
    return loss, metrics


def ppo_token_loss(
    policy_chosen_token_logps: mx.array,
    policy_rejected_token_logps: mx.array,
    base_chosen_token_logps: mx.array,
    base_rejected_token_logps: mx.array,
    chosen_mask: mx.array,
    rejected_mask: mx.array,
    *,
    epsilon: float,
    beta: float,
    advantages: mx.array,
    kl_per_sequence: mx.array,
    chosen_penalty: mx.array | None = None,
    rejected_penalty: mx.array | None = None,
    max_log_ratio: float = DEFAULT_MAX_LOG_RATIO,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Token-level PPO-clip on B judged pairs (``loss.ratio_level=token``), as TRL, OpenRLHF and
    verl form it: one ratio per completion token, clipped per token.

        rho_{c,t} = exp(logp_{c,t} - base_{c,t})      (base: the reference or the sampling-time policy)
        L_{c,t}   = -min(rho_{c,t} * A_c, clip(rho_{c,t}, 1 - eps, 1 + eps) * A_c)
        L_{r,t}   = the same with rho_{r,t} and A_r
        policy_loss   = sum_{c,t} L_{c,t} / N_c + sum_{r,t} L_{r,t} / N_r
        kl            = mean over the 2B sequences of kl_per_sequence
        loss          = policy_loss + beta * kl
        clip_fraction = share of the N_c + N_r token ratios outside [1 - eps, 1 + eps]

    with A_c = a - penalty_c and A_r = -a - penalty_r (a: the chosen completion's advantage,
    `missing_eos_penalties`), every token of a completion carrying its completion's advantage,
    and N_c, N_r the numbers of completion tokens (EOS included) of the chosen and of the rejected
    completions in the batch.

    The normaliser is the per-batch token mean ("token-mean", verl's default loss_agg_mode and
    DAPO's), taken on each side of the pairs: every token weighs the same, so a long completion
    is not down-weighted per token as with a per-sequence mean (which favours short wrong answers
    and lets long ones off lightly), and, split by side, the chosen and the rejected completions
    weigh the same in total, as mean_pairs(L_c) + mean_pairs(L_r) does in the sequence form. One
    token-mean over both sides would let the longer side outweigh the other, so a batch whose
    rejected completions are longer would push every sampled token down on balance. Each
    micro-batch (or minibatch) is normalised by its own token counts.

    Args:
        policy_*_token_logps: shape (B, T), per-token log-probs under the policy (with gradient),
            0 outside the mask. base_*_token_logps: the same under the ratio's baseline.
        chosen_mask, rejected_mask: shape (B, T), 1 on completion tokens.
        advantages: shape (B,), a (a constant in the gradient).
        kl_per_sequence: shape (2B,), the per-sequence KL estimate (chosen first).
        max_log_ratio: each token's log-ratio is clamped to +-this before exp (module docstring).

    Returns:
        (loss, metrics) with the keys of `ppo_loss`; ``ratio/*`` and ``clip_fraction`` over tokens.
    """
    advantages = mx.stop_gradient(advantages.astype(mx.float32))
    chosen_advantages, rejected_advantages = _side_advantages(advantages, chosen_penalty, rejected_penalty)
    mask_c, mask_r = chosen_mask.astype(mx.float32), rejected_mask.astype(mx.float32)
    loss_c, ratio_c, out_c = _clipped_surrogate(
        policy_chosen_token_logps - mx.stop_gradient(base_chosen_token_logps), chosen_advantages[:, None], epsilon,
        max_log_ratio)
    loss_r, ratio_r, out_r = _clipped_surrogate(
        policy_rejected_token_logps - mx.stop_gradient(base_rejected_token_logps), rejected_advantages[:, None], epsilon,
        max_log_ratio)
    n_c, n_r = mx.maximum(mask_c.sum(), 1.0), mx.maximum(mask_r.sum(), 1.0)
    policy_loss = (loss_c * mask_c).sum() / n_c + (loss_r * mask_r).sum() / n_r
    kl = kl_per_sequence.mean()
    kl_penalty = beta * kl
    loss = policy_loss + kl_penalty

    ratios = mx.stop_gradient(mx.concatenate([ratio_c, ratio_r]))
    mask = mx.concatenate([mask_c, mask_r]) > 0
    tokens = mx.maximum(mask.sum(), 1).astype(mx.float32)
    metrics = {
        "policy_loss": policy_loss,
        "kl": kl,
        "kl_penalty": kl_penalty,
        "clip_fraction": (mx.concatenate([out_c, out_r]) & mask).astype(mx.float32).sum() / tokens,
        "ratio/mean": mx.where(mask, ratios, 0.0).sum() / tokens,
        "ratio/max": mx.where(mask, ratios, -mx.inf).max(),
        "ratio/min": mx.where(mask, ratios, mx.inf).min(),
        "advantage/mean": advantages.mean(),
    }
    return loss, metrics


def approx_kl(token_logps: mx.array, old_token_logps: mx.array, mask: mx.array,
              max_log_ratio: float = DEFAULT_MAX_LOG_RATIO) -> mx.array:
    """CleanRL's ``approx_kl`` between the sampling-time policy and the current one, per token:

        mean over completion tokens of (rho_t - 1) - log rho_t,   rho_t = exp(logp_t - old_t)

    (Schulman's k3 estimator of KL(old || current) on the old policy's samples: >= 0, and 0 when
    the policy has not moved). The log-ratio is clamped like every exponentiated one here.
    """
    log_ratio = mx.stop_gradient(mx.clip(token_logps - old_token_logps, -max_log_ratio, max_log_ratio))
    per_token = (mx.exp(log_ratio) - 1.0) - log_ratio
    return (per_token * mask).sum() / mx.maximum(mask.sum(), 1.0)


# Ziegler et al. 2019's bound on the proportional error of the adaptive KL controller.
KL_CONTROL_ERROR_BOUND = 0.2


def adaptive_kl_beta(beta: float, kl: float, *, target_kl: float, horizon: float, n_steps: int) -> float:
    """The next KL weight of Ziegler et al. (2019)'s proportional controller (TRL's and verl's
    AdaptiveKLController):

        e     = clip(kl / target_kl - 1, -0.2, 0.2)
        beta' = beta * (1 + e * n_steps / horizon)

    `kl`: the step's measured KL, in the units of the logged ``kl`` (the one beta multiplies);
    `n_steps`: the samples the step trained on (the trainer passes the completions of the
    global batch, 2 x train.batch_size x train.grad_accumulation_steps). A non-finite `kl` (a
    step without a judged pair) leaves beta unchanged.
    """
    if not math.isfinite(kl):
        return beta
    error = min(max(kl / target_kl - 1.0, -KL_CONTROL_ERROR_BOUND), KL_CONTROL_ERROR_BOUND)
    return beta * (1.0 + error * n_steps / horizon)


def dpo_loss(
    policy_chosen_logps: mx.array,
    policy_rejected_logps: mx.array,
    ref_chosen_logps: mx.array,
    ref_rejected_logps: mx.array,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    delta: float = 50.0,
    weights: mx.array | None = None,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Online DPO on the same judged pairs, one of four variants.

        h = (logp_c - ref_c) - (logp_r - ref_r)            (the implicit reward margin / beta)
        sigmoid: L = -log sigmoid(beta * h)                  (DPO, Rafailov et al. 2023)
        hinge:   L = max(0, 1 - beta * h)                    (SLiC)
        ipo:     L = (h - 1 / (2 * beta))^2                  (IPO, Azar et al. 2023)
        dpop:    L = -log sigmoid(beta * (h - delta * max(0, ref_c - logp_c)))   (DPO-Positive)

    loss = weighted mean over pairs of L, with ``weights`` the judge's confidence per pair
    (1 for a hard verdict, 0 for a tie or an invalid judgement); ``None`` weighs all pairs 1.
    """
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_log_ratio - rejected_log_ratio
    if loss_type == "sigmoid":
        losses = -nn.log_sigmoid(beta * h)
    elif loss_type == "hinge":
        losses = nn.relu(1.0 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "dpop":
        penalty = nn.relu(ref_chosen_logps - policy_chosen_logps)
        losses = -nn.log_sigmoid(beta * (h - delta * penalty))
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose sigmoid, hinge, ipo or dpop")
    if weights is None:
        weights = mx.ones_like(h)
    weights = mx.stop_gradient(weights.astype(mx.float32))
    loss = (weights * losses).sum() / mx.maximum(weights.sum(), 1e-8)
    kl = mx.concatenate([chosen_log_ratio, rejected_log_ratio]).mean()
    metrics = {
        "policy_loss": loss,
        "kl": kl,
        "kl_penalty": mx.array(0.0),
        "clip_fraction": mx.array(0.0),
        "ratio/mean": mx.array(1.0),
        "ratio/max": mx.array(1.0),
        "ratio/min": mx.array(1.0),
        "advantage/mean": weights.mean(),
    }
    return loss, metrics


def sequence_kl(policy_token_logps: mx.array, ref_token_logps: mx.array, mask: mx.array, *, estimator: str = "k1",
                reduction: str = "sum") -> mx.array:
    """Per-sequence KL(pi || ref) estimate from the sampled tokens, summed or averaged over tokens.

        k1_t = logp_t - ref_t                              (the seed's estimator)
        k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (Schulman's k3: >= 0, low variance)

    On the policy's own samples the gradient of k1 averages to zero, so it does not hold
    the policy near the reference; k3's gradient, 1 - exp(ref_t - logp_t), does.
    The exponent is clamped like every log-ratio here (module docstring).
    """
    delta = ref_token_logps - policy_token_logps
    if estimator == "k1":
        per_token = -delta
    elif estimator == "k3":
        delta = mx.clip(delta, -DEFAULT_MAX_LOG_RATIO, DEFAULT_MAX_LOG_RATIO)
        per_token = mx.exp(delta) - delta - 1.0
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose k1 or k3")
    total = (per_token * mask).sum(axis=1)
    if reduction == "mean":
        return total / mx.maximum(mask.sum(axis=1), 1.0)
    return total


def implicit_rewards(
    policy_chosen_logps: mx.array,
    policy_rejected_logps: mx.array,
    ref_chosen_logps: mx.array,
    ref_rejected_logps: mx.array,
    *,
    beta: float,
) -> dict[str, mx.array]:
    """TRL's reward metrics: implicit reward r = beta * (logp - ref) of each completion."""
    chosen = mx.stop_gradient(beta * (policy_chosen_logps - ref_chosen_logps))
    rejected = mx.stop_gradient(beta * (policy_rejected_logps - ref_rejected_logps))
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).astype(mx.float32).mean(),
    }
