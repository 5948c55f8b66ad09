"""The OpenAI-compatible HTTP app over a BrickService.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /v1/bricks, GET /health, GET /metrics (Prometheus). Extension: a request may carry
`"bricks": ["lang-fr@1", {"ref": "rare", "gain": 1.5}]`; every response says which bricks ran
(`brickwork` field and the `X-Brick-Assembly` header). Errors are JSON `{"error": {...}}` with the
status of the BrickError (404 unknown brick, 409 other host, 422 bad request, 401 bad key).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from bricks.errors import BrickError
from serving.engine import GenRequest
from serving.service import BrickService


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many optional fields
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    bricks: list[str | dict[str, Any]] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str


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
    app = FastAPI(title="brickwork", version="0.1.0")
    prom = _Prom(service)
    api_key = service.manifest.server.api_key()

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key", "authentication_error")
        return await call_next(request)

    @app.exception_handler(BrickError)
    async def brick_error(request: Request, exc: BrickError):
        prom.requests.labels(request.url.path, str(exc.status)).inc()
        return _error(exc.status, str(exc), type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        prom.requests.labels(request.url.path, "422").inc()
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return _error(422, f"malformed request: {problems}", "invalid_request_error")

    @app.get("/health")
    async def health():
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

    async def run(req: _Common, ids: list[int], prompt_text: str, kind: str):
        max_tokens = req.max_completion_tokens or req.max_tokens or min(256, service.manifest.server.max_tokens)
        service.check_limits(len(ids), max_tokens)
        misses = service.cache.stats.misses
        decision, built = service.plan(prompt_text, req.bricks, req.model)
        prom.route.observe(decision.route_ms / 1e3)
        if service.cache.stats.misses > misses:
            prom.build.observe(built.build_ms / 1e3)
        gen = GenRequest(ids, max_tokens, req.temperature, req.top_p, req.seed, stop=req.stops())
        info = {"assembly": built.id if built.refs else None, "bricks": built.refs, "routing": decision.explain()}
        headers = {"X-Brick-Assembly": built.id if built.refs else "none"}
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
        body = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()), "model": model, "choices": [choice], "usage": usage, "brickwork": info}
        return JSONResponse(body, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        messages = [m.model_dump() for m in req.messages]
        ids = service.tokenize_chat(messages)
        last_user = next((m.content for m in reversed(req.messages) if m.role == "user"), req.messages[-1].content)
        return await run(req, ids, last_user, "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        return await run(req, service.tokenize(req.prompt), req.prompt, "completion")

    return app


async def _sse(service, prom, gen, built, rid, model, kind, info, n_prompt) -> AsyncIterator[bytes]:
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    n = 0

    def chunk(text: str | None, finish: str | None, first: bool = False) -> bytes:
        if kind == "chat":
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "brickwork": info}
        return f"data: {json.dumps(body)}\n\n".encode()

    try:
        if kind == "chat":
            yield chunk(None, None, first=True)
        async for d in service.engine.stream(gen, built):
            n += len(d.token_ids)
            if d.text or d.finish_reason:
                yield chunk(d.text, d.finish_reason)
        prom.requests.labels(kind, "200").inc()
    except BrickError as e:  # headers are sent: report in-band
        yield f"data: {json.dumps({'error': {'message': str(e), 'code': e.status}})}\n\n".encode()
    finally:
        prom.tokens.labels("prompt").inc(n_prompt)
        prom.tokens.labels("completion").inc(n)
    yield b"data: [DONE]\n\n"
