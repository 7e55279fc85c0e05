"""The HTTP judge against real servers on 127.0.0.1: fakes in a thread, and mlx_lm.server."""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ppo.judges import JudgePipeline, JudgeUnavailable, Pair
from ppo.judges.http import HTTPJudge

PAIRS = [Pair("q", "a long answer", "short", prompt_id="0"), Pair("r", "x", "yy", prompt_id="1")]


def serve(reply):
    """A server in a thread answering each POST with reply(body, headers) -> (status, bytes)."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append((self.path, body, dict(self.headers)))
            status, data = reply(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", requests


def completion(content, top=None):
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": content, "logprob": top[0]["logprob"], "top_logprobs": top}]}
    return json.dumps({"choices": [choice]}).encode()


def fast(url, **kw):
    return HTTPJudge(url, **{"model": "m", "timeout": 2.0, "retries": 2, "backoff": 0.01, "concurrency": 4, **kw})


def test_label_logprobs_give_p_and_key_is_sent_not_shown(monkeypatch):
    top = [{"token": "1", "logprob": math.log(0.6)}, {"token": "Ġ2", "logprob": math.log(0.2)}, {"token": "x", "logprob": -5.0}]
    server, url, requests = serve(lambda body: (200, completion("1", top)))
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    judge = fast(url + "/v1", api_key_env="JUDGE_TEST_KEY")
    p = judge(PAIRS).p
    np.testing.assert_allclose(p, [0.75, 0.75])
    path, body, headers = requests[0]
    assert path == "/v1/chat/completions" and body["max_tokens"] == 1 and body["logprobs"] and body["top_logprobs"] == 5
    assert headers["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(judge) and "sk-secret" not in json.dumps(vars(judge), default=str)
    server.shutdown()


def test_strict_text_answer_without_logprobs():
    server, url, _ = serve(lambda body: (200, completion("2" if body["messages"][1]["content"].count("short") else "1")))
    assert fast(url)(PAIRS).p.tolist() == [0.0, 1.0]
    server.shutdown()


def test_garbage_is_invalid_after_retries_never_a_win():
    answers = iter([(200, b"not json"), (200, completion("Response 1 is better")), (200, b'{"choices": []}')] * 10)
    lock = threading.Lock()

    def reply(body):
        with lock:
            return next(answers)

    server, url, requests = serve(reply)
    judge = fast(url, concurrency=1)
    v = JudgePipeline(judge, order="both")([PAIRS[0]])
    assert np.isnan(v.p[0]) and v.diagnostics["judge/invalid_rate"] == 1.0
    assert len(requests) == 2 * 3  # both orders, 1 try + 2 retries each
    server.shutdown()


def test_unreachable_server_raises_quickly_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    tic = time.perf_counter()
    with pytest.raises(JudgeUnavailable, match=f"127.0.0.1:{port}") as err:
        fast(f"http://127.0.0.1:{port}")(PAIRS)
    assert time.perf_counter() - tic < 5 and "\n" not in str(err.value)


def test_server_errors_and_bad_key():
    server, url, requests = serve(lambda body: (503, b"{}"))
    with pytest.raises(JudgeUnavailable, match="HTTP 503"):
        fast(url, concurrency=1)([PAIRS[0]])
    assert len(requests) == 3
    server.shutdown()
    server, url, requests = serve(lambda body: (401, b"{}"))
    with pytest.raises(JudgeUnavailable, match="API key"):
        fast(url)([PAIRS[0]])
    assert len(requests) == 1
    server.shutdown()


def test_real_mlx_lm_server(tiny_model_dir):
    """mlx_lm.server on the tiny model: every pair gets p in [0, 1] or an honest NaN; then it stops."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(tiny_model_dir), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        judge = HTTPJudge(url, model=str(tiny_model_dir), timeout=30, retries=1, backoff=0.05)
        v = JudgePipeline(judge, order="both")(PAIRS)
        assert all(np.isnan(x) or 0.0 <= x <= 1.0 for x in v.p)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with pytest.raises(JudgeUnavailable, match=str(port)):
        HTTPJudge(url, model="m", timeout=1, retries=1, backoff=0.01)([PAIRS[1]])
