"""A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with mlx_lm.server, vLLM, llama.cpp's server and OpenAI. Each pair is one request
asking for a single token with ``logprobs`` (top 5): when the two labels are among them,
p = softmax over their log-probs (a label missing from the top 5 gets the smallest listed
log-prob, an upper bound); otherwise the answer text must be exactly one label. Requests
run in a bounded thread pool (stdlib only).

Failures are never a win for either side:
- an answer that is still not valid after ``retries`` retries -> NaN (invalid, excluded):
  not JSON, no choices, a text that is not a label, any field of the wrong type;
- a server that cannot be reached or stops mid-answer (connection refused or dropped, a
  truncated body, a malformed status line or header, no complete answer within ``timeout``,
  5xx / 429) after the retries -> :class:`JudgeUnavailable`, one line naming the URL; the
  trainer checkpoints and exits non-zero, and the run resumes when the server is back;
- 401 / 403 / 404 -> :class:`JudgeUnavailable` at once (retrying cannot help).

Bounds, so that no server can hold a run or its memory: ``timeout`` is the whole request's
deadline (connect, headers and body: a server that drips one byte at a time is cut off at
it), an answer above MAX_RESPONSE_BYTES is a failed request, and a 429 / 503 with
``Retry-After: N`` waits N seconds before the next try (at most MAX_RETRY_AFTER; never less
than the backoff).

The API key is read from the environment variable named by ``api_key_env`` at each
request; it is never stored on the judge, logged or written anywhere.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ppo.errors import ConfigError
from ppo.judges.base import JudgeUnavailable, Pair, Verdicts
from ppo.judges.prompting import check_labels, judging_messages, rubric

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# A one-token chat completion with five top log-probs is about 1 KB; anything near this is not one.
MAX_RESPONSE_BYTES = 4 << 20
# The longest Retry-After honoured (seconds); a server asking for more is retried after this.
MAX_RETRY_AFTER = 60.0
# The longest a request, or the waits between its tries, may be set to take (seconds).
MAX_WAIT = 86400.0
# The most requests in flight at once.
MAX_CONCURRENCY = 256


class _Invalid(Exception):
    """The server answered, but not with a usable verdict."""


class _Failed(Exception):
    """The request failed on the way (connection, status line, headers, truncated or oversized
    body, deadline): retried, then JudgeUnavailable."""


class _Deadline:
    """Shuts the request's sockets down once `seconds` have passed, wherever the request is
    blocked (headers or body): a socket timeout alone bounds each read, not their sum."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def watch(self, sock) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read, which then sees the end
        except OSError:
            pass


def _watched(handler_class):
    """urllib's HTTP(S) handler whose connections a _Deadline watches (proxies still apply)."""

    class Watched(handler_class):
        def __init__(self, deadline: _Deadline, **kwargs):
            super().__init__(**kwargs)
            self.deadline = deadline

        def do_open(self, http_class, req, **kwargs):
            deadline = self.deadline

            def connection(host, **connection_kwargs):
                made = http_class(host, **connection_kwargs)
                connect = made.connect

                def connect_watched():  # the socket itself: urllib drops the connection's reference to it
                    connect()
                    deadline.watch(made.sock)

                made.connect = connect_watched
                return made

            return super().do_open(connection, req, **kwargs)

    return Watched


_WatchedHTTP, _WatchedHTTPS = _watched(urllib.request.HTTPHandler), _watched(urllib.request.HTTPSHandler)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def retry_after(headers) -> float | None:
    """Seconds of a Retry-After header (delay-seconds form; an HTTP date is not parsed), else None."""
    try:
        value = float((headers or {}).get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _clean_token(token: str) -> str:
    return token.replace("Ġ", "").replace("▁", "").strip()


def parse_answer(body: dict, labels: tuple[str, str]) -> float:
    """P(first better) from a chat-completion response; raises _Invalid when there is none
    (any field missing or of the wrong type included)."""
    try:
        return _parse_answer(body, labels)
    except _Invalid:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
        raise _Invalid(f"malformed answer ({type(err).__name__})") from None


def _parse_answer(body: dict, labels: tuple[str, str]) -> float:
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise _Invalid("no choices") from None
    if not isinstance(choice, dict):
        raise _Invalid("a choice that is not an object")
    content = ((choice.get("logprobs") or {}).get("content") or [None])[0]
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
        gap = second - first
        if gap > 700.0:  # exp(gap) would overflow: the same value written the other way round
            return float(math.exp(-gap) / (1.0 + math.exp(-gap)))
        return float(1.0 / (1.0 + math.exp(gap)))
    text = (choice.get("message") or {}).get("content") or ""
    if not isinstance(text, str):
        raise _Invalid(f"message content is a {type(text).__name__}, not text")
    text = text.strip()
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
        # Bounds where a value would hang a run or overflow (a timer above threading.TIMEOUT_MAX).
        if timeout > MAX_WAIT:
            raise ConfigError(f"invalid judge.timeout={timeout!r}: must be at most {MAX_WAIT:g} s (a day) per request")
        if retries > 100 or backoff * (2 ** retries - 1) > MAX_WAIT:
            raise ConfigError(f"invalid judge.retries={retries!r}: with judge.backoff={backoff:g} the doubling waits "
                              f"between tries add up to more than {MAX_WAIT:g} s (a day); use fewer retries or a "
                              "shorter backoff")
        if concurrency > MAX_CONCURRENCY:
            raise ConfigError(f"invalid judge.concurrency={concurrency!r}: must be at most {MAX_CONCURRENCY} (one "
                              "thread and one connection each)")
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
        """One request under one deadline (`timeout`): the parsed JSON body, _Invalid when it is
        not JSON, _Failed when the request failed on the way; HTTPError for a status >= 400."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with _Deadline(self.timeout) as deadline:
            opener = urllib.request.build_opener(_WatchedHTTP(deadline), _WatchedHTTPS(deadline))
            try:
                with opener.open(request, timeout=self.timeout) as response:
                    raw = self._read(response)
            except urllib.error.HTTPError:
                raise
            except (_Failed, OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
                if deadline.expired:
                    raise _Failed(f"no complete answer within judge.timeout={self.timeout:g}s") from None
                if isinstance(err, _Failed):
                    raise
                raise _Failed(_one_line(err.reason if isinstance(err, urllib.error.URLError)
                                        and isinstance(err.reason, BaseException) else err)) from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise _Invalid("response is not JSON") from None

    @staticmethod
    def _read(response) -> bytes:
        """The whole body, at most MAX_RESPONSE_BYTES; a body shorter than its Content-Length is a
        failed request (the connection dropped mid-answer), not an invalid answer."""
        declared = response.headers.get("Content-Length")
        declared = int(declared) if declared and declared.strip().isdigit() else None
        if declared is not None and declared > MAX_RESPONSE_BYTES:
            raise _Failed(f"an answer of {declared} bytes, above the {MAX_RESPONSE_BYTES >> 20} MiB cap")
        raw = response.read(MAX_RESPONSE_BYTES + 1)
        if len(raw) > MAX_RESPONSE_BYTES:
            raise _Failed(f"an answer above the {MAX_RESPONSE_BYTES >> 20} MiB cap")
        if declared is not None and len(raw) < declared:
            raise _Failed(f"IncompleteRead: the connection ended after {len(raw)} of {declared} bytes")
        return raw

    def _wait(self, attempt: int, asked: float | None) -> float:
        """Seconds before retry `attempt` (1, 2, ...): the backoff, or the server's Retry-After
        when longer, at most MAX_RETRY_AFTER."""
        backoff = self.backoff * 2 ** (attempt - 1)
        return max(backoff, min(asked, MAX_RETRY_AFTER)) if asked is not None else backoff

    def judge_one(self, pair: Pair) -> float:
        """P(first better) for one pair, NaN if still invalid after the retries."""
        unreachable, asked = None, None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._wait(attempt, asked))
            asked = None
            try:
                return parse_answer(self._post(self._body(pair)), self.labels)
            except _Invalid:
                self.invalid_attempts += 1
                unreachable = None
            except urllib.error.HTTPError as err:
                err.close()
                if err.code == 400 and self.logprobs:  # some servers reject logprobs: fall back to text
                    self.logprobs = False
                    unreachable = "HTTP 400"
                    continue
                if err.code not in RETRYABLE_STATUS:
                    hint = f" (check the API key in ${self.api_key_env})" if err.code in (401, 403) else ""
                    raise JudgeUnavailable(f"judge server {self.url} answered HTTP {err.code}{hint}") from None
                asked = retry_after(err.headers)
                unreachable = f"HTTP {err.code}" + (f", Retry-After {asked:g}s" if asked is not None else "")
            except _Failed as err:
                unreachable = str(err)
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
