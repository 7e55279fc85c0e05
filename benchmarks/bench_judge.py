"""Batched label-probability LLM judge vs the anchor's way (generate a verdict per pair, parse it).

Same tiny judge model (ppo.demo.tiny: qwen3, hidden 256, 4 layers, vocab 4096), same pairs, one
run. The anchor-style judge applies the same chat template and calls mlx_lm.generate with
max_tokens tokens per pair, one pair at a time, then parses an exact label: what
mlx-lm-lora 5.10.2's LLMPairwiseJudge does (trainer/judge.py: `generate(..., max_tokens=16)`),
hence the default of 16. The result also gives the anchor's time at 2 tokens (the
least a verdict can take), from the same run. Prints JSON.

    python benchmarks/bench_judge.py [--pairs 64] [--max-tokens 16] [--batch-size 16]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402


def make_pairs(n: int, seed: int = 0, sentences: int = 2):
    from ppo.demo import corpus
    from ppo.judges import Pair

    prompts = corpus.prompts(n, seed=seed)
    k = sentences
    text = corpus.sentences(2 * k * n, seed=seed + 1)
    return [Pair(prompts[i], " ".join(text[2 * k * i : 2 * k * i + k]), " ".join(text[2 * k * i + k : 2 * k * (i + 1)]), prompt_id=str(i))
            for i in range(n)]


def generate_and_parse(judge, pairs, max_tokens: int):
    """The anchor's judge: one prompt at a time, free text, exact-label parse (else invalid)."""
    from mlx_lm import generate

    out = []
    for pair in pairs:
        text = generate(judge.model, judge.tokenizer, judge.encode(pair), max_tokens=max_tokens, verbose=False).strip()
        out.append(1.0 if text == judge.labels[0] else 0.0 if text == judge.labels[1] else float("nan"))
    return out


def main(argv=None) -> dict:
    from benchmarks.common import BENCH_MODEL_NAME, arguments, build_bench_model, emit, machine

    parser = arguments(__doc__, pairs=64)
    parser.add_argument("--max-tokens", type=int, default=16, help="the anchor's judge generates up to 16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sentences", type=int, default=2, help="corpus sentences per completion")
    parser.add_argument("--hidden", type=int, default=None, help="judge model width (default: the bench model's)")
    parser.add_argument("--layers", type=int, default=None, help="judge model depth (default: the bench model's)")
    args = parser.parse_args(argv)
    ensure_fast_blas()
    import numpy as np

    from ppo.judges.llm import LLMJudge

    with tempfile.TemporaryDirectory() as tmp:
        size = {k: v for k, v in (("hidden", args.hidden), ("layers", args.layers)) if v is not None}
        model_dir = build_bench_model(Path(tmp) / "judge", corpus_sentences=2000, **size)
        judge = LLMJudge(str(model_dir), batch_size=args.batch_size)
        pairs = make_pairs(args.pairs, sentences=args.sentences)
        judge(pairs[:4]), generate_and_parse(judge, pairs[:2], args.max_tokens)  # warm up both paths

        tic = time.perf_counter()
        p = judge(pairs).p
        batched = time.perf_counter() - tic
        streams, judge._streams = judge._streams, judge._streams[:1]  # the same batches on one CPU stream
        tic = time.perf_counter()
        judge(pairs)
        one_stream = time.perf_counter() - tic
        judge._streams = streams
        judge.batch_size = 1  # the same forward, one pair at a time: separates batching from not generating
        tic = time.perf_counter()
        judge(pairs)
        one_by_one = time.perf_counter() - tic
        tic = time.perf_counter()
        parsed = generate_and_parse(judge, pairs, args.max_tokens)
        sequential = time.perf_counter() - tic
        tic = time.perf_counter()
        generate_and_parse(judge, pairs, 2)
        sequential_2 = time.perf_counter() - tic
        prompt_tokens = [len(judge.encode(x)) for x in pairs]
    result = {
        "model": BENCH_MODEL_NAME if not size else f"{BENCH_MODEL_NAME}, with {size}",
        **machine(),
        "pairs": args.pairs,
        "mean_prompt_tokens": float(np.mean(prompt_tokens)),
        "batched_label_prob": {"seconds": batched, "seconds_per_pair": batched / args.pairs, "batch_size": args.batch_size,
                               "valid_rate": float(np.mean(~np.isnan(p)))},
        "batched_label_prob_one_stream": {"seconds": one_stream, "seconds_per_pair": one_stream / args.pairs,
                                          "cpu_streams_speedup": one_stream / batched},
        "label_prob_one_at_a_time": {"seconds": one_by_one, "seconds_per_pair": one_by_one / args.pairs},
        "generate_and_parse": {"seconds": sequential, "seconds_per_pair": sequential / args.pairs, "max_tokens": args.max_tokens,
                               "valid_rate": float(np.mean(~np.isnan(np.array(parsed))))},
        "generate_and_parse_2_tokens": {"seconds": sequential_2, "seconds_per_pair": sequential_2 / args.pairs},
        "speedup": sequential / batched,
        "speedup_vs_2_tokens": sequential_2 / batched,
    }
    return emit(result)


if __name__ == "__main__":
    main()
