"""A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with mlx_lm.server, vLLM, llama.cpp's server and OpenAI. Each pair is one request
asking for a single token with ``logprobs`` (top 5): when the two labels are among them,
p = softmax over their log-probs (a label missing from the top 5 gets the smallest listed
log-prob, an upper bound); otherwise the answer text must be exactly one label. Requests
run in a bounded thread pool (stdlib only).

Failures are never a win for either side:
- an answer that is still not valid after ``retries`` retries -> NaN (invalid, excluded);
- a server that cannot be reached (connection error, timeout, 5xx / 429) after the
  retries -> :class:`JudgeUnavailable`, one line naming the URL; the trainer checkpoints
  and exits non-zero, and the run resumes when the server is back;
- 401 / 403 / 404 -> :class:`JudgeUnavailable` at once (retrying cannot help).

The API key is read from the environment variable named by ``api_key_env`` at each
request; it is never stored on the judge, logged or written anywhere.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ppo.errors import ConfigError
from ppo.judges.base import JudgeUnavailable, Pair, Verdicts
from ppo.judges.prompting import check_labels, judging_messages, rubric

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Invalid(Exception):
    """The server answered, but not with a usable verdict."""


def _clean_token(token: str) -> str:
    return token.replace("Ġ", "").replace("▁", "").strip()


def parse_answer(body: dict, labels: tuple[str, str]) -> float:
    """P(first better) from a chat-completion response; raises _Invalid when there is none."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise _Invalid("no choices") from None
    content = ((choice.get("logprobs") or {}).get("content") or [None])[0] if isinstance(choice, dict) else None
    top = (content or {}).get("top_logprobs") or []
    found: dict[str, float] = {}
    listed = []
    for entry in top:
        try:
            token, lp = _clean_token(str(entry["token"])), float(entry["logprob"])
        except (KeyError, TypeError, ValueError):
            continue
        listed.append(lp)
        if token in labels:
            found[token] = float(np.logaddexp(found.get(token, -math.inf), lp))
    if found and listed:
        floor = min(listed)
        first, second = (found.get(label, floor) for label in labels)
        return float(1.0 / (1.0 + math.exp(second - first)))
    text = ((choice.get("message") or {}).get("content") or "").strip()
    if text == labels[0]:
        return 1.0
    if text == labels[1]:
        return 0.0
    raise _Invalid(f"answer {text[:20]!r} is not {labels[0]!r} or {labels[1]!r}")


class HTTPJudge:
    """See the module docstring. ``base_url`` e.g. ``http://127.0.0.1:8080`` (``/v1`` optional)."""

    kind = "http"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        model: str = "default_model",
        system: str = "",
        labels=("1", "2"),
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        logprobs: bool = True,
        extra_body: dict | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"invalid judge.base_url={base_url!r}: give an http(s) URL, e.g. http://127.0.0.1:8080")
        for key, value, low in (("timeout", timeout, 0.0), ("backoff", backoff, 0.0)):
            if not isinstance(value, (int, float)) or value < low or (key == "timeout" and value == 0):
                raise ConfigError(f"invalid judge.{key}={value!r}: must be a number > 0")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"invalid judge.retries={retries!r}: must be an integer >= 0")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"invalid judge.concurrency={concurrency!r}: must be an integer >= 1")
        root = base_url.rstrip("/")
        self.url = root + ("/chat/completions" if root.endswith("/v1") else "/v1/chat/completions")
        self.model, self.system, self.labels = model, rubric(system), check_labels(labels)
        self.api_key_env = api_key_env
        self.timeout, self.retries, self.backoff, self.concurrency = float(timeout), retries, float(backoff), concurrency
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        self.invalid_attempts = 0

    def __repr__(self) -> str:  # never shows a key: it is not stored
        return f"HTTPJudge(url={self.url!r}, model={self.model!r})"

    def _body(self, pair: Pair) -> dict:
        body = {"model": self.model, "messages": judging_messages(pair, self.system, self.labels),
                "max_tokens": 1, "temperature": 0.0, **self.extra_body}
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        return body

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Invalid("response is not JSON") from None

    def judge_one(self, pair: Pair) -> float:
        """P(first better) for one pair, NaN if still invalid after the retries."""
        unreachable = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return parse_answer(self._post(self._body(pair)), self.labels)
            except _Invalid:
                self.invalid_attempts += 1
                unreachable = None
            except urllib.error.HTTPError as err:
                if err.code == 400 and self.logprobs:  # some servers reject logprobs: fall back to text
                    self.logprobs = False
                    unreachable = "HTTP 400"
                    continue
                if err.code not in RETRYABLE_STATUS:
                    hint = f" (check the API key in ${self.api_key_env})" if err.code in (401, 403) else ""
                    raise JudgeUnavailable(f"judge server {self.url} answered HTTP {err.code}{hint}") from None
                unreachable = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                unreachable = f"{type(reason).__name__}: {reason}".splitlines()[0]
        if unreachable is not None:
            raise JudgeUnavailable(f"judge server {self.url} unreachable after {self.retries + 1} attempts ({unreachable})")
        return math.nan

    def __call__(self, pairs: list[Pair]) -> Verdicts:
        before = self.invalid_attempts
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, max(len(pairs), 1)))
        try:
            p = np.array(list(pool.map(self.judge_one, pairs)), dtype=np.float64)
        finally:  # on JudgeUnavailable, requests not yet started are dropped
            pool.shutdown(wait=True, cancel_futures=True)
        return Verdicts(p=p, diagnostics={"judge/invalid_attempts": float(self.invalid_attempts - before)})
