"""generation.samples_per_prompt=k and generation.pair_rule (issue 25, item 4): the round robin the
judge sees, the pairs each rule puts into the loss (against an independent brute force), collect's
rows, and whole runs with k = 4 under the rule, replay and LLM judges, and on two ranks."""

import json
import numpy as np
import pytest

from conftest import compose, small_run_overrides
from ppo.errors import ConfigError
from ppo.metrics import comparable
from ppo.train.validation import validate
from ppo.train.pairs import borda_scores, round_robin, select_pairs, trained_completions_per_prompt

# ---- the rule ----------------------------------------------------------------------------------------------------


def test_round_robin_is_every_pair_once_in_order():
    assert round_robin(2) == [(0, 1)]
    assert round_robin(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert all(len(round_robin(k)) == k * (k - 1) // 2 for k in range(2, 9))


def _brute_force_best_vs_worst(p_prompt: np.ndarray, k: int) -> tuple[int, int, float]:
    """An independent reading of the documented rule for one prompt: the full k x k win matrix,
    Borda = row sums (NaN counted 0.5), best = highest score (lowest index on ties), worst =
    lowest score (highest index on ties); the pair as judged (lower index first) and its p."""
    wins = np.full((k, k), np.nan)
    for game, (i, j) in enumerate(round_robin(k)):
        x = 0.5 if np.isnan(p_prompt[game]) else p_prompt[game]
        wins[i, j], wins[j, i] = x, 1.0 - x
    score = [sum(wins[i, j] for j in range(k) if j != i) for i in range(k)]
    top = max(score)
    bottom = min(score)
    best = min(i for i in range(k) if score[i] == top)
    worst = max(i for i in range(k) if score[i] == bottom)
    a, b = min(best, worst), max(best, worst)
    return a, b, float(p_prompt[round_robin(k).index((a, b))])


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_best_vs_worst_matches_a_brute_force_on_random_verdicts(k):
    rng = np.random.default_rng(k)
    games = k * (k - 1) // 2
    for hard in (False, True):  # soft probabilities, and hard verdicts with ties and invalid answers
        p = rng.random((games, 50))
        if hard:
            p = rng.choice([0.0, 0.5, 1.0, np.nan], size=(games, 50), p=[0.4, 0.2, 0.3, 0.1])
        got = select_pairs(p, k, "best_vs_worst")
        assert list(got.prompt) == list(range(50))  # one pair per prompt, in prompt order
        for b in range(50):
            a_, b_, p_ = _brute_force_best_vs_worst(p[:, b], k)
            assert (got.a[b], got.b[b]) == (a_, b_)
            assert got.p[b] == p_ or (np.isnan(got.p[b]) and np.isnan(p_))


def test_best_vs_worst_by_hand():
    # prompt 0: strengths 0.1, 0.9, 0.5, 0.3 (hard verdicts): best 1, worst 0, and the judge said 1 beats 0
    # prompt 1: every game a tie: best 0, worst 3 (the stable order), a tie (zero advantage)
    # prompt 2: a cycle 0 > 1 > 2 > 0 with 3 losing to all: 0, 1, 2 share the top (0 is best), 3 is worst
    strengths = [0.1, 0.9, 0.5, 0.3]
    p0 = [1.0 if strengths[i] > strengths[j] else 0.0 for i, j in round_robin(4)]
    p1 = [0.5] * 6
    p2 = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # (0,1) 0 wins, (0,2) 2 wins, (0,3), (1,2) 1 wins, (1,3), (2,3)
    got = select_pairs(np.array([p0, p1, p2]).T, 4, "best_vs_worst")
    assert [(int(a), int(b)) for a, b in zip(got.a, got.b)] == [(0, 1), (0, 3), (0, 3)]
    np.testing.assert_array_equal(got.p, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(borda_scores(np.array([p0]).T, 4)[:, 0], [0.0, 3.0, 2.0, 1.0])


def test_a_non_transitive_judge_decides_the_direction_of_its_own_pair():
    """Borda's best can lose its direct game against the worst; the pair's verdict is that game's."""
    from ppo.judges import advantages_from_verdicts

    # a cycle 0 > 1 > 3 > 0: 0 beats 1 and 2, loses to 3 (0.3); 3 loses to 1 and 2: scores 2.3, 1.5, 1.5, 0.7
    p = np.array([[1.0], [1.0], [0.3], [0.5], [1.0], [1.0]])
    got = select_pairs(p, 4, "best_vs_worst")
    assert (got.a[0], got.b[0]) == (0, 3) and got.p[0] == 0.3
    first_is_chosen, confidence, valid = advantages_from_verdicts(got.p)
    assert not first_is_chosen[0] and confidence[0] == pytest.approx(0.4) and valid[0]  # 3 is chosen


@pytest.mark.parametrize("k", [2, 3, 4])
def test_all_pairs_is_every_judged_pair_with_its_own_verdict(k):
    p = np.random.default_rng(0).random((k * (k - 1) // 2, 5))
    got = select_pairs(p, k, "all_pairs")
    assert len(got.p) == 5 * len(round_robin(k))
    expected = [(b, i, j, p[m, b]) for b in range(5) for m, (i, j) in enumerate(round_robin(k))]
    assert list(zip(got.prompt, got.a, got.b, got.p)) == expected


def test_two_samples_give_the_classic_pair_under_both_rules():
    p = np.array([[0.9, 0.5, np.nan, 0.1]])
    for rule in ("best_vs_worst", "all_pairs"):
        got = select_pairs(p, 2, rule)
        assert list(got.prompt) == [0, 1, 2, 3] and set(got.a) == {0} and set(got.b) == {1}
        np.testing.assert_array_equal(got.p, p[0])
        first, second = got.rows(4)
        assert list(first) == [0, 1, 2, 3] and list(second) == [4, 5, 6, 7]  # firsts, then seconds


def test_rows_follow_the_rollout_layout():
    got = select_pairs(np.zeros((6, 3)), 4, "all_pairs")
    a, b = got.rows(3)
    assert list(a[:6]) == [0, 0, 0, 3, 3, 6] and list(b[:6]) == [3, 6, 9, 6, 9, 9]  # prompt 0: rows g * 3


def test_unknown_rule_and_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="unknown pair rule"):
        select_pairs(np.zeros((1, 2)), 2, "best_of")
    with pytest.raises(ValueError, match="expected 6 games of 4 samples"):
        select_pairs(np.zeros((3, 2)), 4, "all_pairs")


def test_trained_completions_per_prompt():
    assert trained_completions_per_prompt(compose(["generation.samples_per_prompt=4"]).generation) == 2
    assert trained_completions_per_prompt(compose(["generation.samples_per_prompt=4", "generation.pair_rule=all_pairs"]).generation) == 4
    assert trained_completions_per_prompt(compose([]).generation) == 2


# ---- config ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("generation.samples_per_prompt=1", "invalid generation.samples_per_prompt=1: a pairwise judge needs at least 2"),
    ("generation.samples_per_prompt=0", "invalid generation.samples_per_prompt=0"),
    ("generation.pair_rule=best", "invalid generation.pair_rule='best': choose best_vs_worst or all_pairs"),
])
def test_bad_values_are_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose(["judge=rule", override]))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_defaults_are_the_classic_pair():
    gen = compose([]).generation
    assert (gen.samples_per_prompt, gen.pair_rule) == (2, "best_vs_worst")
    validate(compose(["judge=rule", "generation.samples_per_prompt=4", "generation.pair_rule=all_pairs"]))


# ---- collect -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))


def _completions(k, n, eos):
    """k groups of n completions; row g*n + b holds the ids [100 + row, 200 + row] (+ EOS where it ended)."""
    from ppo.train.rollout import Completions

    groups = []
    for g in range(k):
        rows = [g * n + b for b in range(n)]
        ended = [(r % 3) != 1 for r in rows]
        ids = [[100 + r, 200 + r] + ([eos] if e else []) for r, e in zip(rows, ended)]
        groups.append(Completions(ids, ended, 0.1, sum(len(t) for t in ids)))
    return groups


# (6 games, 3 prompts) P(first better): prompt 0 strengths 0.1, 0.9, 0.5, 0.3 (best 1, worst 0); prompt 1 all
# ties (best 0, worst 3, a tie: kept with zero advantage); prompt 2 strengths rising with the index, its
# best-worst game (0, 3) invalid (left out).
_P = np.array([[1.0 if [0.1, 0.9, 0.5, 0.3][i] > [0.1, 0.9, 0.5, 0.3][j] else 0.0 for i, j in round_robin(4)],
               [0.5] * 6,
               [0.0, 0.0, np.nan, 0.0, 0.0, 0.0]]).T


def _collect(model, tokenizer, rule, keep_samples=0):
    from ppo.judges import Verdicts
    from ppo.train.data import Prompt
    from ppo.train.step import Sampling, collect

    cfg = compose([f"model.path=x", "generation.samples_per_prompt=4", f"generation.pair_rule={rule}"])
    prompts = [Prompt(f"train:{b}", f"p{b}", (1, 5 + b)) for b in range(3)]
    groups = _completions(4, 3, tokenizer.eos_token_id)
    calls = []

    def judge(pairs, step):
        calls.append(list(pairs))
        return Verdicts(p=_P.reshape(-1), diagnostics={"judge/pairs": float(len(pairs))})

    out = collect(model, None, tokenizer, judge, prompts, step=1, sampling=Sampling.from_config(cfg.generation, tokenizer),
                  loss_cfg=cfg.loss, sample_fn=lambda m, ids, samples_per_prompt, **kw: groups, keep_samples=keep_samples)
    return out, calls, groups


def _completion_of(batch, pos):
    ids, mask = np.array(batch.input_ids[pos]), np.array(batch.completion_mask[pos])
    return [int(t) for t in ids[mask > 0]]


def test_collect_judges_the_round_robin_and_trains_on_best_vs_worst(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out, calls, groups = _collect(model, tokenizer, "best_vs_worst", keep_samples=5)
    (pairs,) = calls  # one judge call per micro-batch, all games at once
    assert len(pairs) == 3 * 6 and out.metrics["judge/pairs"] == 18
    for m, (i, j) in enumerate(round_robin(4)):  # game-major, prompts in order; finish flags travel with the text
        for b in range(3):
            pair = pairs[m * 3 + b]
            assert pair.prompt_id == f"train:{b}"
            assert (pair.a_finished, pair.b_finished) == (groups[i].finished[b], groups[j].finished[b])
    judged = out.judged
    assert judged.num_pairs == 2 and out.metrics["judge/loss_pairs"] == 2.0
    ids = lambda g, b: groups[g].token_ids[b]  # noqa: E731
    chosen = [_completion_of(judged.batch, int(r)) for r in np.array(judged.chosen)]
    rejected = [_completion_of(judged.batch, int(r)) for r in np.array(judged.rejected)]
    assert chosen == [ids(1, 0), ids(0, 1)] and rejected == [ids(0, 0), ids(3, 1)]
    np.testing.assert_array_equal(np.array(judged.advantages), [1.0, 0.0])
    assert judged.batch.input_ids.shape[0] == 4  # only the completions of loss pairs are scored (k > 2)
    assert out.metrics["completions/mean_length"] == np.mean([len(t) for g in groups for t in g.token_ids])
    # samples.jsonl: the rule's pairs as judged, the undecided one included
    assert [(s["prompt_id"], s["verdict"]) for s in out.samples] == [("train:0", "b"), ("train:1", "tie"), ("train:2", "invalid")]


def test_collect_with_all_pairs_trains_on_every_decided_pair(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out, calls, groups = _collect(model, tokenizer, "all_pairs")
    assert len(calls[0]) == 18 and out.judged.num_pairs == 17 and out.metrics["judge/loss_pairs"] == 17.0
    assert out.judged.batch.input_ids.shape[0] == 12  # every completion is in some decided pair
    decided = [(b, i, j) for b in range(3) for m, (i, j) in enumerate(round_robin(4)) if not np.isnan(_P[m, b])]
    for pos, (b, i, j) in enumerate(decided):
        m = round_robin(4).index((i, j))
        winner, loser = (i, j) if _P[m, b] >= 0.5 else (j, i)
        assert _completion_of(out.judged.batch, int(out.judged.chosen[pos])) == groups[winner].token_ids[b]
        assert _completion_of(out.judged.batch, int(out.judged.rejected[pos])) == groups[loser].token_ids[b]


def test_collect_refuses_a_sampler_that_returns_the_wrong_k(model_and_tokenizer):
    from ppo.judges import Verdicts
    from ppo.train.data import Prompt
    from ppo.train.step import Sampling, collect

    model, tokenizer = model_and_tokenizer
    cfg = compose(["model.path=x", "generation.samples_per_prompt=3"])
    two = _completions(2, 1, tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="returned 2 completions per prompt; generation.samples_per_prompt=3"):
        collect(model, None, tokenizer, lambda pairs, step: Verdicts(p=np.zeros(len(pairs))), [Prompt("t", "p", (1, 2))],
                step=1, sampling=Sampling.from_config(cfg.generation, tokenizer), loss_cfg=cfg.loss,
                sample_fn=lambda m, ids, **kw: tuple(two))


def test_sample_pairs_decodes_k_copies_in_one_batch(model_and_tokenizer):
    """k = 2 is the classic decode (prompts + prompts); k = 4 is one batch of 4B rows."""
    import mlx.core as mx

    from ppo.train.rollout import sample, sample_pairs

    model, tokenizer = model_and_tokenizer
    prompts = [[1, 5, 9], [1, 7]]
    kwargs = dict(eos_token_ids=[tokenizer.eos_token_id], max_tokens=6, temperature=1.0)
    mx.random.seed(3)
    four = sample_pairs(model, prompts, samples_per_prompt=4, **kwargs)
    mx.random.seed(3)
    whole = sample(model, prompts * 4, **kwargs)
    assert len(four) == 4 and [t for g in four for t in g.token_ids] == whole.token_ids
    assert [f for g in four for f in g.finished] == whole.finished


# ---- whole runs --------------------------------------------------------------------------------------------------

K4 = ["generation.samples_per_prompt=4", "generation.temperature=1.5"]  # batch 2 (small_run_overrides)
# What a replay measures of itself rather than of the run (as in tests/test_replay_human.py): the replay shows
# each pair once (judge.order=fixed), so its first-position rate and order agreement are its own.
REPLAY_OWN = ("judge/first_position_win_rate", "judge/order_agreement", "judge/replay_missing")


def _rows(run_dir):
    return [comparable(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "judgments.jsonl").read_text().splitlines()]
    return [r for r in records if r["phase"] == "train"]


@pytest.mark.slow
def test_k4_run_with_the_rule_judge_and_its_replay(tmp_path, tiny_model_dir, prompts_file):
    """Judged pairs per step = batch x k(k-1)/2 (the round robin), one loss pair per prompt at most; a
    replay of the run's judgments.jsonl with the same settings reproduces every metric of the run.
    Both runs through the trainer in this process (the command line is tested elsewhere)."""
    from ppo.train.loop import train

    base = small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 3, "train.steps_per_eval": 3,
                                                                 "train.learning_rate": 0.01}) + K4
    # Words the tiny random model does write, so the rule judge decides pairs and the policy moves.
    words = "~judge.positive", "+judge.positive=[sea,ship,moon,apple,queen,song,rabbit,road,the,every]"
    train(compose([*base, "judge=rule", *words]), tmp_path / "rule")
    records = _train_records(tmp_path / "rule")
    for step in (1, 2, 3):
        mine = [r for r in records if r["step"] == step]
        assert len(mine) == 2 * 6 and len({r["prompt_id"] for r in mine}) == 2  # 2 prompts x 6 games
    original = _rows(tmp_path / "rule")
    trained = [r for r in original if r["step"] >= 1]
    assert [r["step"] for r in trained] == [1, 2, 3]
    assert all(r["judge/pairs"] == 12.0 and 0 <= r["judge/loss_pairs"] <= 2 for r in trained)
    assert any(r["advantage/mean"] > 0 for r in trained) and any(r["kl"] != 0 for r in trained)  # it learns

    train(compose([*base, "judge=replay", f"judge.path={tmp_path / 'rule' / 'judgments.jsonl'}"]), tmp_path / "replay")
    replayed = _rows(tmp_path / "replay")
    assert all(r.get("judge/replay_missing", 0) == 0 for r in replayed)
    strip = lambda r: {k: v for k, v in r.items() if k not in REPLAY_OWN}  # noqa: E731
    assert [strip(r) for r in replayed] == [strip(r) for r in original]
    assert len(_train_records(tmp_path / "replay")) == len(records)


@pytest.mark.slow
def test_k4_all_pairs_with_a_tiny_llm_judge(tmp_path, tiny_model_dir, prompts_file):
    """The LLM judge answers every game of the round robin in both orders; all_pairs trains on every one
    (the trainer in this process)."""
    from ppo.train.loop import train

    base = small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2, "train.steps_per_eval": 2}) + K4
    train(compose([*base, "judge=llm", f"judge.model={tiny_model_dir}", "generation.pair_rule=all_pairs"]),
          tmp_path / "llm")
    records = _train_records(tmp_path / "llm")
    assert [sum(r["step"] == s for r in records) for s in (1, 2)] == [12, 12]
    assert all(r["orders"] == ["ab", "ba"] and 0.0 < r["p"] < 1.0 for r in records)
    trained = [r for r in _rows(tmp_path / "llm") if r["step"] >= 1 and "judge/pairs" in r]
    assert [(r["judge/pairs"], r["judge/loss_pairs"]) for r in trained] == [(12.0, 12.0)] * 2


@pytest.mark.slow
def test_k4_on_two_ranks_each_judges_its_own_prompts(tmp_path, tiny_model_dir, prompts_file):
    from test_distributed import launch

    run_dir = tmp_path / "run"
    result = launch(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2, "train.steps_per_eval": 2,
                                                                         "train.batch_size": 4}) + [
        "generation.samples_per_prompt=4", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["ranks_in_sync"] is True
    records = _train_records(run_dir)
    for step in (1, 2):
        by_rank = {r: [j for j in records if j["step"] == step and j["rank"] == r] for r in (0, 1)}
        assert len(by_rank[0]) == len(by_rank[1]) == 2 * 6  # each rank: its 2 prompts x 6 games
        prompts = [{j["prompt_id"] for j in by_rank[r]} for r in (0, 1)]
        assert len(prompts[0]) == len(prompts[1]) == 2 and not prompts[0] & prompts[1]
    # judge/pairs is the whole step's: both ranks' 12 (ppo.metrics.STEP_COUNTS)
    assert all(r["judge/pairs"] == 24.0 for r in _rows(run_dir) if r["step"] >= 1 and "judge/pairs" in r)
