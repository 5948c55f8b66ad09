"""Chat and completions for `engine.kind: vllm` on vLLM's own OpenAI serving layer, in-process with the
service's AsyncLLM (read from vLLM 0.32.0: entrypoints/openai/{chat_completion,completion,models}/serving.py
and launchers/api_server/app_state.py, which builds the same classes for `vllm serve`).

vLLM parses the request (its ChatCompletionRequest / CompletionRequest), renders the chat template
(OnlineRenderer: content parts, tools), builds SamplingParams (n, stop, seed, logprobs and top_logprobs,
stream_options, ignore_eos, min_tokens, response_format, `vllm_xargs`, ...) and writes the responses and
SSE chunks. brickwork adds, around it:
- `bricks` in the request body: the request models are subclassed with that one field;
- routing and the assembly (app.plan_request), before vLLM sees the request;
- the assembly's gain-table rows as `vllm_xargs` (SamplingParams.extra_args), its LoRA adapter from
  `_maybe_get_adapters` (the one hook vLLM gives for choosing a LoRARequest per request), and its prefix-cache
  salt on each rendered prompt (the render hooks: a staged assembly's salt names the prompt's tokens);
- limits: max_tokens, messages and prompt characters before rendering, prompt tokens after;
- the brick report (`brickwork` in the body and in the first stream chunk), X-Brick-Assembly, /metrics.

Not reused: vLLM's route functions (api_router.py) and its FastAPI app, because brickwork's handler must
route and set the assembly between parsing and serving and add a header; they are a few lines around
`create_chat_completion` / `create_completion`, which are reused whole. vLLM's /v1/models is not used either:
the assemblies a manifest names are its models, listed with their bricks by app.py. vLLM's runtime LoRA
registration (/v1/load_lora_adapter, OpenAIServingModels.lora_requests) is not used: an assembly's adapter is
built on demand and named by its assembly id, so it is passed per request instead of registered by name.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, PrivateAttr, model_validator
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.serve import create_error_response
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.utils.api_utils import with_cancellation
from vllm.exceptions import VLLMError
from vllm.renderers.online_renderer import OnlineRenderer
from vllm.sampling_params import RequestOutputKind

from bricks.errors import InvalidInputError
from router.assembly import BuiltAssembly
from serving.app import RequestBricks, _Prom, content_text, plan_request
from serving.engine import assembly_extra_args, cache_salt
from serving.service import BrickService
from serving.vllm_plugin import EXTRA_ASSEMBLY, EXTRA_ROW, EXTRA_ROW_GENERATED

BRICK_XARGS = (EXTRA_ASSEMBLY, EXTRA_ROW, EXTRA_ROW_GENERATED)  # brickwork's own; a request may not send them


class _BrickFields(BaseModel):
    """What brickwork adds to vLLM's request models (listed first among the bases, so these fields win): the
    `bricks` field and, once routed, the request's assembly and its LoRA adapter."""

    # vLLM caches each class's field names to warn about unknown fields; each subclass needs its own cache
    field_names: ClassVar[set[str] | None] = None
    bricks: RequestBricks = None
    temperature: float | None = Field(None, ge=0, le=2)  # out of range: 422, as brickwork's own layer said
    _built: BuiltAssembly | None = PrivateAttr(None)
    _lora: Any = PrivateAttr(None)


class BrickChatRequest(_BrickFields, ChatCompletionRequest):
    pass


class BrickCompletionRequest(_BrickFields, CompletionRequest):
    @model_validator(mode="before")
    @classmethod
    def normalize_null_max_tokens(cls, data):
        # Replaces vLLM 0.32's validator of this name, which fills a missing or null max_tokens with 16 before
        # anyone can tell it was missing: brickwork fills it (`_prepare`), within the server's limit.
        return data


class BrickModels(OpenAIServingModels):
    """vLLM's model registry with the manifest's name and its named assemblies as the served models. A LoRA
    adapter here is an assembly's, named by the assembly id: responses name the model the client asked for."""

    def model_name(self, lora_request=None) -> str:
        return self.base_model_paths[0].name


class _AssemblyServing:
    """The hooks brickwork overrides in vLLM's serving classes (mixed in before them)."""

    def __init__(self, service: BrickService, *args, **kwargs):
        self.service = service
        super().__init__(*args, **kwargs)

    def _maybe_get_adapters(self, request, supports_default_mm_loras: bool = False):
        # vLLM would look the model name up among registered adapters; here the assembly decides
        return request._lora

    def _salt_prompts(self, request, engine_inputs: list) -> None:
        """Every rendered prompt gets brickwork's limits and its assembly's cache salt. A client's own
        cache_salt is kept inside a namespace of its own, so no request can forge an assembly's salt."""
        built = request._built
        max_tokens = _max_tokens(request)
        for engine_input in engine_inputs:
            ids = list(self._extract_prompt_components(engine_input).token_ids or [])
            self.service.check_limits(len(ids), max_tokens)
            parts = [cache_salt(built, ids)] if built.refs else []
            if request.cache_salt:
                parts.append(f"client-{request.cache_salt}")
            if parts:
                engine_input["cache_salt"] = "/".join(parts)


class BrickServingChat(_AssemblyServing, OpenAIServingChat):
    async def render_chat_request(self, request):
        result = await super().render_chat_request(request)
        if not isinstance(result, ErrorResponse):
            self._salt_prompts(request, result[1])
        return result


class BrickServingCompletion(_AssemblyServing, OpenAIServingCompletion):
    async def render_completion_request(self, request):
        result = await super().render_completion_request(request)
        if not isinstance(result, ErrorResponse):
            self._salt_prompts(request, result)
        return result


class _CountingEngine:
    """The AsyncLLM as the serving classes see it, counting prompt and generated tokens for /metrics (vLLM
    reports usage in a stream only when the client asks for it)."""

    def __init__(self, llm, prom: _Prom):
        self._llm, self._prom = llm, prom

    def __getattr__(self, name: str):
        return getattr(self._llm, name)

    async def generate(self, prompt, sampling_params, *args, **kwargs):
        delta = getattr(sampling_params, "output_kind", None) == RequestOutputKind.DELTA
        prompt_tokens, generated = 0, 0
        outputs = self._llm.generate(prompt, sampling_params, *args, **kwargs)
        try:
            async for out in outputs:
                prompt_tokens = len(out.prompt_token_ids or [])
                n = sum(len(o.token_ids) for o in out.outputs)
                generated = generated + n if delta else n
                yield out
        finally:
            await outputs.aclose()  # a client that left: AsyncLLM aborts its request now, not when collected
            self._prom.tokens.labels("prompt").inc(prompt_tokens)
            self._prom.tokens.labels("completion").inc(generated)


def _max_tokens(request) -> int | None:
    if isinstance(request, BrickChatRequest) and request.max_completion_tokens is not None:
        return request.max_completion_tokens
    return request.max_tokens


def _prepare(service: BrickService, prom: _Prom, request, route_text: str) -> tuple[dict, dict]:
    """Route `request` and set its assembly where vLLM reads it; returns the brick report and headers."""
    if _max_tokens(request) is None or not request.model_fields_set & {"max_tokens", "max_completion_tokens"}:
        # none named: completions default to 16 (OpenAI's, vLLM's), chat to 256 (vLLM: up to max_model_len),
        # both within the server's limit
        limit = service.manifest.server.max_tokens
        if isinstance(request, BrickChatRequest):
            request.max_completion_tokens = min(256, limit)
        else:
            request.max_tokens = min(type(request).model_fields["max_tokens"].default, limit)
    service.check_max_tokens(_max_tokens(request))
    sent = sorted(set(request.vllm_xargs or {}) & set(BRICK_XARGS))
    if sent:
        raise InvalidInputError(f"vllm_xargs {sent} are brickwork's own", "name bricks in the `bricks` field")
    built, info, headers = plan_request(service, prom, route_text, request.bricks, request.model)
    extra = assembly_extra_args(built)
    if extra:
        request.vllm_xargs = {**(request.vllm_xargs or {}), **extra}
    request._built = built
    request._lora = service.engine.lora_request(built)
    return info, headers


async def _respond(service: BrickService, prom: _Prom, kind: str, request, info: dict, headers: dict, result):
    """vLLM's answer with brickwork's report: an error as JSON, a response with `brickwork`, a stream whose
    first chunk carries it. Responses name the model the client asked for."""
    if isinstance(result, ErrorResponse):
        prom.requests.labels(kind, str(result.error.code)).inc()
        return JSONResponse(result.model_dump(), status_code=result.error.code)
    model = request.model or service.manifest.name
    if isinstance(result, ChatCompletionResponse | CompletionResponse):
        prom.requests.labels(kind, "200").inc()
        body = result.model_dump()
        body["model"] = model
        body["brickwork"] = info
        return JSONResponse(body, headers=headers)
    return StreamingResponse(_stream(prom, kind, result, info, service.manifest.name, model),
                             media_type="text/event-stream", headers=headers)


async def _stream(prom: _Prom, kind: str, chunks, info: dict, served: str, model: str):
    first = True
    served_field, model_field = f'"model":{json.dumps(served)}', f'"model":{json.dumps(model)}'
    async for chunk in chunks:
        if first and chunk.startswith("data: {"):
            body = json.loads(chunk[len("data: "):])
            body["brickwork"] = info
            if "model" in body:
                body["model"] = model
            chunk = f"data: {json.dumps(body)}\n\n"
            first = False
        elif model != served:  # vLLM's chunks are compact JSON; the model name is a plain field of each
            chunk = chunk.replace(served_field, model_field, 1)
        yield chunk
    prom.requests.labels(kind, "200").inc()


def _completion_text(service: BrickService, prompt) -> tuple[str, int]:
    """The text a completion request is routed by (a batch of prompts runs on the first one's assembly) and
    its characters (token-id prompts are limited once rendered)."""
    prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    texts = [p for p in prompts if isinstance(p, str)]
    first = prompts[0]
    if isinstance(first, list):
        first = service.host.tokenizer.decode(first)
    return first if isinstance(first, str) else "", sum(map(len, texts))


def add_generation_routes(app: FastAPI, service: BrickService, prom: _Prom) -> None:
    """POST /v1/chat/completions and /v1/completions on vLLM's serving classes, built as vLLM's
    api_server builds them (defaults: the host's chat template, no tool parser, no request logging)."""
    llm = service.engine.llm
    engine = _CountingEngine(llm, prom)
    names = [service.manifest.name, *service.manifest.assemblies]
    models = BrickModels(engine, [BaseModelPath(name=n, model_path=llm.model_config.model) for n in names])
    renderer = OnlineRenderer(llm.model_config, llm.renderer, request_logger=None, chat_template=None,
                              chat_template_content_format="auto")
    renderer.warmup()
    chat = BrickServingChat(service, engine, models, "assistant", online_renderer=renderer, request_logger=None,
                            chat_template=None, chat_template_content_format="auto")
    completion = BrickServingCompletion(service, engine, models, online_renderer=renderer, request_logger=None)

    @app.exception_handler(VLLMError)
    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    @app.exception_handler(OverflowError)
    async def vllm_error(request: Request, exc: Exception):
        # what vLLM's own server does with what its layer raises (serve/exception_handling)
        err = create_error_response(exc)
        prom.requests.labels(request.url.path, str(err.error.code)).inc()
        return JSONResponse(err.model_dump(), status_code=err.error.code)

    @app.post("/v1/chat/completions")
    @with_cancellation
    async def chat_completions(request: BrickChatRequest, raw_request: Request):
        most = service.manifest.server.max_messages
        if len(request.messages) > most:
            raise InvalidInputError(f"the request has {len(request.messages)} messages; this server takes at "
                                    f"most {most} (server.max_messages)", "send fewer messages")
        texts = [(m.get("role"), content_text(m.get("content"))) for m in request.messages]
        service.check_prompt_chars(sum(len(t) for _, t in texts))
        route_text = next((t for role, t in reversed(texts) if role == "user"), texts[-1][1] if texts else "")
        info, headers = _prepare(service, prom, request, route_text)
        result = await chat.create_chat_completion(request, raw_request)
        return await _respond(service, prom, "chat", request, info, headers, result)

    @app.post("/v1/completions")
    @with_cancellation
    async def completions(request: BrickCompletionRequest, raw_request: Request):
        route_text, chars = _completion_text(service, request.prompt)
        service.check_prompt_chars(chars)
        info, headers = _prepare(service, prom, request, route_text)
        result = await completion.create_completion(request, raw_request)
        return await _respond(service, prom, "completion", request, info, headers, result)
