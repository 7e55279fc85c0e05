"""`ppo-compare RUN_A RUN_B`: the final policies of two runs, judged head to head.

Each run is scored against its own reference during training; this asks "is A better than B"
directly, as TRL's WinRateCallback and arena-style evaluations do. Both policies are sampled on
the same held-out prompts and every pair (A's completion, B's) goes through the judge pipeline,
shown in both orders (`judge.order=both`; `judge.on_order_disagreement` decides a pair whose two
orders disagree), so the position of an answer cannot move the win rate.

- The runs: each folder's `.hydra/config.yaml` (the config it trained with, read as
  `ppo-reproduce` reads it) and its newest checkpoint (`checkpoints/step-*/`, checksums verified),
  loaded onto the run's own base model (`ppo.train.models.load_policy_and_reference`). A run
  that stopped early is compared at its newest checkpoint (said on stderr); one without any is
  refused. One policy is in memory at a time (A is sampled, freed, then B).
- The prompts: the held-out split of run A's data config with A's seed (what `evaluate` scores
  against the reference). The two runs must have the same base model (`model.path`), the same
  tokenizer and the same held-out prompts (same data config and seed, or a `data.eval_split`),
  else neither would be unseen by both: the command refuses with one line. Different
  `data.max_eval_prompts` compare on the shorter list.
- Sampling: run A's `generation` settings for both; draw d of both policies starts from the same
  random key (from `--seed` and d), so a run compared with itself writes identical completions,
  which a deterministic judge scores as ties: 0.5 exactly.
- The judge: run A's judge config (`--judge` changes it, see --help), always in both orders
  unless `--judge order=...` says otherwise.
- The numbers: the win rate of A over B (a win 1, a tie 0.5, a loss 0; pairs the judge could not
  decide left out and counted) with its 95% Wilson interval (`ppo.metrics.wilson_interval`); the
  length-controlled win rate (`ppo.metrics.length_controlled_win_rate`: AlpacaEval 2's logistic
  model of the verdicts on the normalised length difference, read at equal lengths) with its 95%
  interval; mean completion lengths in tokens; how often the judge's two orders agreed
  (`ppo.judges.pipeline.reliability`).
- The pairs: one JSON line per pair (`--out`, default `compare_<A>_vs_<B>.jsonl` here), shaped like
  a run's samples.jsonl rows (`ppo.train.samples`; `a` is run A, `b` run B, `phase` "compare",
  `step` null) plus `draw`, `a_length` / `b_length` (tokens) and what the pipeline recorded:
  `orders`, `p_shown` (the raw P(first shown is better) of each order), `p_raw`,
  `order_disagreement`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ppo.errors import CheckpointError, CompareError, ConfigError, JudgeQuit, JudgeUnavailable, ReproduceError
from ppo.io import CHECKPOINTS_DIR, HYDRA_DIR, SUMMARY_FILE, atomic_write_text, read_json
from ppo.tools.compare_judge import build, judge_choices, judge_config

log = logging.getLogger(__name__)

PHASE = "compare"


@dataclass
class Run:
    """A run folder, checked without loading anything heavy."""

    folder: Path
    cfg: object  # the saved config on the typed schema
    checkpoint: Path  # its newest complete checkpoint
    step: int
    status: str  # summary.json's status, "no summary.json" when absent

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.step == self.cfg.train.iters


def open_run(source: str, label: str) -> Run:
    """RUN_A / RUN_B as given: a run folder with its config and at least one checkpoint."""
    from ppo.tools.reproduce import build_config, load_source
    from ppo.train import checkpoint

    folder = Path(source).expanduser()
    if not folder.exists():
        raise CompareError(f"{label} {source} does not exist: give a run folder (the `run folder:` line of ppo-train)")
    if not folder.is_dir():
        raise CompareError(f"{label} {source} is not a folder: give a run folder (the `run folder:` line of ppo-train)")
    if not (folder / HYDRA_DIR / "config.yaml").is_file():
        runs = sorted(p.parent.parent for p in folder.glob(f"*/{HYDRA_DIR}/config.yaml"))
        if runs:
            raise CompareError(f"{label} {source} is a sweep folder ({len(runs)} runs), not a run: name one of its runs, "
                               f"e.g. {runs[0]}")
        raise CompareError(f"{label} {source} is not a run folder (no {HYDRA_DIR}/config.yaml): give the folder "
                           "ppo-train wrote (its `run folder:` line)")
    try:
        config, _, _, _ = load_source(str(folder))
        cfg = build_config(config, [])
    except ReproduceError as err:
        raise CompareError(f"{label} {source}: {err}") from None
    newest = checkpoint.latest(folder)
    summary = read_json(folder / SUMMARY_FILE) or {}
    status = summary.get("status") or f"no {SUMMARY_FILE}"
    if newest is None:
        raise CompareError(
            f"{label} {source} has no saved policy (no {CHECKPOINTS_DIR}/step-*/; run status: {status}): it stopped "
            "before its first checkpoint; run it again (the same ppo-train command with "
            f"hydra.run.dir={folder}) until it saves one, or compare a finished run")
    try:
        step = checkpoint.read_state(newest).step
    except CheckpointError as err:
        raise CompareError(f"{label}: {err}") from None
    return Run(folder=folder, cfg=cfg, checkpoint=newest, step=step, status=status)


def check_same_base(a: Run, b: Run) -> None:
    """The two policies must be the same base model (the tokenizer is compared once loaded)."""
    from ppo.judges.factory import same_model

    pa, pb = str(a.cfg.model.path), str(b.cfg.model.path)
    if not same_model(pa, pb) and pa != pb:
        raise CompareError(f"the runs have different base models (model.path {pa} in {a.folder}, {pb} in {b.folder}): "
                           "a head-to-head comparison needs two runs trained from the same model.path")


def describe(run: Run) -> str:
    state = "finished" if run.finished else f"{run.status}, newest checkpoint"
    return f"{run.folder} (step {run.step}, {state})"


# ---------------------------------------------------------------------------------------------
# Models, prompts, sampling.


class _OptimizerStandIn:
    """checkpoint.load restores weights and optimizer state together (and checks both); the
    optimizer state is read into this and dropped."""

    state: dict = {}


def load_policy(run: Run):
    """(policy at its newest checkpoint, tokenizer), in eval mode (no dropout)."""
    from omegaconf import OmegaConf

    from ppo.train import checkpoint
    from ppo.train.models import load_policy_and_reference

    model_cfg = copy.deepcopy(run.cfg.model)
    OmegaConf.update(model_cfg, "reference_path", "")  # the reference plays no part: never load one
    try:
        policy, reference, tokenizer = load_policy_and_reference(model_cfg, run.cfg.finetune)
        del reference
        checkpoint.load(run.checkpoint, policy, _OptimizerStandIn())
    except (ConfigError, CheckpointError) as err:
        raise CompareError(f"{run.folder}: {err}") from None
    policy.eval()
    return policy, tokenizer


def tokenizer_fingerprint(tokenizer) -> tuple:
    """What must agree for two policies to read and write the same tokens."""
    import hashlib

    vocab = sorted(tokenizer.get_vocab().items())
    return (hashlib.sha256(json.dumps(vocab).encode()).hexdigest(), sorted(tokenizer.eos_token_ids),
            getattr(tokenizer, "chat_template", None))


def held_out(run: Run, tokenizer) -> list:
    """The run's held-out prompts, as its evaluation reads them (`ppo.train.data.load_prompts`)."""
    from ppo.train.data import load_prompts

    cfg = run.cfg
    try:
        return load_prompts(cfg.data, tokenizer, cfg.seed,
                            cfg.train.max_seq_length - cfg.generation.max_completion_length).eval
    except ConfigError as err:
        raise CompareError(f"{run.folder}: {err}") from None


def shared_prompts(a: list, b: list, run_a: Run, run_b: Run) -> list:
    """The held-out prompts of both runs: equal lists, or one a prefix of the other
    (a smaller data.max_eval_prompts); anything else is refused."""
    n = min(len(a), len(b))
    same = [(p.id, p.tokens) for p in a[:n]] == [(p.id, p.tokens) for p in b[:n]]
    if not n or not same:
        first = next((i for i in range(n) if (a[i].id, a[i].tokens) != (b[i].id, b[i].tokens)), None)
        if first is None:
            where = f"{len(a)} held out in A, {len(b)} in B"
        elif a[first].id != b[first].id:
            where = f"prompt {first}: {a[first].id} in A, {b[first].id} in B"
        else:
            where = f"prompt {first} ({a[first].id}) is templated differently"
        raise CompareError(
            f"the runs have different held-out prompts ({where}): compare runs trained with the same data config and seed "
            f"(seed {run_a.cfg.seed} in A, {run_b.cfg.seed} in B), or with a data.eval_split, so that no compared prompt "
            "was trained on")
    if len(a) != len(b):
        log.warning("run A holds out %d prompts, run B %d (data.max_eval_prompts): compared on the first %d",
                    len(a), len(b), n)
    return list(a[:n])


def draw_seed(seed: int, draw: int) -> int:
    """MLX's seed for draw `draw`: the same for both policies (common random numbers)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def sample_draws(policy, tokenizer, prompts: list, gen_cfg, draws: int, seed: int) -> list:
    """`draws` batches of completions of `prompts` (`ppo.train.rollout.sample`, as evaluation samples)."""
    import mlx.core as mx

    from ppo.train.rollout import sample

    ids = [list(p.tokens) for p in prompts]
    out = []
    for d in range(draws):
        mx.random.seed(draw_seed(seed, d))
        out.append(sample(policy, ids, eos_token_ids=tokenizer.eos_token_ids, max_tokens=gen_cfg.max_completion_length,
                          temperature=gen_cfg.temperature, top_p=gen_cfg.top_p))
    return out


def judge_draws(judge, tokenizer, prompts: list, a_draws: list, b_draws: list) -> list[dict]:
    """Every pair (A's completion, B's) judged: samples.jsonl-shaped rows plus the pipeline's record."""
    import numpy as np

    from ppo.judges.base import Pair
    from ppo.judges.record import pair_key, record_key
    from ppo.train.completions import CompletionReader
    from ppo.train.samples import sample_rows

    reader = CompletionReader.for_judge(judge, tokenizer)  # what the judge reads of a completion
    ids = [list(p.tokens) for p in prompts]
    rows = []
    for d, (ours, theirs) in enumerate(zip(a_draws, b_draws)):
        a_text, b_text = reader.texts(ids, ours.token_ids), reader.texts(ids, theirs.token_ids)
        pairs = [Pair(p.text, a, b, fa, fb, p.id)
                 for p, a, b, fa, fb in zip(prompts, a_text, b_text, ours.finished, theirs.finished)]
        start = len(judge.log.rows)
        p = np.asarray(judge(pairs, step=None, phase=PHASE).p, dtype=np.float64)
        records = {record_key(r): r for r in judge.log.rows[start:]}
        for i, row in enumerate(sample_rows(None, PHASE, tokenizer, prompts, ours, theirs, a_text, b_text, p)):
            record = records.get(pair_key(pairs[i]), {})
            rows.append({**row, "draw": d, "a_length": len(ours.token_ids[i]), "b_length": len(theirs.token_ids[i]),
                         "orders": record.get("orders"), "p_shown": record.get("p_shown"),
                         "p_raw": _number(record.get("p_raw")), "order_disagreement": record.get("order_disagreement")})
    return rows


def _number(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


# ---------------------------------------------------------------------------------------------
# The numbers.


def summarize(rows: list[dict], records: list[dict]) -> dict:
    """Win rate of A over B (Wilson interval), the length-controlled one, lengths, judge reliability."""
    import numpy as np

    from ppo.judges.pipeline import reliability
    from ppo.metrics import length_controlled_win_rate, wilson_interval
    from ppo.train.evaluation import win_scores

    scores, decided = win_scores([r["p"] for r in rows])  # scored as evaluation scores the policy's pairs
    valid = [r for r, ok in zip(rows, decided) if ok]
    win_rate = float(scores.mean()) if len(scores) else None
    interval = wilson_interval(win_rate, len(scores))
    controlled = length_controlled_win_rate(scores, [r["a_length"] for r in valid], [r["b_length"] for r in valid]) or {}
    a_len = float(np.mean([r["a_length"] for r in rows])) if rows else None
    b_len = float(np.mean([r["b_length"] for r in rows])) if rows else None
    judged = reliability(records)
    return {
        "win_rate": win_rate,
        "win_rate_low": interval[0] if interval else None,
        "win_rate_high": interval[1] if interval else None,
        "pairs": len(valid),
        "wins": int((scores == 1.0).sum()),
        "ties": int((scores == 0.5).sum()),
        "losses": int((scores == 0.0).sum()),
        "invalid": len(rows) - len(valid),
        "win_rate_lc": controlled.get("win_rate_lc"),
        "win_rate_lc_low": controlled.get("win_rate_lc_low"),
        "win_rate_lc_high": controlled.get("win_rate_lc_high"),
        "length_coefficient": controlled.get("length_coefficient"),
        "a_mean_length": a_len,
        "b_mean_length": b_len,
        "length_ratio": a_len / b_len if a_len is not None and b_len else None,
        "a_eos_rate": float(np.mean([r["a_finished"] for r in rows])) if rows else None,
        "b_eos_rate": float(np.mean([r["b_finished"] for r in rows])) if rows else None,
        "judge/order_agreement": judged["judge/order_agreement"],
        "judge/first_position_win_rate": judged["judge/first_position_win_rate"],
        "judge/tie_rate": judged["judge/tie_rate"],
        "judge/verdict": judged["judge/verdict"],
    }


def compare(run_a: str, run_b: str, judge_overrides: list[str] | None = None, samples_per_prompt: int | None = None,
            max_prompts: int | None = None, seed: int | None = None, out: Path | None = None) -> dict:
    """Sample, judge and write the pairs; return the summary (what --json prints)."""
    import gc

    import mlx.core as mx

    a, b = open_run(run_a, "RUN_A"), open_run(run_b, "RUN_B")
    check_same_base(a, b)
    draws = samples_per_prompt if samples_per_prompt is not None else a.cfg.train.eval_samples_per_prompt
    seed = a.cfg.seed if seed is None else seed
    if draws < 1:
        raise CompareError(f"--samples-per-prompt {draws}: must be >= 1")
    if max_prompts is not None and max_prompts < 1:
        raise CompareError(f"--max-prompts {max_prompts}: must be >= 1")
    out = Path(out) if out else Path.cwd() / f"compare_{_safe(a.name)}_vs_{_safe(b.name)}.jsonl"
    if not out.parent.is_dir():
        raise CompareError(f"--out {out}: the folder {out.parent} does not exist; create it or pick another path")
    for run, label in ((a, "RUN_A"), (b, "RUN_B")):
        if not run.finished:
            log.warning("%s %s is not finished (%s, step %d of %d): comparing its newest checkpoint, %s", label, run.folder,
                        run.status, run.step, run.cfg.train.iters, run.checkpoint.name)
    if _generation(a.cfg) != _generation(b.cfg):
        log.warning("the runs sample differently (generation %s in A, %s in B): both are sampled with A's",
                    _generation(a.cfg), _generation(b.cfg))
    judge_node = judge_config(a.cfg.judge, list(judge_overrides or []))
    judge = build(judge_node, a, seed)  # before any model is loaded: a bad --judge fails at once
    try:
        policy, tokenizer = load_policy(a)
        prompts = shared_prompts(held_out(a, tokenizer), held_out(b, tokenizer), a, b)
        prompts = prompts[:max_prompts] if max_prompts else prompts
        a_draws = sample_draws(policy, tokenizer, prompts, a.cfg.generation, draws, seed)
        fingerprint = tokenizer_fingerprint(tokenizer)
        del policy, tokenizer
        gc.collect()
        mx.clear_cache()
        policy, tokenizer = load_policy(b)
        if tokenizer_fingerprint(tokenizer) != fingerprint:
            raise CompareError(f"the runs have different tokenizers ({a.folder}, {b.folder}): a head-to-head comparison "
                               "needs two runs of the same base model and tokenizer")
        b_draws = sample_draws(policy, tokenizer, prompts, a.cfg.generation, draws, seed)
        del policy
        gc.collect()
        rows = judge_draws(judge, tokenizer, prompts, a_draws, b_draws)
    finally:
        judge.close()
    try:
        atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    except OSError as err:
        raise CompareError(f"could not write {out} ({err.strerror or err}); pick another path with --out") from None
    return {
        "run_a": str(a.folder.resolve()), "run_b": str(b.folder.resolve()), "step_a": a.step, "step_b": b.step,
        "prompts": len(prompts), "samples_per_prompt": draws, "seed": seed,
        "judge": judge_node.get("_target_"), "judge_order": judge.order,
        "on_order_disagreement": judge.on_order_disagreement, "out": str(out),
        **summarize(rows, judge.log.rows),
        "description_a": describe(a), "description_b": describe(b),
    }


def _generation(cfg) -> dict:
    g = cfg.generation
    return {"max_completion_length": g.max_completion_length, "temperature": g.temperature, "top_p": g.top_p}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name) or "run"


def print_summary(s: dict) -> None:
    def num(value, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else "n/a"

    short = s["judge"].rsplit(".", 1)[-1] if s["judge"] else "?"
    print(f"A: {s['description_a']}")
    print(f"B: {s['description_b']}")
    print(f"{s['prompts']} held-out prompts x {s['samples_per_prompt']} draws = {s['pairs'] + s['invalid']} pairs, "
          f"judged by {short} (order={s['judge_order']}, on_order_disagreement={s['on_order_disagreement']})")
    interval = (f"95% interval {num(s['win_rate_low'], '.2f')}-{num(s['win_rate_high'], '.2f')}, "
                if s["win_rate_low"] is not None else "")
    undecided = f", {s['invalid']} undecided (left out)" if s["invalid"] else ""
    print(f"win rate of A over B: {num(s['win_rate'], '.3f')} ({interval}{s['pairs']} pairs: A won {s['wins']}, "
          f"tied {s['ties']}, lost {s['losses']}{undecided})")
    print(f"length-controlled win rate: {num(s['win_rate_lc'], '.3f')} (95% interval {num(s['win_rate_lc_low'], '.2f')}-"
          f"{num(s['win_rate_lc_high'], '.2f')}), the win rate at equal lengths; length coefficient "
          f"{num(s['length_coefficient'], '.2f')}")
    print(f"mean length (tokens): A {num(s['a_mean_length'], '.1f')}, B {num(s['b_mean_length'], '.1f')} "
          f"(A/B {num(s['length_ratio'], '.2f')}); ending by themselves: A {num(s['a_eos_rate'], '.2f')}, "
          f"B {num(s['b_eos_rate'], '.2f')}")
    print(f"judge: {s['judge/verdict']}")
    print(f"pairs: {s['out']}")


EPILOG = """\
--judge (repeatable) changes run A's judge as a ppo-train command line changes the judge group:
  --judge length                     the judge group option conf/judge/length.yaml instead of A's
  --judge judge=llm                  the same, written as on a Hydra command line
  --judge target_words=10            one key of the judge, value read as YAML (judge.target_words=10 too)
  --judge +my_key=1                  add a key the judge config does not have
  --judge order=fixed                the pipeline's keys too (order, on_order_disagreement, tie_threshold, ...)
The choice applies first, then the keys, whatever their order. Without --judge order=..., every pair is
judged in both orders (order=both). Judges: {choices}.

examples:
  ppo-compare outputs/A outputs/B
  ppo-compare outputs/A outputs/B --samples-per-prompt 4 --judge length --judge target_words=12 --json
"""


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: make sure MLX runs on a fast BLAS (may re-exec once)
        from ppo.platform.blas import ensure_fast_blas

        ensure_fast_blas()
    try:
        choices = ", ".join(judge_choices())
    except OSError:
        choices = "see conf/judge/"
    parser = argparse.ArgumentParser(
        prog="ppo-compare", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Judge two runs' final policies head to head on run A's held-out prompts and print the\n"
                     "win rate of A over B (95% Wilson interval), the length-controlled win rate and mean\n"
                     "lengths; every pair goes to a JSONL file shaped like samples.jsonl. Both runs need the\n"
                     "same base model, tokenizer and held-out prompts (same data config and seed)."),
        epilog=EPILOG.format(choices=choices))
    parser.add_argument("run_a", metavar="RUN_A", help="a run folder (holds .hydra/config.yaml and checkpoints/)")
    parser.add_argument("run_b", metavar="RUN_B", help="the run folder to compare it with")
    parser.add_argument("--judge", action="append", default=[], metavar="NAME|KEY=VALUE",
                        help="change run A's judge (default: A's own, in both orders); see below")
    parser.add_argument("--samples-per-prompt", type=int, default=None, metavar="N",
                        help="draws per prompt, each pair judged (default: run A's train.eval_samples_per_prompt)")
    parser.add_argument("--max-prompts", type=int, default=None, metavar="N",
                        help="the first N held-out prompts only (default: all of run A's held-out prompts)")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed (default: run A's seed); the held-out prompts are always A's")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="the pairs' JSONL file (default: ./compare_<A>_vs_<B>.jsonl, overwritten)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the summary) instead of the text")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        summary = compare(args.run_a, args.run_b, args.judge, args.samples_per_prompt, args.max_prompts, args.seed,
                          args.out)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (JudgeQuit, JudgeUnavailable) as err:
        print(f"error: the judge stopped ({err}); nothing was written, run the command again", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if not k.startswith("description_")}))
    else:
        print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
