"""Brief supervised pre-training of a tiny chat model on :mod:`ppo.demo.corpus`.

Why: a random-weight model from :mod:`ppo.demo.tiny` babbles bytes and never emits
``<|im_end|>``, so every PPO rollout would run to the length cap. A few
minutes of next-token training on chat-formatted corpus documents gives a
model whose completions are grammatical, word-like and END BY THEMSELVES,
with positive and negative words about equally likely: a neutral starting
point the PPO demo can then move towards the positive words.

Each example is exactly what the trainer samples from::

    apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    + encode(response) + [<|im_end|>]

The loss is next-token cross-entropy on the response and EOS tokens only (the
prompt is context). All weights are trained (AdamW, linear warmup then cosine
decay, gradient clipping). Batches group documents of similar length (less
padding) and are right-padded to a multiple of ``PAD_MULTIPLE``, so an
optionally compiled step sees only a handful of shapes. Training is
deterministic for a seed: the documents, their order and MLX's RNG all derive
from it.

The trained weights replace ``model_dir/model.safetensors`` atomically (a temp
file in the same folder, then ``os.replace``), so an interrupted run never
leaves a half-written model.
"""

from __future__ import annotations

import math
import random
import time
from functools import partial
from pathlib import Path
from typing import Callable

from . import corpus

PAD_MULTIPLE = 16  # batch lengths are rounded up to this: few shapes, few compiles
BUCKET_POOL = 32  # batches per length-sorted pool (see _length_bucketed_batches)
MAX_LENGTH = 256  # longer examples (none in the corpus) are truncated
WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 100
MIN_LR_FRACTION = 0.1  # cosine decays to this fraction of the peak learning rate
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0
WEIGHTS_FILE = "model.safetensors"


def _encode_examples(tokenizer, docs: list[tuple[str, str]], eos_id: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per document, formatted as the trainer samples them."""
    prompt_cache: dict[str, list[int]] = {}
    prompt_ids = []
    for prompt, _ in docs:
        ids = prompt_cache.get(prompt)
        if ids is None:
            ids = list(tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True
            ))
            prompt_cache[prompt] = ids
        prompt_ids.append(ids)
    responses = [response for _, response in docs]
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    try:  # one batched call on the fast tokenizer
        response_ids = hf(responses, add_special_tokens=False)["input_ids"]
    except Exception:  # noqa: BLE001 - any tokenizer without batch __call__
        response_ids = [tokenizer.encode(r, add_special_tokens=False) for r in responses]
    examples = []
    for p, r in zip(prompt_ids, response_ids):
        ids = (p + list(r) + [eos_id])[:MAX_LENGTH]
        examples.append((ids, len(p)))
    return examples


def _length_bucketed_batches(examples: list, batch_size: int, rng: random.Random) -> list[list]:
    """Seeded batches of similar-length examples (less padding), in random order.

    Examples are shuffled, cut into pools of ``BUCKET_POOL`` batches, each pool
    is sorted by length and split into batches, then all batches are shuffled.
    """
    examples = list(examples)
    rng.shuffle(examples)
    pool = batch_size * BUCKET_POOL
    batches = []
    for start in range(0, len(examples), pool):
        chunk = sorted(examples[start : start + pool], key=lambda e: len(e[0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _make_batch(examples: list[tuple[list[int], int]], pad_id: int):
    """Right-padded (inputs, targets, mask) arrays; mask marks response + EOS targets."""
    import numpy as np

    longest = max(len(ids) for ids, _ in examples)
    length = min(MAX_LENGTH, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
    tokens = np.full((len(examples), length + 1), pad_id, dtype=np.int32)
    mask = np.zeros((len(examples), length), dtype=np.float32)
    for row, (ids, prompt_len) in enumerate(examples):
        tokens[row, : len(ids)] = ids
        # target position t predicts tokens[t + 1]: response tokens start at prompt_len
        mask[row, prompt_len - 1 : len(ids) - 1] = 1.0
    return tokens[:, :-1], tokens[:, 1:], mask


def _schedule(learning_rate: float, steps: int):
    from ppo.train.optimizer import warmup_schedule

    warmup = min(MAX_WARMUP_STEPS, max(1, int(steps * WARMUP_FRACTION))) if steps > 1 else 0
    return warmup_schedule(learning_rate, "cosine", steps, warmup, learning_rate * MIN_LR_FRACTION)


def save_weights_atomic(model, model_dir) -> Path:
    """Write the model's parameters to ``model_dir/model.safetensors`` atomically."""
    from mlx.utils import tree_flatten

    from ppo.io import atomic_save_safetensors

    weights = dict(tree_flatten(model.parameters()))
    target = Path(model_dir) / WEIGHTS_FILE
    atomic_save_safetensors(target, {k: weights[k] for k in sorted(weights)}, metadata={"format": "mlx"})
    return target


def _default_log(record: dict) -> None:
    print(
        f"step {record['step']:>5}/{record['total_steps']}  loss {record['loss']:.4f}  "
        f"lr {record['learning_rate']:.2e}  {record['tokens_per_second']:.0f} tok/s  "
        f"{record['seconds']:.1f}s",
        flush=True,
    )


def pretrain(
    model_dir,
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    log_every: int = 50,
    max_seconds: float | None = None,
    log: Callable[[dict], None] | None = _default_log,
    compile: bool = False,
) -> dict:
    """Pre-train all weights of the mlx-lm model in ``model_dir`` and save them back.

    ``steps`` optimizer steps of ``batch_size`` fresh ``corpus.documents``
    each. ``max_seconds`` stops early (after the step that crosses it; the
    schedule is still the one for ``steps``). ``log`` gets a dict every
    ``log_every`` steps and at the end (``None``: silent).

    Returns ``{"steps", "seconds", "final_loss", "initial_loss", "tokens",
    "tokens_per_second", "documents", "stopped_early", "history"}`` where
    ``final_loss`` is the mean training loss over the last
    ``min(log_every, 20)`` steps (or fewer) and ``history`` holds
    ``(step, loss)`` pairs at each log point. ``tokens`` counts trained
    (response + EOS) tokens.

    ``compile=True`` wraps the step in ``mx.compile`` (with batches padded to
    a multiple of ``PAD_MULTIPLE``, only a few shapes). Off by default: on the
    CPU backend it measured no faster for these tiny models, and each new
    shape costs a JIT C++ build (~30 s per shape on a cold ``/tmp/mlx`` cache).
    """
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm import load

    if steps < 1:
        raise ValueError("steps must be >= 1")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    start = time.perf_counter()
    model_dir = Path(model_dir)
    mx.random.seed(seed)
    model, tokenizer = load(str(model_dir))
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if eos_id is None or eos_id == getattr(tokenizer, "unk_token_id", object()):
        eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    # Fresh documents for every step, in a seeded order.
    n_docs = steps * batch_size
    docs = corpus.documents(n_docs, seed=seed)
    examples = _encode_examples(tokenizer, docs, eos_id)
    batches = _length_bucketed_batches(examples, batch_size, random.Random(seed))

    model.train()
    model.unfreeze()
    schedule = _schedule(learning_rate, steps)
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=WEIGHT_DECAY)
    optimizer.init(model.trainable_parameters())

    def loss_fn(model, inputs, targets, mask):
        logits = model(inputs).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, targets) * mask
        return ce.sum() / mask.sum()

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state, mx.random.state]

    def train_step(inputs, targets, mask):
        loss, grads = loss_and_grad(model, inputs, targets, mask)
        grads, _ = optim.clip_grad_norm(grads, GRAD_CLIP)
        optimizer.update(model, grads)
        return loss

    if compile:
        train_step = partial(mx.compile, inputs=state, outputs=state)(train_step)

    window = max(1, min(log_every, 20)) if log_every else 20
    recent: list[mx.array] = []
    history: list[tuple[int, float]] = []
    initial_loss = None
    tokens = 0
    done = 0
    stopped_early = False
    for step in range(steps):
        batch = batches[step]
        inputs, targets, mask = (mx.array(a) for a in _make_batch(batch, pad_id))
        loss = train_step(inputs, targets, mask)
        mx.eval(state, loss)
        done = step + 1
        tokens += int(sum(len(ids) - p for ids, p in batch))
        if initial_loss is None:
            initial_loss = loss.item()
        recent.append(loss)
        recent = recent[-window:]
        out_of_time = max_seconds is not None and time.perf_counter() - start >= max_seconds
        last = done == steps or out_of_time
        if (log_every and done % log_every == 0) or last:
            value = sum(x.item() for x in recent) / len(recent)
            history.append((done, value))
            if log is not None:
                elapsed = time.perf_counter() - start
                log({
                    "step": done, "total_steps": steps, "loss": value,
                    "learning_rate": float(schedule(mx.array(step))),
                    "tokens_per_second": tokens / max(elapsed, 1e-9), "seconds": elapsed,
                })
        if out_of_time and done < steps:
            stopped_early = True
            break

    final_loss = sum(x.item() for x in recent) / len(recent)
    if not math.isfinite(final_loss):  # keep the old weights rather than save NaNs
        raise FloatingPointError(f"pre-training diverged (loss {final_loss}); lower the learning rate")
    model.eval()
    save_weights_atomic(model, model_dir)
    seconds = time.perf_counter() - start
    return {
        "steps": done,
        "seconds": seconds,
        "final_loss": final_loss,
        "initial_loss": initial_loss,
        "tokens": tokens,
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "documents": done * batch_size,
        "stopped_early": stopped_early,
        "history": history,
    }
