"""Generation tokens/s: our `ppo.train.rollout.sample` vs mlx-lm's `batch_generate`, same model, prompts, lengths.

    .venv/bin/python benchmarks/bench_generation.py [--prompts 8 --max-tokens 64 --reps 5]

Same tiny Qwen3 (hidden 256, 4 layers, vocab 4096), the same prompts (chat-templated demo
prompts), the same sampler (temperature 0.8) and the same token budget. EOS is made
impossible in both (the stop id is the vocabulary size, an id the model can never sample),
so every row generates exactly --max-tokens tokens and both sides do identical work.
`batch_generate` is called as users call it (its default batch sizes: 32 completions,
8 prefill rows, which covers 8 prompts in one batch). The two are timed alternately,
--reps times each after one warm-up call of each; medians. Prints one JSON object.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()


class _NoEosTokenizer:
    """mlx-lm's tokenizer with an EOS set the model can never produce (batch_generate reads eos_token_ids)."""

    def __init__(self, tokenizer, eos_ids):
        self._tokenizer = tokenizer
        self.eos_token_ids = set(eos_ids)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def main(argv=None) -> dict:
    from benchmarks.common import BENCH_MODEL_NAME, arguments, build_bench_model, emit, machine

    args = arguments(__doc__, prompts=8, max_tokens=64, reps=5, temperature=0.8).parse_args(argv)

    import mlx.core as mx
    import numpy as np
    from mlx_lm import batch_generate, load
    from mlx_lm.sample_utils import make_sampler

    from ppo.demo import corpus
    from ppo.train.rollout import sample

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model")
        model, tokenizer = load(str(model_dir))
    model.eval()
    vocab = model.args.vocab_size
    never = [vocab]  # no sampled id can equal the vocabulary size
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
               for p in corpus.prompts(args.prompts, seed=0)]
    no_eos = _NoEosTokenizer(tokenizer, never)

    def ours():
        mx.random.seed(0)
        out = sample(model, prompts, eos_token_ids=never, max_tokens=args.max_tokens, temperature=args.temperature)
        return sum(len(t) for t in out.token_ids)

    def mlx_lm():
        mx.random.seed(0)
        out = batch_generate(model, no_eos, prompts, max_tokens=args.max_tokens,
                             sampler=make_sampler(temp=args.temperature), return_token_ids=True)
        return sum(len(t) for t in out.token_ids)

    timings = {"ours": [], "mlx_lm": []}
    tokens = {}
    for fn in (ours, mlx_lm):  # warm-up
        fn()
    for _ in range(args.reps):
        for name, fn in (("ours", ours), ("mlx_lm", mlx_lm)):
            tic = time.perf_counter()
            tokens[name] = fn()
            timings[name].append(time.perf_counter() - tic)

    expected = args.prompts * args.max_tokens
    res = {}
    for name in timings:
        s = float(np.median(timings[name]))
        res[name] = {"seconds": s, "tokens": tokens[name], "tokens_per_second": tokens[name] / s,
                     "all_seconds": [round(t, 4) for t in timings[name]]}
    result = {
        "benchmark": "generation",
        "model": BENCH_MODEL_NAME,
        **machine(),
        "prompts": args.prompts,
        "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
        "max_tokens": args.max_tokens,
        "full_length_everywhere": tokens["ours"] == expected and tokens["mlx_lm"] == expected,
        "ours_ppo_rollout_sample": res["ours"],
        "mlx_lm_batch_generate": res["mlx_lm"],
        "ratio_tokens_per_second_ours_over_mlx_lm": res["ours"]["tokens_per_second"] / res["mlx_lm"]["tokens_per_second"],
    }
    return emit(result)


if __name__ == "__main__":
    main()
