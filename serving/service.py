"""BrickService: a manifest made runnable. Host, registry, router, assembly cache and engine together.

Everything the HTTP app and `brick generate` do goes through `plan` (route a request to an
assembly, built or cached) and `engine.stream/generate`.

With engine.growth_path: gain_table, the manifest's growth bricks (the versions their refs resolve to at
start) are resident: written into the served host's reserved slots and gated per request by the gain
table. A growth brick published later is served through LoRA, when the engine has LoRA on.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch

from bricks.compose import BrickUse
from bricks.errors import HostMismatchError, InvalidInputError
from bricks.format import Brick, BrickMeta
from bricks.host import Host, cache_dir, load_host
from bricks.kinds import kind_of
from bricks.kinds.growth import ResidentGrowth, resident_growth
from bricks.kinds.neurons import NeuronSet
from bricks.lora import down_proj_weights
from registry import Registry
from router.assembly import AssemblyCache, BrickChoice, BuiltAssembly
from router.embed import get_embedder
from router.policy import RouteDecision, RouteEntry, Router
from serving.engine import Engine, ReferenceEngine, VllmEngine, VllmSettings, self_test
from serving.manifest import Manifest


class BrickService:
    def __init__(self, manifest: Manifest, registry: Registry, *, engine_kind: str | None = None,
                 host: Host | None = None, self_test: bool = True):
        self.manifest, self.registry = manifest, registry
        self.engine_kind = engine_kind or manifest.engine.kind
        self.host = host
        self.run_self_test = self_test
        self.engine: Engine | None = None
        self.reference: ReferenceEngine | None = None
        self.cache: AssemblyCache | None = None
        self.router: Router | None = None
        self.resident: ResidentGrowth | None = None
        self.self_test_report: dict[str, Any] | None = None

    # --- start-up ------------------------------------------------------------------------------------
    async def start(self) -> None:
        m = self.manifest
        self.host = self.host or load_host(m.host.spec)
        self._check_bricks_host()
        self.reference = ReferenceEngine(self.host)
        w_down = None
        if m.engine.neuron_path == "lora":
            w_down = down_proj_weights(self.host)
        self.resident = self._resident_growth()
        self.cache = AssemblyCache(self.registry, self.host.ref, cache_dir() / "assemblies" / self.host.ref.short(),
                                   max_rank=m.engine.max_lora_rank, max_error=m.engine.max_lora_error,
                                   reserved=m.host.growth_slots, neuron_path=m.engine.neuron_path, w_down=w_down,
                                   resident=self.resident, max_memory=m.engine.max_assemblies)
        self.router = self._make_router()
        if self.engine_kind != "transformers":
            self._check_parallel()
        self.engine = self.reference if self.engine_kind == "transformers" else VllmEngine(self.host, self._settings())
        await self.engine.start()
        if self.engine is not self.reference and self.run_self_test:
            self.self_test_report = await self_test(self.engine, self.reference, self.probe_assemblies())

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()

    def _resident_growth(self) -> ResidentGrowth | None:
        """The manifest's growth bricks laid out in the reserved slots (engine.growth_path: gain_table)."""
        m = self.manifest
        if m.engine.growth_path != "gain_table":
            return None
        growth = [v for v in m.resolved.values() if kind_of(v.kind).adds_neurons]
        if not growth:
            return None
        return resident_growth([(v.digest, self.registry.get(v.ref)) for v in growth], self.host.ref,
                               m.host.growth_slots)

    def _is_resident(self, digest: str) -> bool:
        return self.resident is not None and digest in self.resident.slots

    def _lora_targets(self) -> list[str]:
        """The module suffixes the manifest's trained bricks (LoRA-path neuron and growth bricks) touch."""
        targets: set[str] = set()
        for v in self.manifest.resolved.values():
            if self._is_resident(v.digest):  # served from the host's slots, never through LoRA
                continue
            load = functools.partial(self.registry.get, v.ref)  # only kinds whose targets depend on tensors read it
            targets |= kind_of(v.kind).lora_targets(load, self.manifest.engine.neuron_path)
        return sorted(targets)

    def _settings(self) -> VllmSettings:
        e = self.manifest.engine
        targets = self._lora_targets()
        return VllmSettings(lora_targets=targets, dtype=e.dtype, max_model_len=e.max_model_len,
                            enforce_eager=e.enforce_eager,
                            gpu_memory_utilization=e.gpu_memory_utilization,
                            enable_prefix_caching=e.enable_prefix_caching, max_rows=e.max_assemblies,
                            enable_lora=bool(targets) or e.neuron_path == "lora",
                            max_loras=e.max_loras, max_lora_rank=e.max_lora_rank,
                            reserved=self.manifest.host.growth_slots, resident=self.resident,
                            tensor_parallel_size=e.tensor_parallel_size,
                            pipeline_parallel_size=e.pipeline_parallel_size)

    def _check_parallel(self) -> None:
        """Tensor parallelism splits the FFN neurons (and the attention heads) evenly over the ranks; say so
        before vLLM starts rather than after its workers fail."""
        tp = self.manifest.engine.tensor_parallel_size
        width = self.host.d_ff + self.manifest.host.growth_slots
        if tp > 1 and width % tp:
            raise InvalidInputError(f"engine.tensor_parallel_size {tp} does not divide the served FFN width {width} "
                                    f"(d_ff {self.host.d_ff} + host.growth_slots {self.manifest.host.growth_slots})",
                                    "choose a tensor_parallel_size that divides it, or change host.growth_slots")
        cfg = self.host.model.config
        for field in ("num_attention_heads", "num_key_value_heads"):
            heads = getattr(cfg, field, None)  # vLLM: query heads split evenly; KV heads split or replicate
            if tp > 1 and heads and heads % tp and (field == "num_attention_heads" or tp % heads):
                raise InvalidInputError(f"engine.tensor_parallel_size {tp} does not split {self.host.ref.name}'s "
                                        f"{field} ({heads}) evenly", "choose a tensor_parallel_size that divides it")

    def _check_bricks_host(self) -> None:
        for ref, v in self.manifest.resolved.items():
            if not self.host.ref.runs(v.meta.host, v.kind):  # the same host, or one derived keeping the kind
                raise HostMismatchError(f"manifest brick {ref} was built for host {v.meta.host.name} "
                                        f"({v.meta.host.short()}), not {self.host.ref.name} ({self.host.ref.short()})",
                                        "serve it on its own host, or re-extract it from this one")

    def make_router_only(self) -> Router:
        """The router without starting an engine (for `brick route`); loads the host only for `host` embedding."""
        if self.manifest.routing.embedder == "host" and self.host is None:
            self.host = load_host(self.manifest.host.spec)
        return self._make_router()

    def _make_router(self) -> Router:
        m = self.manifest
        entries = []
        for b in m.bricks:
            v = m.resolved.get(b.ref)
            texts = list(v.meta.routing.texts) if v is not None else []
            choice = BrickChoice(b.ref, b.gain, b.offset_scale, b.phase, b.generated_offset_scale)
            entries.append(RouteEntry(b.alias or b.ref, choice, b.routable, texts))
        embedder = None
        if m.routing.policy == "retrieval":
            model, tok = (self.host.model, self.host.tokenizer) if self.host else (None, None)
            embedder = get_embedder(m.routing.embedder, model, tok)
        return Router(m.routing.policy, entries, top_k=m.routing.top_k, threshold=m.routing.threshold,
                      embedder=embedder, allow_request_bricks=m.routing.allow_request_bricks,
                      assemblies=dict(m.assemblies))

    def probe_assemblies(self) -> list[BuiltAssembly]:
        """Identity, a dense random gain/offset row touching every layer, that row at generated tokens only
        (staged: the per-phase rows) and, when growth bricks are resident, all of them with that row (for the
        self-test)."""
        ref = self.host.ref
        g = torch.Generator().manual_seed(1234)
        probe = Brick(BrickMeta(name="selftest-probe", kind="neurons", host=ref), {
            i: NeuronSet(torch.arange(ref.d_ff), 0.5 + torch.rand(ref.d_ff, generator=g),
                         0.02 * torch.randn(ref.d_ff, generator=g)) for i in range(ref.n_layers)})
        out = [self.cache.build_uses([]), self.cache.build_uses([BrickUse(probe)])]
        if self.manifest.engine.neuron_path == "gain_table":
            out.append(self.cache.build_uses([BrickUse(probe, phase="generated")]))
        if self.resident is not None:
            digests = list(self.resident.bricks)
            uses = [BrickUse(probe)] + [BrickUse(self.resident.bricks[d]) for d in digests]
            probe_digest = "sha256:" + hashlib.sha256(probe.to_bytes()).hexdigest()
            out.append(self.cache.build_uses(uses, [probe_digest, *digests]))
        return out

    # --- requests ------------------------------------------------------------------------------------
    def plan(self, prompt: str, request_bricks: list | None = None, model: str | None = None
             ) -> tuple[RouteDecision, BuiltAssembly]:
        decision = self.router.route(prompt, request_bricks, model)
        return decision, self.cache.get(decision.choices)

    def tokenize_chat(self, messages: list[dict]) -> list[int]:
        self.check_prompt_chars(sum(len(m.get("content") or "") for m in messages))
        tok = self.host.tokenizer
        try:
            return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"])
        except Exception as e:  # a template error is the caller's message shape
            raise InvalidInputError(f"messages cannot be formatted with the host's chat template ({e})",
                                    "send [{'role': 'user', 'content': '...'}, ...]") from None

    def tokenize(self, text: str) -> list[int]:
        self.check_prompt_chars(len(text))
        return list(self.host.tokenizer(text).input_ids)

    @functools.cached_property
    def longest_token(self) -> int:
        """Characters in the host's longest token, special tokens included. Byte-level BPE writes a token with
        one character per byte and SentencePiece with one per character (more for byte fallback), so a text
        of n characters is at least n / longest_token tokens, whatever it holds."""
        tok = self.host.tokenizer
        return max((len(t) for t in tok.convert_ids_to_tokens(list(range(len(tok)))) if t), default=1)

    def check_prompt_chars(self, n_chars: int) -> None:
        """Refuse, before tokenizing, a text too long to fit max_prompt_tokens whatever it holds: tokenizing
        costs CPU in proportion to the text (a 20 MB prompt took ~15 s), and the answer is known up front."""
        limit = self.manifest.server.max_prompt_tokens
        if n_chars > limit * self.longest_token:
            raise InvalidInputError(f"prompt is {n_chars} characters, more than {limit} tokens can hold (no "
                                    f"token of this host is longer than {self.longest_token} characters); "
                                    f"the limit is {limit} tokens", "shorten the prompt")

    def check_limits(self, n_prompt: int, max_tokens: int) -> None:
        s = self.manifest.server
        if n_prompt < 1:
            raise InvalidInputError("the prompt is empty (0 tokens): there is nothing to continue",
                                    "send some text")
        if n_prompt > s.max_prompt_tokens:
            raise InvalidInputError(f"prompt is {n_prompt} tokens, the limit is {s.max_prompt_tokens}",
                                    "shorten the prompt")
        self.check_max_tokens(max_tokens)
        if n_prompt + max_tokens > self.manifest.engine.max_model_len:
            raise InvalidInputError(f"prompt ({n_prompt}) + max_tokens ({max_tokens}) exceed max_model_len "
                                    f"{self.manifest.engine.max_model_len}", "lower max_tokens")

    def check_max_tokens(self, max_tokens: int) -> None:
        s = self.manifest.server
        if max_tokens > s.max_tokens:
            raise InvalidInputError(f"max_tokens {max_tokens} is above the server's limit {s.max_tokens}",
                                    f"ask for at most {s.max_tokens}")


def open_service(manifest_path: str | Path, registry: Registry, engine_kind: str | None = None,
                 self_test: bool = True) -> BrickService:
    """Load a manifest (resolving its bricks against the registry and host) into a service."""
    from bricks.host import host_ref
    from serving.manifest import load_manifest

    spec = load_manifest(manifest_path).host.spec  # schema only: which host to fingerprint
    m = load_manifest(manifest_path, registry=registry, host=host_ref(spec))  # all brick problems at once
    return BrickService(m, registry, engine_kind=engine_kind, self_test=self_test)
