"""judge/pairs and the step's other counts (ppo.metrics.STEP_COUNTS) are the whole step's: summed
over its micro-batches (train.grad_accumulation_steps) and over the ranks, where every other metric
is a mean."""

import json
from collections import Counter

import pytest

from conftest import compose, small_run_overrides
from ppo.train.distributed import reduce_metrics


def test_ranks_counts_are_summed_and_their_rates_averaged():
    per_rank = [{"judge/pairs": 4.0, "judge/loss_pairs": 2.0, "judge/invalid_rate": 0.25, "loss": 1.0},
                {"judge/pairs": 4.0, "judge/loss_pairs": 1.0, "judge/invalid_rate": 0.75, "loss": 3.0}]
    reduced = reduce_metrics(per_rank)
    assert reduced["judge/pairs"] == 8.0 and reduced["judge/loss_pairs"] == 3.0
    assert reduced["judge/invalid_rate"] == 0.5 and reduced["loss"] == 2.0  # equal shares: the mean is the weighted rate


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 3])
def test_judge_pairs_is_every_pair_judged_in_the_step(tmp_path, tiny_model_dir, prompts_file, k):
    """Two micro-batches of 2 prompts in one process: judge/pairs counts the pairs of both, which
    are the step's `phase: train` records in judgments.jsonl (2 x 2 x k(k-1)/2)."""
    from ppo.train.loop import train

    run_dir = tmp_path / "run"
    cfg = compose(small_run_overrides(tiny_model_dir, prompts_file, **{
        "train.iters": 2, "train.batch_size": 2, "train.grad_accumulation_steps": 2, "train.steps_per_eval": 100,
        "generation.samples_per_prompt": k, "generation.max_completion_length": 6, "data.max_eval_prompts": 2}))
    train(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (run_dir / "judgments.jsonl").read_text().splitlines()]
    judged = Counter(r["step"] for r in records if r["phase"] == "train")
    assert judged == {1: 2 * 2 * k * (k - 1) // 2, 2: 2 * 2 * k * (k - 1) // 2}
    for row in rows:
        assert row["judge/pairs"] == judged[row["step"]]
        invalid = sum(r["p"] is None for r in records if r["phase"] == "train" and r["step"] == row["step"])
        assert row["judge/invalid_rate"] == pytest.approx(invalid / judged[row["step"]])
        if k > 2:  # best_vs_worst: at most one loss pair per prompt of each micro-batch
            assert 0 < row["judge/loss_pairs"] <= 2 * 2
