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
from prefrec.serving.serve import Limits, create_app, server_config

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
def running(app, limits=None):
    """uvicorn serving `app` on 127.0.0.1 in a background thread, with the settings `prefrec serve` uses; yields the
    base URL, stops it afterwards."""
    port = free_port()
    srv = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, limits=limits, log_level="warning"))
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
    with running(create_app((model, embedded_tokenizer), limits=LIMITS, model_label="tiny"), LIMITS) as base:
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


def test_openapi_and_docs_are_off_by_default(server):
    base, _, _ = server
    assert httpx.get(f"{base}/docs").status_code == 404  # Swagger UI would load its scripts from a CDN
    assert httpx.get(f"{base}/openapi.json").status_code == 404  # the API's shape is not advertised either


def test_openapi_schema_comes_from_the_request_model(tiny_lm):
    from fastapi.testclient import TestClient

    with TestClient(create_app(tiny_lm, limits=LIMITS, docs=True), base_url="http://127.0.0.1") as c:
        spec = c.get("/openapi.json").json()
    ref = spec["paths"]["/rank"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert body["required"] == ["history", "candidates"] and body["additionalProperties"] is False
    assert body["properties"]["history"]["maxItems"] == LIMITS.max_history
    assert body["properties"]["candidates"]["maxItems"] == LIMITS.max_candidates
    assert body["properties"]["candidates"]["items"]["maxLength"] == LIMITS.max_title_chars


def test_docs_can_be_turned_on(tiny_lm):
    from fastapi.testclient import TestClient

    with TestClient(create_app(tiny_lm, docs=True), base_url="http://localhost") as c:
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_full_queue_answers_503_and_model_name_is_loaded_at_startup(tmp_path, embedded_tokenizer):
    from fastapi.testclient import TestClient
    from test_rank import save_tiny_model

    save_tiny_model(tmp_path / "tiny", embedded_tokenizer)
    app = create_app(str(tmp_path / "tiny"), limits=Limits(max_queue=0))
    with TestClient(app, base_url="http://127.0.0.1") as c:  # runs the lifespan: load_model happens here, once
        assert app.state.model is not None
        assert c.get("/health").json()["model"] == "tiny"  # the folder's name, not its path
        r = c.post("/rank", json={"history": ["a"], "candidates": ["b"]})
        assert r.status_code == 503 and "max_queue" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1


# ---- bounded tokens, bounded time, cancelled work (issue 15) ----

def _n_tokens(tok, history, candidates):
    from prefrec.serving.rank import RankPrompt, build_tree

    return build_tree(tok, history, candidates, "movies", RankPrompt()).n_tokens()


def test_token_budget_shortens_history_and_refuses_candidates_naming_the_limit(tiny_lm):
    from fastapi.testclient import TestClient

    model, tok = tiny_lm
    history = [f"A rather long film title number {i} ({1950 + i})" for i in range(5)]
    cands = POOL[:4]
    # brute force: the most recent history titles that fit a budget between 2 and 3 titles' worth
    sizes = {k: _n_tokens(tok, history[5 - k:], cands) for k in range(1, 6)}
    budget = (sizes[2] + sizes[3]) // 2
    app = create_app((model, tok), limits=Limits(max_tokens=budget))
    with TestClient(app, base_url="http://127.0.0.1") as c:
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
    with TestClient(create_app((model, tok)), base_url="http://127.0.0.1") as c:
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
        assert _wait_for(lambda: httpx.get(f"{base}/health").json()["jobs"]["timed_out"] == 1)


def test_the_time_limit_is_answered_on_time_not_after_the_running_chunk(embedded_tokenizer):
    """#43: a 503 at the time limit came when the chunk running at the limit ended (8 s late under load); now the
    request is answered at its limit and the chunk's result dropped. One chunk here sleeps 4 s, the limit is 1 s."""
    slow = SlowLM(embedded_tokenizer, seconds=4.0)
    app = create_app((slow.model, embedded_tokenizer), limits=Limits(max_seconds=1.0), chunk_tokens=512)
    with running(app) as base:
        t0 = time.monotonic()
        r = httpx.post(f"{base}/rank", json=LONG, timeout=30)
        waited = time.monotonic() - t0
        assert r.status_code == 503 and "max_seconds" in r.json()["error"]
        assert waited < 3.0, waited  # before the 4 s chunk ended (it was answered after it: ≥ 4 s)


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


# ---- facing a network: token, Host allow-list, deadlines per connection phase (issue 31) ----

TOKEN = "s3cret-token-of-32-characters-xx"


def _raw(base: str, data: bytes, wait: float = 10.0) -> bytes:
    """Send `data` on a plain socket and read until the server closes the connection; raises socket.timeout when
    the server holds it open past `wait` seconds (the failure these tests look for: a connection never closed)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def test_token_is_required_and_compared_exactly(tiny_lm):
    from fastapi.testclient import TestClient

    body = {"history": ["a"], "candidates": ["b"]}
    with TestClient(create_app(tiny_lm, token=TOKEN), base_url="http://127.0.0.1") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
                        {"Authorization": f"Basic {TOKEN}"}):
            r = c.post("/rank", json=body, headers=headers)
            assert r.status_code == 401 and "bearer token" in r.json()["error"], headers
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/health").status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post("/rank", json=body, headers=good).status_code == 200
        assert c.get("/health", headers=good).json()["status"] == "ok"


def test_host_header_must_be_on_the_allow_list(tiny_lm):
    from fastapi.testclient import TestClient

    with TestClient(create_app(tiny_lm), base_url="http://127.0.0.1") as c:
        for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
            assert c.get("/health", headers={"host": host}).status_code == 200, host
        r = c.get("/health", headers={"host": "attacker.example:8000"})  # DNS rebinding: a page's own name
        assert r.status_code == 400 and "attacker.example" in r.json()["error"] and "--allow-host" in r.json()["error"]
    with TestClient(create_app(tiny_lm, allowed_hosts=["rank.example.org"]), base_url="http://rank.example.org") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "localhost"}).status_code == 400


def test_text_plain_body_gets_415_saying_to_send_json(server):
    base, _, _ = server
    r = httpx.post(f"{base}/rank", content=b'{"history": ["a"], "candidates": ["b"]}',
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"] and "text/plain" in r.json()["error"]
    r = httpx.post(f"{base}/rank", content=b'{"history": ["a"], "candidates": ["b"]}',
                   headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_label_is_the_model_name_not_a_local_path(tmp_path, embedded_tokenizer):
    from conftest import save_tiny_model
    from fastapi.testclient import TestClient
    from transformers import AutoModelForCausalLM

    folder = save_tiny_model(tmp_path / "my-model", embedded_tokenizer)
    pair = (AutoModelForCausalLM.from_pretrained(folder), embedded_tokenizer)
    for app, label in ((create_app(pair), "my-model"), (create_app(pair, model_label="prod-ranker"), "prod-ranker")):
        with TestClient(app, base_url="http://127.0.0.1") as c:
            health = c.get("/health")
            answer = c.post("/rank", json={"history": ["a"], "candidates": ["b"]})
        assert health.json()["model"] == label and answer.json()["model"] == label
        assert str(tmp_path) not in health.text + answer.text


def test_unfinished_upload_is_answered_408_and_closed(embedded_tokenizer):
    limits = Limits(read_seconds=0.5)
    with running(create_app((make_tiny_lm(embedded_tokenizer), embedded_tokenizer), limits=limits), limits) as base:
        head = (b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n")
        answer = _raw(base, head + b'{"history": [')  # 13 of the 1,000 announced bytes, then nothing
        assert answer.startswith(b"HTTP/1.1 408") and b"read_seconds" in answer
        assert httpx.get(f"{base}/health").json()["admitted"] == 0


def test_slow_request_head_and_idle_connection_are_closed(embedded_tokenizer):
    limits = Limits(idle_seconds=0.5)
    with running(create_app((make_tiny_lm(embedded_tokenizer), embedded_tokenizer), limits=limits), limits) as base:
        assert _raw(base, b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\n") == b""  # headers never finished
        assert _raw(base, b"") == b""  # connected, sent nothing
        # keep-alive: one answer, then the idle connection is closed by the server
        answer = _raw(base, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in answer


def test_slow_uploads_hold_no_place_in_the_queue(embedded_tokenizer):
    """#43: a stalled upload is bounded by read_seconds and max_connections, not by max_queue: with one place in the
    queue and an upload stalled in it, a normal request is answered 200 (it got 503 before)."""
    limits = Limits(max_queue=1, read_seconds=3.0)
    app = create_app((make_tiny_lm(embedded_tokenizer), embedded_tokenizer), limits=limits)
    with running(app, limits) as base:
        slow = ThreadPoolExecutor(max_workers=1).submit(
            _raw, base, b"POST /rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
        time.sleep(0.3)  # the upload has started (its head is in)
        assert httpx.get(f"{base}/health").json()["admitted"] == 0
        assert post(base, SHORT).status_code == 200
        assert slow.result(timeout=30).startswith(b"HTTP/1.1 408")


def test_a_long_request_is_not_starved_by_a_stream_of_short_ones(embedded_tokenizer):
    """#43: the worker ran the request with the fewest tokens left, so short requests arriving one after another kept
    a long one waiting until they stopped; now the oldest two take turns and the long one finishes among them."""
    slow = SlowLM(embedded_tokenizer, seconds=0.05)
    app = create_app((slow.model, embedded_tokenizer), limits=Limits(max_queue=8), chunk_tokens=16)
    stop_at = time.monotonic() + 20.0
    long_done = []

    def shorts():
        n = 0
        while not long_done and time.monotonic() < stop_at:
            assert httpx.post(f"{base}/rank", json=SHORT, timeout=60).status_code == 200
            n += 1
        return n

    with running(app) as base:
        pool = ThreadPoolExecutor(max_workers=2)
        streams = [pool.submit(shorts) for _ in range(2)]
        assert _wait_for(lambda: slow.calls >= 4)  # the shorts are flowing
        r = httpx.post(f"{base}/rank", json=LONG, timeout=60)
        long_done.append(time.monotonic())
        answered = [f.result(timeout=60) for f in streams]
    assert r.status_code == 200 and long_done[0] < stop_at and sum(answered) >= 2


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::", "rank.example.org"])
def test_a_reachable_host_needs_a_token(host):
    from prefrec.errors import UserError
    from prefrec.serving.serve import check_exposure

    with pytest.raises(UserError, match="token is required"):
        check_exposure(host, None)
    warning = check_exposure(host, TOKEN)
    assert (warning is not None and "every network interface" in warning) == (host in ("0.0.0.0", "::"))
    for loopback in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert check_exposure(loopback, None) is None


def test_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from prefrec.errors import UserError
    from prefrec.serving.serve import TOKEN_ENV, read_token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token(None) is None
    monkeypatch.setenv(TOKEN_ENV, f" {TOKEN}\n")
    assert read_token(None) == TOKEN
    (tmp_path / "token").write_text("from-the-file-1234567890\nignored\n")
    assert read_token(tmp_path / "token") == "from-the-file-1234567890"  # the file wins
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(UserError, match="at least 16"):
        read_token(tmp_path / "short")
    with pytest.raises(UserError, match="cannot read"):
        read_token(tmp_path / "absent")


def test_cli_refuses_a_network_host_without_a_token_before_loading(monkeypatch):
    from typer.testing import CliRunner

    from prefrec.cli import app
    from prefrec.serving.serve import TOKEN_ENV

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    r = CliRunner().invoke(app, ["serve", "no-such-model", "--host", "0.0.0.0"])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: --host 0.0.0.0") and "token" in r.output
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert "--token-file" in r.output and "--token " not in r.output  # never a token on the command line


def test_cli_serve_ranks_a_pairwise_run_as_cli_rank(tmp_path, embedded_tokenizer):
    """`prefrec serve RUN` (the real command, its own process) ranks a pairwise run with the run's pairwise prompt,
    the same order and scores as `prefrec rank RUN` (before the fix it ranked it with the candidates prompt)."""
    import subprocess
    import sys

    from conftest import save_tiny_model
    from test_rank import CANDIDATES, HISTORY, save_tiny_run
    from typer.testing import CliRunner

    from prefrec.cli import app

    base_dir = save_tiny_model(tmp_path / "tiny", embedded_tokenizer)
    run = tmp_path / "run"
    save_tiny_run(run, base_dir, make_tiny_lm(embedded_tokenizer))
    data = tmp_path / "data"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"task": "pairwise", "protocol": {"answers": "title"}}))
    (run / "config.yaml").write_text(f"data: {{dir: {data}}}\n")
    cands = CANDIDATES[:4]
    (tmp_path / "h.txt").write_text("\n".join(HISTORY), encoding="utf-8")
    (tmp_path / "c.txt").write_text("\n".join(cands), encoding="utf-8")
    res = CliRunner().invoke(app, ["rank", str(run), "--history", str(tmp_path / "h.txt"),
                                   "--candidates", str(tmp_path / "c.txt")])
    assert res.exit_code == 0, res.output
    ranked = json.loads(res.stdout)
    assert ranked["task"] == "pairwise"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "prefrec", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "prefrec serve did not start"
                time.sleep(0.5)
        served = httpx.post(f"http://127.0.0.1:{port}/rank", json={"history": HISTORY, "candidates": cands},
                            timeout=60).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert served["task"] == "pairwise"
    assert [r["title"] for r in served["ranking"]] == [r["title"] for r in ranked["ranking"]]
    assert [r["score"] for r in served["ranking"]] == pytest.approx([r["score"] for r in ranked["ranking"]], abs=1e-4)
