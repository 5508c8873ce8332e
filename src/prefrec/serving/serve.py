"""An HTTP ranking service: `POST /rank` ranks candidate titles for a user history, `GET /health` says it is up.

    create_app("embedded")                 loads the model once, when the server starts (lifespan startup)
    create_app((model, tokenizer))         serves an already-loaded pair (tests, notebooks)
    run_server(...)                         uvicorn, one process, for `prefrec serve`

Request  POST /rank   {"history": [title, ...], "candidates": [title, ...], "top": 5?, "domain": "movies"?}
Response 200          {"ranking": [{"title", "score", "score_per_token", "n_tokens", "rank"}, ...],
                       "model", "domain", "n_candidates", "n_history", "n_tokens"}
Errors   {"error": "<what is wrong, naming the field and the limit>"}
         400 body is not JSON, or a Host header not on the allow-list · 401 missing/wrong bearer token · 408 the
         body did not arrive within read_seconds · 413 body larger than max_body_bytes · 415 body not sent as JSON ·
         422 a field is missing, of the wrong type or over a limit (titles, characters, tokens) · 404/405 unknown
         route/method · 503 (+ Retry-After) the queue is full or the request ran past max_seconds

Why the structure (docs/serve.md: bytes and titles do not bound the work, tokens and seconds do):
- Facing a network: a host other machines reach needs a bearer token (check_exposure); the Host header must be on
  an allow-list; every phase of a connection has a deadline: its request head (idle_seconds, HeadTimeoutH11Protocol),
  its body (read_seconds), its work (max_seconds); at most max_connections connections.
- An ASGI middleware (Gate) checks host and token, admits the request (max_queue: a slow upload holds a place like
  queued work does) and reads the body with a byte cap and a deadline, so a chunked upload is cut off too; then a
  pydantic model built from the limits validates it (FastAPI's own validation; the same model is the OpenAPI schema).
- The request is tokenised (one tokenizer thread) and must fit the token budget min(model context, max_tokens):
  the history is shortened oldest-first to fit, candidates that do not fit are refused with 422.
- A PyTorch model is not meant to run forward passes from several threads at once, and one forward already uses all
  cores, so ONE inference thread runs every request, each with its own tensors. It runs them in chunks of
  `chunk_tokens` tokens (prefrec.scoring.packing.chunked_response_logps) and between chunks (a) drops a request whose client has gone or
  whose time limit has passed, and (b) continues the request with the fewest tokens left, so a short request waits
  for at most one chunk of a long one. At most `max_queue` requests are admitted; more get 503 with Retry-After.
- The event loop never runs model code, so /health answers at once while work runs.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Generator, Literal, Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from prefrec.errors import UserError
from prefrec.items import attached
from prefrec.model import load_model
from prefrec.prompts import DOMAINS
from prefrec.scoring.budget import DEFAULT_MAX_TOKENS, token_budget
from prefrec.scoring.packing import chunked_response_logps
from prefrec.serving.explain import token_pieces
from prefrec.serving.rank import (DEFAULT_CHUNK_TOKENS, RankPrompt, budgeted_tree, check_title, missing_items_note,
                                  ranker_of, ranking_of)


@dataclass(frozen=True)
class Limits:
    """Per-request limits; every refusal message names the limit it hit."""
    max_history: int = 50  # titles in "history"
    max_candidates: int = 100  # titles in "candidates"
    max_title_chars: int = 300  # characters per title
    max_body_bytes: int = 256 * 1024  # raw request body
    max_tokens: int = DEFAULT_MAX_TOKENS  # prompt + candidates after tokenisation (also ≤ the model's context)
    max_seconds: float = 60.0  # from admission to answer, queueing included; the work stops when it passes
    max_queue: int = 16  # requests admitted (sending their body, waiting or running); more get 503 + Retry-After
    read_seconds: float = 5.0  # for the whole request body, from the end of its head; then 408, connection closed
    idle_seconds: float = 5.0  # a connection must send a complete request head within this (after opening or
    #                            after its last answer), else it is closed: idle keep-alive and slow heads alike
    max_connections: int = 64  # open connections + running requests (uvicorn's limit_concurrency); more get 503


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------------------------
# Request: byte cap, then a pydantic model

class Admission:
    """The count of admitted requests (waiting for their body, queued or running), shared by the gate and /health.
    Only touched on the event loop thread, so it needs no lock."""

    def __init__(self, max_queue: int):
        self.max_queue, self.admitted = max_queue, 0
        self.worker: Worker | None = None  # set at startup; its queue estimates Retry-After

    def retry_after(self) -> int:
        return self.worker.retry_after() if self.worker is not None else 1


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only accepts connections from this machine."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def default_allowed_hosts(bound: str) -> list[str]:
    """The Host header values accepted by default: the loopback names and the address the server is bound to (not
    a wildcard address: a client never names 0.0.0.0, so a server on all interfaces needs its names given)."""
    return list(dict.fromkeys([*LOOPBACK_NAMES, *([bound] if bound not in WILDCARD_HOSTS else [])]))


def _host_name(value: str) -> str:
    """The name part of a Host header: 'example.org:8000' -> 'example.org', '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Gate:
    """ASGI middleware: everything a request must pass before the app sees it, in this order:

    1. Host header on the allow-list (DNS rebinding: a web page must not reach a loopback server under its own
       name); 400 otherwise. `allowed_hosts=["*"]` turns the check off.
    2. `Authorization: Bearer <token>` when a token is set, compared in constant time; 401 otherwise.
    3. Admission: a request that may carry a body (not GET/HEAD/OPTIONS) takes one of `max_queue` places from now
       until its answer is sent, so slow uploads count against the queue like work does; 503 + Retry-After when
       all are taken.
    4. The body, read whole with a byte cap (Content-Length first, then the streamed bytes: a chunked upload has no
       length; 413) and a deadline (`read_seconds` for the whole body, so a client that announces 1,000 bytes and
       sends 13 is answered 408 and its connection closed instead of holding its place).

    The app then reads the buffered body; later receive() calls go to the server, so the endpoint still learns
    when the client disconnects. Refusals before the body is read close the connection, since the unread body
    would otherwise have to be drained."""

    def __init__(self, app, *, limits: Limits, admission: Admission, token: str | None, allowed_hosts: list[str],
                 public: frozenset[str] = frozenset()):
        self.app, self.limits, self.admission = app, limits, admission
        self.token = token.encode() if token else None
        self.allowed = None if "*" in allowed_hosts else {_host_name(h) for h in allowed_hosts}
        self.public = public  # GET paths served without the token: the static page (it holds no data)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        log = RequestLog(scope)
        send = log.wrap(send)
        try:
            await self._gate(scope, receive, send)
        finally:
            log.write()

    async def _gate(self, scope, receive, send) -> None:
        headers = Headers(scope=scope)
        public = scope["method"] in ("GET", "HEAD") and scope["path"] in self.public
        refusal = self._check_host_and_token(headers, check_token=not public)
        if refusal is not None:
            return await refusal(scope, receive, send)
        # the body is read before the request takes a place in the queue: a slow upload is bounded by
        # max_connections and read_seconds, and never holds a place that work could use
        body = await self._body(scope, receive, send, headers)
        if body is None:  # answered (408, 413) or the client left
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, _replay(body, receive), send)
        if self.admission.admitted >= self.admission.max_queue:
            retry = self.admission.retry_after()
            return await _error(503, f"server busy: {self.admission.admitted} requests admitted (max_queue="
                                     f"{self.admission.max_queue}); retry in {retry} s",
                                {"Retry-After": str(retry)})(scope, receive, send)
        self.admission.admitted += 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.admission.admitted -= 1

    def _check_host_and_token(self, headers: Headers, check_token: bool = True) -> Response | None:
        if self.allowed is not None and _host_name(headers.get("host", "")) not in self.allowed:
            return _error(400, f"Host header {headers.get('host', '')!r} is not one this server answers to (allowed: "
                               f"{sorted(self.allowed)}; `prefrec serve --allow-host NAME` adds one)",
                          {"Connection": "close"})
        if self.token is not None and check_token:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
                return _error(401, "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'",
                              {"WWW-Authenticate": "Bearer", "Connection": "close"})
        return None

    async def _body(self, scope, receive, send, headers: Headers) -> bytes | None:
        """The whole body within read_seconds and max_body_bytes, or None once the request is answered."""
        try:
            async with asyncio.timeout(self.limits.read_seconds):
                body = await self._read_body(headers, receive)
        except TimeoutError:
            await _error(408, f"the request body did not arrive within {self.limits.read_seconds:g} s "
                              "(read_seconds)", {"Connection": "close"})(scope, receive, send)
            return None
        if isinstance(body, Response):
            await body(scope, receive, send)
            return None
        return body  # None: the client left while sending

    async def _read_body(self, headers: Headers, receive) -> bytes | Response | None:
        declared, cap = headers.get("content-length"), self.limits.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > cap:
            return _error(413, f"request body is {int(declared)} bytes; the limit is {cap} bytes (max_body_bytes)",
                          {"Connection": "close"})
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > cap:
                return _error(413, f"request body exceeds the limit of {cap} bytes (max_body_bytes)",
                              {"Connection": "close"})
            if not message.get("more_body", False):
                return bytes(body)


def _replay(body: bytes, receive):
    """The app's receive(): the buffered body once, then the server's (which reports a disconnect)."""
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


log = logging.getLogger("prefrec.serve")


class RequestLog:
    """One log line per request, written when its answer is sent: method, path, status, latency, the tokens it
    scored (set by /rank in the request's state) and, for an error, its reason (the answer's "error"), so a busy
    503 and a timed-out 503 read differently."""

    def __init__(self, scope):
        self.scope, self.t0, self.status, self.reason = scope, time.monotonic(), None, ""

    def wrap(self, send):
        async def logged(message):
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body" and (self.status or 200) >= 400 and not self.reason:
                try:
                    self.reason = str(json.loads(message.get("body") or b"{}").get("error", ""))[:160]
                except (ValueError, AttributeError):
                    self.reason = ""
            await send(message)
        return logged

    def write(self) -> None:
        tokens = (self.scope.get("state") or {}).get("n_tokens")
        log.info("%s %s %s %.3f s%s%s", self.scope.get("method"), self.scope.get("path"), self.status or "-",
                 time.monotonic() - self.t0, f" {tokens} tokens" if tokens is not None else "",
                 f" · {self.reason}" if self.reason else "")


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the request head. uvicorn's own keep-alive timer is cancelled
    by any byte received, and a new connection has none at all, so a client sending its headers one byte at a time
    (or nothing) would hold its connection forever. Here a connection that is not being answered (no request
    in the app) is closed `timeout_keep_alive` seconds after it opened or after its last answer: that bounds idle
    keep-alive connections and slow request heads alike. The body has its own deadline (Gate)."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

    def _head_timeout(self) -> None:
        in_app = self.cycle is not None and not self.cycle.response_complete
        if not in_app and not self.transport.is_closing():  # waiting for a head, or draining a refused body
            self.transport.close()


def _title(value: str) -> str:
    try:
        return check_title(value, "title")
    except UserError as e:
        raise ValueError(str(e).removeprefix("title: ")) from None


def request_model(limits: Limits) -> type[BaseModel]:
    """The /rank body as a pydantic model with the sizes of `limits` (also the OpenAPI schema)."""
    Title = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_title_chars),
                      AfterValidator(_title)]

    class RankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
            {"history": ["Star Wars (1977)", "Fargo (1996)"], "candidates": ["Return of the Jedi (1983)",
                                                                             "Babe (1995)"], "top": 1}]})
        history: list[Title] = Field(min_length=1, max_length=limits.max_history,
                                     description="titles the user interacted with, oldest first (the oldest are "
                                                 "dropped when the prompt would exceed the token budget)")
        candidates: list[Title] = Field(min_length=1, max_length=limits.max_candidates,
                                        description="titles to rank (duplicates removed, first occurrence kept)")
        top: Optional[int] = Field(None, ge=1, description="return only the best N")
        domain: Literal[tuple(sorted(DOMAINS))] = "movies"  # type: ignore[valid-type]
        order_by: Literal["sum", "mean"] = Field("sum", description="sum: by summed log-prob (what evaluation "
                                                 "ranks by); mean: per token (candidates runs; short titles less "
                                                 "favoured)")
        explain: bool = Field(False, description="also return the top answer's per-token conditional "
                                                 "probabilities (what `prefrec explain` draws; the page shows them)")

    return RankRequest


_LIMIT_NAMES = {"history": "max_history", "candidates": "max_candidates"}


def _describe(e: dict, fields: list[str]) -> tuple[int, str]:
    """(status, message) for one pydantic/FastAPI validation error, naming the field and the limit."""
    loc = [x for x in e.get("loc", ()) if x != "body"]
    name = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x)) for i, x in enumerate(loc))
    kind, ctx = e.get("type", ""), e.get("ctx") or {}
    if kind == "json_invalid":
        return 400, f"request body is not valid JSON (at character {loc[0] if loc else '?'}): {ctx.get('error')}"
    if not loc:
        return 422, f"request body must be a JSON object with fields 'history' and 'candidates' ({e.get('msg')})"
    if kind == "missing":
        return 422, f"field '{name}' is required: a list of title strings"
    if kind == "extra_forbidden":
        return 422, f"unknown field '{name}'; expected some of {fields}"
    if kind == "too_long" and name in _LIMIT_NAMES:
        return 422, (f"field '{name}' has {ctx.get('actual_length')} items; the limit is {ctx.get('max_length')} "
                     f"({_LIMIT_NAMES[name]})")
    if kind == "too_short" and name in _LIMIT_NAMES:
        return 422, f"field '{name}' must not be empty"
    if kind == "string_too_long":
        return 422, (f"{name} is {len(e.get('input') or '')} characters long; the limit is {ctx.get('max_length')} "
                     "(max_title_chars)")
    msg = str(e.get("msg", "")).removeprefix("Value error, ")  # our own title checks
    return 422, f"{name if len(loc) > 1 else f'field {name!r}'}: {msg}"


# ---------------------------------------------------------------------------------------------------------------
# The inference thread

@dataclass(eq=False)
class Job:
    steps: Generator  # prefrec.scoring.packing.chunked_response_logps: yields tokens done, returns the scores
    total: int  # tokens of the packed row
    deadline: float  # time.monotonic() past which the job is dropped
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client has gone
    done: int = 0  # tokens computed so far
    last_turn: float = 0.0  # time.monotonic() when its last chunk was started (0: never)


class RequestTimeout(Exception):
    pass


class Worker:
    """One thread running jobs chunk by chunk: between chunks it drops cancelled and expired jobs, and the oldest
    `max_started` jobs take turns, a chunk each (the rest wait in arrival order). Arrival order means no request
    starves behind later ones; the turns let a short request finish while a long one runs, at half speed instead of
    waiting for all of it; and at most `max_started` KV caches are held at once."""

    def __init__(self, max_started: int = 2):
        self.jobs: list[Job] = []
        self.max_started = max_started
        self.counts = {"done": 0, "failed": 0, "cancelled": 0, "timed_out": 0}
        self.seconds_per_token = 0.0  # running estimate, for Retry-After
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prefrec-infer", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            self.jobs.append(job)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _drop(self, job: Job, kind: str, exc: BaseException | None) -> None:
        self.jobs.remove(job)
        self.counts[kind] += 1
        job.steps.close()  # frees the KV cache now, not at garbage collection
        if exc is not None and not job.future.done():
            job.future.set_exception(exc)
        elif not job.future.done():
            job.future.cancel()

    def _pick(self) -> Job | None:
        with self._cv:
            while not self.jobs and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            now = time.monotonic()
            for job in list(self.jobs):
                if now > job.deadline:  # first: a request answered 503 at its limit also cancelled its job
                    self._drop(job, "timed_out", RequestTimeout())
                elif job.cancelled.is_set():
                    self._drop(job, "cancelled", None)
            pool = self.jobs[:self.max_started]  # submission order
            return min(pool, key=lambda j: j.last_turn) if pool else None

    def _run(self) -> None:
        while True:
            job = self._pick() if not self._closed else None
            if job is None:
                if self._closed:
                    return
                continue
            t0 = time.perf_counter()
            job.last_turn = time.monotonic()
            try:
                done = next(job.steps)
            except StopIteration as end:
                with self._cv:
                    self.jobs.remove(job)
                    self.counts["done"] += 1
                job.future.set_result(end.value)
                continue
            except Exception as e:  # noqa: BLE001 - handed to the request, which answers 500
                with self._cv:
                    self._drop(job, "failed", e)
                continue
            rate = (time.perf_counter() - t0) / max(done - job.done, 1)
            self.seconds_per_token = rate if not self.seconds_per_token else 0.8 * self.seconds_per_token + 0.2 * rate
            job.done = done

    def retry_after(self) -> int:
        """Seconds until the queued work is probably done (at least 1), for the Retry-After header."""
        with self._cv:
            left = sum(j.total - j.done for j in self.jobs)
        return max(1, math.ceil(left * self.seconds_per_token))


# ---------------------------------------------------------------------------------------------------------------
# The app

def default_label(model: str | tuple) -> str:
    """What answers and /health call the model when no label is given: the name it was loaded by, but for a local
    folder only the folder's own name, never its path (that would tell every client where the files are)."""
    name = model if isinstance(model, str) else getattr(model[0].config, "_name_or_path", "") or ""
    if not name:
        return type(model[0]).__name__
    return Path(name).resolve().name if Path(name).exists() else name


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class ErrorBody(BaseModel):
    """Every error answer (the OpenAPI schema documents each status with it)."""
    error: str = Field(description="what is wrong, naming the field and the limit")


def _errors(*statuses: int) -> dict:
    """OpenAPI `responses` for error statuses (FastAPI documents only 422, as its own `detail` body, by itself)."""
    said = {400: "the body is not JSON, or the Host header is not one the server answers to",
            401: "missing or wrong bearer token", 408: "the body did not arrive within read_seconds",
            413: "the body is larger than max_body_bytes", 415: "the body was not sent as JSON",
            422: "a field is missing, of the wrong type or over a limit (titles, characters, tokens)",
            503: "the queue is full, or the request ran past max_seconds (with Retry-After)"}
    return {status: {"model": ErrorBody, "description": said[status]} for status in statuses}


def _error_handlers(app: FastAPI, fields: list[str]) -> None:
    """Every error is one JSON body {"error": ...} with its status: prefrec's own, HTTP's, and request validation
    (a body that is not JSON gets 415, naming the Content-Type it came with)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        kind = request.headers.get("content-type")
        if not _is_json(kind):  # FastAPI does not parse such a body as JSON at all
            return _error(415, f"request body must be JSON, sent with 'Content-Type: application/json' (got "
                               f"{kind!r})")
        described = [_describe(e, fields) for e in exc.errors()]
        return _error(max(s for s, _ in described), "; ".join(m for _, m in described))


def create_app(model: str | tuple, *, limits: Limits | None = None, model_label: str | None = None,
               dtype: str | None = None, device: str | None = None, docs: bool = False,
               chunk_tokens: int = DEFAULT_CHUNK_TOKENS, token: str | None = None,
               allowed_hosts: list[str] | None = None, ranker: RankPrompt | None = None, ui: bool = True) -> FastAPI:
    """The FastAPI app. `model` is a name for `prefrec.model.load_model` (loaded once, at startup) or an
    already-loaded (model, tokenizer) pair. `ranker`: the task and answer format to rank with (default: the run's
    own, `ranker_of(model)`, for a name; candidates for a loaded pair). `model_label`: default_label's by default.
    `token`: every request must send `Authorization: Bearer <token>`. `allowed_hosts`: Host header values
    answered (default: the loopback names; "*" for any). `docs=True` serves /openapi.json and Swagger UI at /docs
    (its script and style come from a CDN, so the browser needs the internet); both are off by default. `ui`: the
    page at / to try the model in a browser (`page_html`)."""
    limits = limits or Limits()
    label = model_label or default_label(model)
    if ranker is None:
        ranker = ranker_of(model) if isinstance(model, str) else RankPrompt()  # a run's task, checked before any load
    RankRequest = request_model(limits)
    fields = list(RankRequest.model_fields)
    admission = Admission(limits.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(model, str):
            app.state.model, app.state.tokenizer = load_model(model, dtype=dtype, device=device)
        else:
            app.state.model, app.state.tokenizer = model
        app.state.ranker = ranker
        app.state.budget = token_budget(app.state.model, limits.max_tokens)
        app.state.tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefrec-tokenize")
        app.state.worker = admission.worker = Worker()
        try:
            yield
        finally:
            app.state.worker.close()
            app.state.tokenize.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="prefrec ranking service", version="2", lifespan=lifespan,
                  docs_url="/docs" if docs else None, openapi_url="/openapi.json" if docs else None, redoc_url=None,
                  description="Rank candidate titles for a user's history with a causal LM (summed log-probability "
                              "of each title as the answer to the candidates prompt).")
    app.add_middleware(Gate, limits=limits, admission=admission, token=token,
                       allowed_hosts=list(LOOPBACK_NAMES) if allowed_hosts is None else allowed_hosts,
                       public=frozenset({"/"}) if ui else frozenset())
    if ui:
        _add_page(app, label)

    _error_handlers(app, fields)

    @app.get("/health", responses=_errors(400, 401, 408, 413))
    async def health(request: Request) -> dict:
        state = request.app.state
        return {"status": "ok", "model": label, "limits": asdict(limits), "max_tokens_effective": state.budget.tokens,
                "admitted": admission.admitted, "jobs": dict(state.worker.counts)}

    async def rank_endpoint(req, request: Request):  # admitted by the Gate (max_queue) before its body was read
        return await _serve(request, req, request.app.state, limits, chunk_tokens, label)

    # the body model is built at run time, so it is attached here rather than in a (string) annotation
    rank_endpoint.__annotations__["req"] = RankRequest
    app.post("/rank", responses=_errors(400, 401, 408, 413, 415, 422, 503))(rank_endpoint)
    return app


def _add_page(app: FastAPI, label: str) -> None:
    page, policy = page_html(label)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})


def page_html(label: str) -> tuple[str, str]:
    """The page (serving/page.html, the model's name and the domains filled in, escaped) and its
    Content-Security-Policy: its own inline script and style only, by hash, and requests to this server only, so a
    title that reached the page as text could never run as script."""
    text = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")
    text = text.replace("{model}", html.escape(label, quote=True)).replace("{domains}", " ".join(sorted(DOMAINS)))

    def digest(tag: str) -> str:
        body = text.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    # the script sets widths and colours through the CSSOM (element.style), which a style-src policy allows
    policy = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; connect-src 'self'; "
              f"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return text, policy


async def _serve(request: Request, req, state, limits: Limits, chunk_tokens: int, label: str):
    """Tokenise within the budget, run on the inference thread, stop early when the client leaves."""
    deadline = time.monotonic() + limits.max_seconds
    loop = asyncio.get_running_loop()
    try:
        tree, history, candidates = await loop.run_in_executor(
            state.tokenize, lambda: budgeted_tree(state.tokenizer, req.history, req.candidates, budget=state.budget,
                                            domain=req.domain, ranker=state.ranker,
                                            items=attached(state.model)))
    except UserError as e:
        raise ApiError(422, str(e)) from None
    job = Job(steps=chunked_response_logps(state.model, tree, chunk_tokens=chunk_tokens, per_token=req.explain),
              total=tree.n_tokens(), deadline=deadline)
    request.state.n_tokens = tree.n_tokens()  # for the request's log line
    state.worker.submit(job)
    waiting = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            if done:
                break
            if await request.is_disconnected():
                job.cancelled.set()  # the worker drops it before its next chunk
                return Response(status_code=499)
            if time.monotonic() > deadline:  # answered now, not when the chunk that is running ends
                job.cancelled.set()
                raise RequestTimeout()
        summed, token_logps = waiting.result() if req.explain else (waiting.result(), None)
    except RequestTimeout:
        retry = state.worker.retry_after()
        raise ApiError(503, f"request took longer than the limit of {limits.max_seconds:g} s (max_seconds) and was "
                            f"stopped; retry in {retry} s", {"Retry-After": str(retry)}) from None
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    ranking = ranking_of(tree, candidates, summed, req.top, state.ranker, req.order_by)
    out = {"ranking": ranking, "model": label, "task": state.ranker.task, "answers": state.ranker.answers,
           "domain": req.domain, "n_candidates": len(candidates), "n_history": len(history),
           "n_tokens": tree.n_tokens(), "notes": list(state.ranker.notes)}
    note = missing_items_note(attached(state.model), history, candidates)  # a hybrid model: titles without an item token
    if note:
        out["note"] = note
    if token_logps is not None:
        out["explanation"] = top_answer_tokens(state.tokenizer, tree, summed, token_logps)
    return out


def top_answer_tokens(tokenizer, tree, summed: list[float], token_logps: list[list[float]]) -> dict:
    """The most probable response of the tree, token by token: {"answer", "logp", "tokens": [{"piece", "p"}]}
    (responses in tree order, branch by branch, as `summed`; the end-of-turn token included, so the product of the
    p is exp(logp))."""
    responses = [ids for branch in tree.branches for ids in branch.responses]
    best = max(range(len(summed)), key=lambda n: summed[n])
    ids = list(responses[best])
    return {"answer": tokenizer.decode(ids, skip_special_tokens=True).strip(), "logp": round(summed[best], 4),
            "tokens": [{"piece": piece, "p": float(f"{math.exp(lp):.6g}")}
                       for piece, lp in zip(token_pieces(tokenizer, ids), token_logps[best])]}


TOKEN_ENV = "PREFREC_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16


def read_token(token_file: str | os.PathLike | None = None) -> str | None:
    """The bearer token: the first line of `token_file`, else the environment variable PREFREC_SERVE_TOKEN, else
    None. Never a command-line value: those show in `ps` and shell history."""
    if token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise UserError(f"--token-file {token_file}: cannot read it ({e.strerror})") from None
        token, where = (lines[0].strip() if lines else ""), f"--token-file {token_file}"
    elif os.environ.get(TOKEN_ENV) is not None:
        token, where = os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"{where}: the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}, e.g. "
                        "the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


def check_exposure(host: str, token: str | None) -> str | None:
    """Refuse a server that other machines can reach without a token (UserError); return a warning when it listens
    on every interface, else None."""
    if is_loopback(host):
        return None
    if token is None:
        raise UserError(f"--host {host} is reachable from other machines, so a bearer token is required: put one "
                        f"in ${TOKEN_ENV} or in a file given with --token-file (or keep --host 127.0.0.1)")
    if host in WILDCARD_HOSTS:
        return (f"listening on every network interface ({host!r}): any network this machine is on can reach the "
                "server. The token travels in clear text over HTTP: put a TLS proxy in front of it, and name the "
                "host name clients use with --allow-host (the Host allow-list)")
    return None


def server_config(app, *, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
                  log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for `app`: one worker (the model is in memory once), the request-head deadline protocol
    (HeadTimeoutH11Protocol, idle_seconds) and the connection cap (max_connections)."""
    limits = limits or Limits()
    # RequestLog's line (status, latency, tokens, reason) replaces uvicorn's access log, through uvicorn's handler
    logging_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logging_config["loggers"]["prefrec.serve"] = {"handlers": ["default"], "level": log_level.upper(),
                                                  "propagate": False}
    return uvicorn.Config(app, host=host, port=port, workers=1, log_level=log_level, http=HeadTimeoutH11Protocol,
                          timeout_keep_alive=limits.idle_seconds, limit_concurrency=limits.max_connections,
                          timeout_graceful_shutdown=10, access_log=False, log_config=logging_config)


def run_server(model: str | tuple, *, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
               model_label: str | None = None, log_level: str = "info", docs: bool = False,
               token: str | None = None, allowed_hosts: list[str] | None = None,
               ranker: RankPrompt | None = None, ui: bool = True) -> None:
    """Serve with uvicorn in this process (`ranker` as create_app's). A host other machines can reach needs a token (check_exposure); the
    Host allow-list defaults to the loopback names plus `host`, and `allowed_hosts` adds to it."""
    warning = check_exposure(host, token)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    hosts = ["*"] if allowed_hosts and "*" in allowed_hosts else \
        list(dict.fromkeys(default_allowed_hosts(host) + list(allowed_hosts or [])))
    app = create_app(model, limits=limits, model_label=model_label, docs=docs, token=token, allowed_hosts=hosts,
                     ranker=ranker, ui=ui)
    uvicorn.Server(server_config(app, host=host, port=port, limits=limits, log_level=log_level)).run()
