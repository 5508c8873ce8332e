"""The HTTP service: a real uvicorn server on 127.0.0.1 and a real HTTP client (httpx)."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from conftest import make_tiny_lm

from prefrec.serving.rank import rank
from prefrec.serving.serve import Limits, create_app

HISTORY = ["Star Wars (1977)", "Fargo (1996)", "Toy Story (1995)"]
POOL = ["Babe (1995)", "Heat (1995)", "Return of the Jedi (1983)", "Girl, Interrupted (1999)", "Pulp Fiction (1994)",
        "Casino (1995)", "Se7en (1995)", "Alien (1979)", "Jaws (1975)", "Rocky (1976)", "Amélie (2001)",
        "Brazil (1985)", "Clerks (1994)", "Contact (1997)", "Twister (1996)", "Scream (1996)", "Titanic (1997)"]
LIMITS = Limits(max_history=5, max_candidates=8, max_title_chars=40, max_body_bytes=4096, max_queue=32)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """uvicorn serving `app` on 127.0.0.1 in a background thread; yields the base URL, stops it afterwards."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(600):  # wait for startup (polling a flag, not a timed assertion)
        if srv.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(embedded_tokenizer):
    """(base_url, model, tokenizer): uvicorn serving a tiny model in a background thread, stopped afterwards."""
    model = make_tiny_lm(embedded_tokenizer)
    with running(create_app((model, embedded_tokenizer), limits=LIMITS, model_label="tiny")) as base:
        yield base, model, embedded_tokenizer


def post(base, body, **kw):
    with httpx.Client(base_url=base, timeout=120) as c:
        return c.post("/rank", json=body, **kw) if not isinstance(body, (bytes, str)) else \
            c.post("/rank", content=body, headers={"content-type": "application/json"}, **kw)


def test_health(server):
    base, _, _ = server
    r = httpx.get(f"{base}/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["model"] == "tiny"
    assert r.json()["limits"]["max_candidates"] == LIMITS.max_candidates


def test_good_request_equals_library_ranking(server):
    base, model, tok = server
    cands = POOL[:6]
    r = post(base, {"history": HISTORY, "candidates": cands, "top": 4, "domain": "movies"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["n_candidates"] == 6 and len(body["ranking"]) == 4
    expected = rank(model, tok, HISTORY, cands)[:4]
    assert [x["title"] for x in body["ranking"]] == [x["title"] for x in expected]
    assert [x["score"] for x in body["ranking"]] == pytest.approx([x["score"] for x in expected], abs=1e-4)
    assert [x["rank"] for x in body["ranking"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("body,status,needle", [
    (b'{"history": ["a"], "candidates": ["b"]', 400, "not valid JSON"),
    (b"not json at all", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[" * 1500 + b"]" * 1500, 400, "parsing the body"),  # nested too deeply for json.loads
    ([1, 2], 422, "JSON object"),
    ({"candidates": ["b"]}, 422, "'history'"),
    ({"history": "Star Wars", "candidates": ["b"]}, 422, "'history'"),
    ({"history": ["a"], "candidates": ["b", 7]}, 422, "candidates[1]"),
    ({"history": ["a"], "candidates": ["b", "  "]}, 422, "candidates[1]"),
    ({"history": ["a"], "candidates": []}, 422, "'candidates'"),
    ({"history": ["a"], "candidates": ["b"], "top": 0}, 422, "'top'"),
    ({"history": ["a"], "candidates": ["b"], "top": True}, 422, "'top'"),
    ({"history": ["a"], "candidates": ["b"], "domain": "cars"}, 422, "'domain'"),
    ({"history": ["a"], "candidates": ["b"], "extra": 1}, 422, "extra"),
    ({"history": ["a\nb"], "candidates": ["b"]}, 422, "history[0]"),
])
def test_bad_requests_get_clear_json_errors(server, body, status, needle):
    base, _, _ = server
    r = post(base, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert needle in r.json()["error"]


@pytest.mark.parametrize("body,status,needle", [
    ({"history": ["a"] * 6, "candidates": ["b"]}, 422, "max_history"),
    ({"history": ["a"], "candidates": [f"t{i}" for i in range(9)]}, 422, "max_candidates"),
    ({"history": ["a"], "candidates": ["x" * 41]}, 422, "max_title_chars"),
])
def test_oversize_fields_name_the_limit(server, body, status, needle):
    base, _, _ = server
    r = post(base, body)
    assert r.status_code == status and needle in r.json()["error"]


def test_oversize_body_is_refused_with_413(server):
    base, _, _ = server
    big = json.dumps({"history": ["a"], "candidates": ["b"], "pad": "x" * 5000}).encode()
    r = post(base, big)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the server must count the streamed bytes
        for _ in range(10):
            yield b" " * 1000

    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/rank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]


def test_unknown_route_and_method_are_json(server):
    base, _, _ = server
    r = httpx.get(f"{base}/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{base}/rank")
    assert r.status_code == 405 and "error" in r.json()


def test_20_concurrent_requests_get_their_own_answers(server):
    base, _, _ = server
    requests = [{"history": HISTORY[: 1 + i % 3],
                 "candidates": [POOL[(i + j * 3) % len(POOL)] for j in range(2 + i % 7)]} for i in range(20)]
    assert len({json.dumps(r) for r in requests}) == 20
    sequential = [post(base, r).json() for r in requests]
    with ThreadPoolExecutor(max_workers=20) as pool:
        concurrent = list(pool.map(lambda r: post(base, r), requests))
    for req, seq, res in zip(requests, sequential, concurrent):
        assert res.status_code == 200, res.text
        got = res.json()["ranking"]
        assert sorted(x["title"] for x in got) == sorted(set(req["candidates"]))
        assert [x["title"] for x in got] == [x["title"] for x in seq["ranking"]]
        assert [x["score"] for x in got] == pytest.approx([x["score"] for x in seq["ranking"]], rel=1e-6)


def test_openapi_schema_comes_from_the_request_model_and_docs_are_off(server):
    base, _, _ = server
    spec = httpx.get(f"{base}/openapi.json").json()
    ref = spec["paths"]["/rank"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert body["required"] == ["history", "candidates"] and body["additionalProperties"] is False
    assert body["properties"]["history"]["maxItems"] == LIMITS.max_history
    assert body["properties"]["candidates"]["maxItems"] == LIMITS.max_candidates
    assert body["properties"]["candidates"]["items"]["maxLength"] == LIMITS.max_title_chars
    assert httpx.get(f"{base}/docs").status_code == 404  # Swagger UI would load its scripts from a CDN


def test_docs_can_be_turned_on(tiny_lm):
    from fastapi.testclient import TestClient

    with TestClient(create_app(tiny_lm, docs=True)) as c:
        assert c.get("/docs").status_code == 200


def test_full_queue_answers_503_and_model_name_is_loaded_at_startup(tmp_path, embedded_tokenizer):
    from fastapi.testclient import TestClient
    from test_rank import save_tiny_model

    save_tiny_model(tmp_path / "tiny", embedded_tokenizer)
    app = create_app(str(tmp_path / "tiny"), limits=Limits(max_queue=0))
    with TestClient(app) as c:  # runs the lifespan: load_model happens here, once
        assert app.state.model is not None
        assert c.get("/health").json()["model"] == str(tmp_path / "tiny")
        r = c.post("/rank", json={"history": ["a"], "candidates": ["b"]})
        assert r.status_code == 503 and "max_queue" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1


# ---- bounded tokens, bounded time, cancelled work (issue 15) ----

def _n_tokens(tok, history, candidates):
    from prefrec.scoring.encoding import encode_texts
    from prefrec.serving.rank import build_prompt

    prefix, question = build_prompt(history, candidates)
    return encode_texts(tok, prefix, [question], [candidates]).n_tokens()


def test_token_budget_shortens_history_and_refuses_candidates_naming_the_limit(tiny_lm):
    from fastapi.testclient import TestClient

    model, tok = tiny_lm
    history = [f"A rather long film title number {i} ({1950 + i})" for i in range(5)]
    cands = POOL[:4]
    # brute force: the most recent history titles that fit a budget between 2 and 3 titles' worth
    sizes = {k: _n_tokens(tok, history[5 - k:], cands) for k in range(1, 6)}
    budget = (sizes[2] + sizes[3]) // 2
    app = create_app((model, tok), limits=Limits(max_tokens=budget))
    with TestClient(app) as c:
        r = c.post("/rank", json={"history": history, "candidates": cands})
        assert r.status_code == 200, r.text
        assert r.json()["n_history"] == 2 and r.json()["n_tokens"] == sizes[2] <= budget
        expected = rank(model, tok, history[-2:], cands)
        assert [(x["title"], x["score"]) for x in r.json()["ranking"]] == \
            [(x["title"], pytest.approx(x["score"], abs=1e-4)) for x in expected]
        many = [f"Candidate film with a long title {i}" for i in range(40)]
        r = c.post("/rank", json={"history": history, "candidates": many})
        assert r.status_code == 422 and "max_tokens" in r.json()["error"] and str(budget) in r.json()["error"]
        assert c.get("/health").json()["max_tokens_effective"] == budget


def test_model_context_caps_the_budget(tiny_lm):
    from fastapi.testclient import TestClient

    model, tok = tiny_lm  # max_position_embeddings 2048, below the default cap of 4096
    with TestClient(create_app((model, tok))) as c:
        many = [f"{'x' * 280} {i}" for i in range(100)]  # inside every size limit, far over 2048 tokens
        r = c.post("/rank", json={"history": ["a"], "candidates": many})
        assert r.status_code == 422 and "model context 2048" in r.json()["error"]


class SlowLM:
    """A tiny model whose every forward chunk sleeps, so a request takes seconds; counts the chunks run."""

    def __init__(self, tok, seconds=0.25):
        self.model = make_tiny_lm(tok)
        self.calls = 0

        def hook(module, args):
            self.calls += 1
            time.sleep(seconds)

        self.model.model.register_forward_pre_hook(hook)


LONG = {"history": HISTORY, "candidates": POOL[:12]}  # 331 tokens: 21 chunks of 16, ~5 s
SHORT = {"history": HISTORY[:1], "candidates": POOL[:1]}  # 97 tokens: 7 chunks


def _wait_for(predicate, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not predicate():
        time.sleep(0.05)
    return predicate()


def test_client_leaving_stops_the_work_and_health_stays_fast(embedded_tokenizer):
    slow = SlowLM(embedded_tokenizer)
    app = create_app((slow.model, embedded_tokenizer), chunk_tokens=16)
    with running(app) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/rank", json=LONG, timeout=1.0)  # the client gives up after 1 s
        t0 = time.monotonic()
        health = httpx.get(f"{base}/health", timeout=5)
        assert time.monotonic() - t0 < 1.0 and health.status_code == 200
        assert _wait_for(lambda: httpx.get(f"{base}/health").json()["jobs"]["cancelled"] == 1)
        calls = slow.calls
        time.sleep(1.0)
        assert slow.calls == calls  # nothing runs for the request that was left
        assert calls < 12  # far fewer chunks than the whole request
        r = httpx.post(f"{base}/rank", json=SHORT, timeout=30)
        assert r.status_code == 200 and httpx.get(f"{base}/health").json()["jobs"]["done"] == 1


def test_time_limit_stops_the_work_with_503(embedded_tokenizer):
    slow = SlowLM(embedded_tokenizer)
    app = create_app((slow.model, embedded_tokenizer), limits=Limits(max_seconds=1.0), chunk_tokens=16)
    with running(app) as base:
        r = httpx.post(f"{base}/rank", json=LONG, timeout=30)
        assert r.status_code == 503 and "max_seconds" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1
        calls = slow.calls
        time.sleep(0.6)
        assert slow.calls == calls and calls < 12
        assert httpx.get(f"{base}/health").json()["jobs"]["timed_out"] == 1


def test_short_request_overtakes_a_long_one_and_full_queue_gets_retry_after(embedded_tokenizer):
    slow = SlowLM(embedded_tokenizer, seconds=0.15)
    app = create_app((slow.model, embedded_tokenizer), limits=Limits(max_queue=2), chunk_tokens=16)
    finished = {}

    def send(name, body):
        r = httpx.post(f"{base}/rank", json=body, timeout=60)
        finished[name] = (time.monotonic(), r.status_code)

    with running(app) as base:
        long = threading.Thread(target=send, args=("long", LONG))
        long.start()
        assert _wait_for(lambda: slow.calls >= 2)  # the long request is running
        short = threading.Thread(target=send, args=("short", SHORT))
        short.start()
        assert _wait_for(lambda: httpx.get(f"{base}/health").json()["admitted"] == 2)
        r = httpx.post(f"{base}/rank", json=SHORT, timeout=30)  # a third one: the queue is full
        assert r.status_code == 503 and "max_queue" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
        long.join()
        short.join()
    assert finished["long"][1] == finished["short"][1] == 200
    assert finished["short"][0] < finished["long"][0]  # it waited for one chunk of the long one, not all of it
