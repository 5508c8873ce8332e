"""The HTTP service: a real uvicorn server on 127.0.0.1 and a real HTTP client (httpx)."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from conftest import make_tiny_lm

from prefrec.rank import rank
from prefrec.serve import ApiError, Limits, create_app, parse_rank_request

HISTORY = ["Star Wars (1977)", "Fargo (1996)", "Toy Story (1995)"]
POOL = ["Babe (1995)", "Heat (1995)", "Return of the Jedi (1983)", "Girl, Interrupted (1999)", "Pulp Fiction (1994)",
        "Casino (1995)", "Se7en (1995)", "Alien (1979)", "Jaws (1975)", "Rocky (1976)", "Amélie (2001)",
        "Brazil (1985)", "Clerks (1994)", "Contact (1997)", "Twister (1996)", "Scream (1996)", "Titanic (1997)"]
LIMITS = Limits(max_history=5, max_candidates=8, max_title_chars=40, max_body_bytes=4096)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(embedded_tokenizer):
    """(base_url, model, tokenizer): uvicorn serving a tiny model in a background thread, stopped afterwards."""
    model = make_tiny_lm(embedded_tokenizer)
    app = create_app((model, embedded_tokenizer), limits=LIMITS, model_label="tiny")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(600):  # wait for startup (polling a flag, not a timed assertion)
        if srv.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", model, embedded_tokenizer
    srv.should_exit = True
    thread.join(timeout=30)
    assert not thread.is_alive()


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
    (b"[" * 1500 + b"]" * 1500, 400, "not valid JSON"),
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


def test_parse_rank_request_is_pure():
    req = parse_rank_request(b'{"history": ["a"], "candidates": ["b", "c"]}', Limits())
    assert req == {"history": ["a"], "candidates": ["b", "c"], "top": None, "domain": "movies"}
    with pytest.raises(ApiError) as e:
        parse_rank_request(b'{"history": ["a"], "candidates": ["b", "c", "d"]}', Limits(max_candidates=2))
    assert e.value.status == 422 and "the limit is 2" in e.value.message


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
