"""The optimizer and its learning-rate schedule (mlx.optimizers), shared by PPO and the
demo model's pre-training."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim


def warmup_schedule(learning_rate: float, kind: str, total_updates: int, warmup_updates: int = 0,
                    min_learning_rate: float = 0.0):
    """constant | cosine | linear (decaying to `min_learning_rate` over the updates after the
    warm-up), after a linear warm-up from 0 over `warmup_updates`. A constant rate without
    warm-up is returned as a float, as the optimizer takes it."""
    decay_updates = max(total_updates - warmup_updates, 1)
    if kind == "cosine":
        schedule = optim.cosine_decay(learning_rate, decay_updates, min_learning_rate)
    elif kind == "linear":
        schedule = optim.linear_schedule(learning_rate, min_learning_rate, decay_updates)
    elif not warmup_updates:
        return learning_rate
    else:
        schedule = optim.linear_schedule(learning_rate, learning_rate, 1)  # constant, as a schedule join_schedules accepts
    if not warmup_updates:
        return schedule
    return optim.join_schedules([optim.linear_schedule(0.0, learning_rate, warmup_updates), schedule], [warmup_updates])


def learning_rate_schedule(train_cfg, updates_per_step: int = 1):
    """The schedule of `train.*`. The optimizer counts updates (loss.ppo_epochs per step);
    the config counts steps."""
    return warmup_schedule(train_cfg.learning_rate, train_cfg.lr_schedule, train_cfg.iters * updates_per_step,
                           train_cfg.warmup_steps * updates_per_step, train_cfg.min_learning_rate)


def learning_rate_at(schedule, update: int) -> float:
    """The learning rate of optimizer update number `update` (0-based), as the optimizer applies it."""
    return float(mx.array(schedule(update))) if callable(schedule) else float(schedule)


def make_optimizer(train_cfg, lr) -> optim.Optimizer:
    if train_cfg.optimizer == "adam":
        return optim.Adam(learning_rate=lr)
    if train_cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=train_cfg.weight_decay)
    return optim.SGD(learning_rate=lr, weight_decay=train_cfg.weight_decay)
