"""The OpenAI-compatible HTTP app over a BrickService.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /v1/bricks, GET /health, GET /metrics (Prometheus). With engine.kind: vllm, chat and completions are vLLM's
own OpenAI serving layer around brickwork's routing (serving/openai_api.py); with the reference engine they are
written here, for the same bodies (content parts are flattened; n is 1, logprobs the chosen tokens').
Extension: a request may carry `"bricks": ["lang-fr@1", {"ref": "rare", "gain": 1.5}]`; every response says
which bricks ran (`brickwork` field and the `X-Brick-Assembly` header). Errors are JSON `{"error": {...}}` with the
status of the BrickError (404 unknown brick, 409 other host, 422 bad request), 401 for a missing or wrong key
and 413 for a body above server.max_body_bytes.

Limits, cheapest first, so that no request costs much before it is refused: the key and the body's size
before the body is read; field sizes (message count, stop strings, brick refs, max_tokens) when it is
parsed; the prompt's length in characters before it is tokenized (a text longer than max_prompt_tokens
times the host's longest token cannot fit); its length in tokens before anything runs.

With server.api_key_env set, every route needs `Authorization: Bearer <key>` except `GET /health`, which
answers `{"status": "ok"}` to anyone and its details only with the key. No route changes the registry.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bricks.errors import BrickError, InvalidInputError
from router.assembly import BuiltAssembly
from router.policy import REQUEST_BRICK_FIELDS
from serving.engine import GenRequest
from serving.service import BrickService

# Fixed sizes of the small fields (prompt text is bounded by server.max_prompt_tokens, the whole body by
# server.max_body_bytes, the message count by server.max_messages).
MAX_NAME_CHARS = 256  # a model name, a brick ref, one stop string
MAX_STOPS = 4  # as OpenAI
MAX_REQUEST_BRICKS = 64
SAMPLING_EPS = 1e-5


def _no_lone_surrogates(text: str) -> str:
    # JSON may carry "\ud800", which Python keeps as an unpaired surrogate; no tokenizer or UTF-8 encoder takes it
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds an unpaired UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode text") from None
    return text


def _greedy_below_eps(temperature: float) -> float:
    # vLLM's rule (SamplingParams: below 1e-5 is greedy); dividing logits by 1e-176 gives inf, then NaN
    return 0.0 if temperature < SAMPLING_EPS else temperature


Text = Annotated[str, AfterValidator(_no_lone_surrogates)]
Name = Annotated[Text, Field(max_length=MAX_NAME_CHARS)]


def _check_request_bricks(items: list[Any]) -> list[Any]:
    """Sizes only; the router checks the grammar and the fields (one message for refs everywhere)."""
    for item in items:
        ref = item.get("ref") if isinstance(item, dict) else item
        if isinstance(ref, str) and len(ref) > MAX_NAME_CHARS:
            raise ValueError(f"a brick ref is {len(ref)} characters; refs are at most {MAX_NAME_CHARS}")
        if isinstance(item, dict) and len(item) > 8:
            raise ValueError("a request brick has at most the fields " + ", ".join(REQUEST_BRICK_FIELDS))
    return items


RequestBricks = Annotated[list[Name | dict[str, Any]], Field(max_length=MAX_REQUEST_BRICKS),
                          AfterValidator(_check_request_bricks)] | None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


def content_text(content: str | list | None) -> str:
    """A message's text: a string as it is, OpenAI content parts' texts joined by newlines (as vLLM joins
    them for a string chat template)."""
    if isinstance(content, list):
        return "\n".join(p["text"] if isinstance(p, dict) else p.text for p in content
                         if (p.get("type") if isinstance(p, dict) else p.type) == "text")
    return content or ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Annotated[Text | list[TextPart], AfterValidator(content_text)]  # parts are flattened to one text


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many optional fields
    model: Name | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Annotated[float, Field(ge=0, le=2), AfterValidator(_greedy_below_eps)] = 1.0
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # what torch and vLLM generators take
    stream: bool = False
    stop: Name | Annotated[list[Name], Field(max_length=MAX_STOPS)] | None = None
    n: int = Field(1, ge=1, le=1)
    bricks: RequestBricks = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def wants_logprobs(self) -> bool:
        return False


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False  # each generated token's logprob (the engine keeps only the chosen token's)
    top_logprobs: int | None = Field(None, ge=0, le=0)

    def wants_logprobs(self) -> bool:
        return self.logprobs


class CompletionRequest(_Common):
    prompt: Text
    logprobs: int | None = Field(None, ge=0, le=0)  # 0: the chosen tokens' logprobs (no alternatives)

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class _CacheCollector:
    """Assembly cache hits/misses, read from the cache's own counters at scrape time."""

    def __init__(self, service: BrickService):
        self.service = service

    def collect(self):
        fam = CounterMetricFamily("brick_assembly_cache", "Assembly cache lookups", labels=["result"])
        st = self.service.cache.stats
        fam.add_metric(["hit"], st.hits)
        fam.add_metric(["miss"], st.misses)
        yield fam


class _Prom:
    def __init__(self, service: BrickService):
        self.registry = CollectorRegistry()
        self.registry.register(_CacheCollector(service))
        self.requests = Counter("brick_requests", "Requests served", ["endpoint", "status"], registry=self.registry)
        self.tokens = Counter("brick_tokens", "Tokens", ["kind"], registry=self.registry)
        self.build = Histogram("brick_assembly_build_seconds", "Assembly build time", registry=self.registry)
        self.route = Histogram("brick_route_seconds", "Routing + assembly lookup time", registry=self.registry,
                               buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))


def create_app(service: BrickService) -> FastAPI:
    """The app over `service`. Every route only reads: nothing here publishes, tags or removes bricks."""
    app = FastAPI(title="brickwork", version="0.1.0")
    prom = _Prom(service)
    api_key = service.manifest.server.api_key()

    app.add_middleware(_Gate, api_key=api_key, max_body_bytes=service.manifest.server.max_body_bytes)

    @app.exception_handler(BrickError)
    async def brick_error(request: Request, exc: BrickError):
        prom.requests.labels(request.url.path, str(exc.status)).inc()
        return _error(exc.status, str(exc), type(exc).__name__)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI's own refusals (an unparsable body, an unknown path or method) in the same error shape
        response = _error(exc.status_code, str(exc.detail), "invalid_request_error")
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        prom.requests.labels(request.url.path, "422").inc()
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return _error(422, f"malformed request: {problems}", "invalid_request_error")

    @app.get("/health")
    async def health(request: Request):
        if not _key_matches(api_key, request.headers.get("authorization")):
            return {"status": "ok"}  # liveness for anyone; the details need the key
        return {"status": "ok", "engine": service.engine.name, "host": service.host.ref.name,
                "self_test": service.self_test_report}

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        names = [service.manifest.name, *service.manifest.assemblies]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "brickwork",
                                            "bricks": service.manifest.assemblies.get(n)} for n in names]}

    @app.get("/v1/bricks")
    async def bricks():
        out = []
        for b in service.manifest.bricks:
            v = service.registry.resolve(b.ref)
            out.append({"ref": b.ref, "alias": b.alias, "resolved": v.ref, "kind": v.kind, "gain": b.gain,
                        "routable": b.routable, "description": v.meta.description})
        return {"object": "list", "data": out}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(prom.registry).decode(), media_type="text/plain; version=0.0.4")

    if service.engine.name == "vllm":
        from serving.openai_api import add_generation_routes  # imports vLLM: only when it serves

        add_generation_routes(app, service, prom)
    else:
        _add_reference_routes(app, service, prom)
    return app


def plan_request(service: BrickService, prom: _Prom, text: str, bricks: list | None, model: str | None
                 ) -> tuple[BuiltAssembly, dict, dict]:
    """Route a request to its assembly (built or cached), with the timings in /metrics; returns the assembly,
    the brick report (the `brickwork` key of a response) and the response headers."""
    misses = service.cache.stats.misses
    decision, built = service.plan(text, bricks, model)
    prom.route.observe(decision.route_ms / 1e3)
    if service.cache.stats.misses > misses:
        prom.build.observe(built.build_ms / 1e3)
    info = {"assembly": built.id if built.refs else None, "bricks": built.refs, "routing": decision.explain()}
    return built, info, {"X-Brick-Assembly": built.id if built.refs else "none"}


def _add_reference_routes(app: FastAPI, service: BrickService, prom: _Prom) -> None:
    """Chat and completions written here, over any Engine (the transformers reference engine: the oracle)."""

    async def run(req: _Common, ids: list[int], prompt_text: str, kind: str):
        max_tokens = _max_tokens(req, service)
        service.check_limits(len(ids), max_tokens)
        built, info, headers = plan_request(service, prom, prompt_text, req.bricks, req.model)
        gen = GenRequest(ids, max_tokens, req.temperature, req.top_p, req.seed, logprobs=req.wants_logprobs(),
                         stop=req.stops())
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        model = req.model or service.manifest.name
        if req.stream:
            return StreamingResponse(_sse(service, prom, gen, built, rid, model, kind, info, len(ids)),
                                     media_type="text/event-stream", headers=headers)
        out = await service.engine.generate(gen, built)
        prom.requests.labels(kind, "200").inc()
        prom.tokens.labels("prompt").inc(len(ids))
        prom.tokens.labels("completion").inc(len(out.token_ids))
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(out.token_ids),
                 "total_tokens": len(ids) + len(out.token_ids)}
        choice = ({"index": 0, "message": {"role": "assistant", "content": out.text}} if kind == "chat"
                  else {"index": 0, "text": out.text})
        choice["finish_reason"] = out.finish_reason or "stop"
        if gen.logprobs:
            choice["logprobs"] = _logprobs(service, kind, out.token_ids, out.logprobs)
        body = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()), "model": model, "choices": [choice], "usage": usage, "brickwork": info}
        return JSONResponse(body, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        _check_sizes(req, service)
        messages = [m.model_dump() for m in req.messages]
        ids = service.tokenize_chat(messages)
        last_user = next((m.content for m in reversed(req.messages) if m.role == "user"), req.messages[-1].content)
        return await run(req, ids, last_user, "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        _check_sizes(req, service)
        return await run(req, service.tokenize(req.prompt), req.prompt, "completion")


def _max_tokens(req: _Common, service: BrickService) -> int:
    return req.max_completion_tokens or req.max_tokens or min(256, service.manifest.server.max_tokens)


def _check_sizes(req: _Common, service: BrickService) -> None:
    """The cheap checks, before any tokenizing (the prompt is then checked by characters, then by tokens)."""
    service.check_max_tokens(_max_tokens(req, service))
    most = service.manifest.server.max_messages
    if isinstance(req, ChatRequest) and len(req.messages) > most:
        raise InvalidInputError(f"the request has {len(req.messages)} messages; this server takes at most {most} "
                                "(server.max_messages)", "send fewer messages")


def _key_matches(api_key: str | None, authorization: str | bytes | None) -> bool:
    """Whether the Authorization header carries the key (always true when the server has none)."""
    if not api_key:
        return True
    given = authorization.encode("latin-1") if isinstance(authorization, str) else (authorization or b"")
    return hmac.compare_digest(given, f"Bearer {api_key}".encode())


class _Gate:
    """What is checked before a request's body is read: the API key (every path but /health, which then
    answers its status only), then the body's size. A body above max_body_bytes gets 413 as soon as its
    Content-Length says so, or once that many bytes of a chunked body have come, never parsed."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["path"] != "/health" and not _key_matches(self.api_key, headers.get(b"authorization")):
            return await _error(401, "missing or wrong API key; send the header Authorization: Bearer <key>",
                                "authentication_error")(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            return await self._too_large(f"{int(length)} bytes")(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._too_large(f"more than {self.max_body} bytes")(scope, receive, send)
            more = message.get("more_body", False)
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: str) -> JSONResponse:
        return _error(413, f"request body is {size}; this server accepts at most {self.max_body} "
                      "(server.max_body_bytes)", "invalid_request_error")


def _logprobs(service: BrickService, kind: str, token_ids: list[int], logprobs: list[float]) -> dict:
    """OpenAI's logprobs object for these tokens: chat `{"content": [...]}`, completions the legacy lists."""
    tok = service.host.tokenizer
    tokens = [tok.decode([t]) for t in token_ids]
    if kind == "chat":
        return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8", "replace")),
                             "top_logprobs": []} for t, lp in zip(tokens, logprobs)]}
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": None, "text_offset": offsets}


async def _sse(service, prom, gen, built, rid, model, kind, info, n_prompt) -> AsyncIterator[bytes]:
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    n = 0

    def chunk(text: str | None, finish: str | None, first: bool = False, delta=None) -> bytes:
        if kind == "chat":
            delta_body = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta_body, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        if gen.logprobs and delta is not None:
            choice["logprobs"] = _logprobs(service, kind, delta.token_ids, delta.logprobs)
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "brickwork": info}
        return f"data: {json.dumps(body)}\n\n".encode()

    try:
        if kind == "chat":
            yield chunk(None, None, first=True)
        async for d in service.engine.stream(gen, built):
            n += len(d.token_ids)
            if d.text or d.finish_reason or (gen.logprobs and d.token_ids):
                yield chunk(d.text, d.finish_reason, delta=d)
        prom.requests.labels(kind, "200").inc()
    except BrickError as e:  # headers are sent: report in-band
        yield f"data: {json.dumps({'error': {'message': str(e), 'code': e.status}})}\n\n".encode()
    finally:
        prom.tokens.labels("prompt").inc(n_prompt)
        prom.tokens.labels("completion").inc(n)
    yield b"data: [DONE]\n\n"
