"""Manifests: the YAML file that declares what a server runs.

A manifest names a host model, the bricks to serve on it, how requests are routed to bricks, and the
engine and HTTP settings. It is a tree of pydantic models that forbid unknown keys, so a typo such as
``gian:`` is an error rather than a silently ignored setting. Every mistake is collected into one
`ManifestError` that points at the YAML line (bricks/yamlconfig.py does the reading and the wording),
so a user fixes a manifest in one pass:

    manifests/fr.yaml:9: bricks[1].gian: unknown key 'gian'; did you mean 'gain'? ...
    manifests/fr.yaml:14: routing.policy: 'dynamic' is not allowed; use one of: explicit, static, retrieval

`parse_manifest` checks the file on its own; `load_manifest` also resolves every brick ref in the
registry and checks the bricks against the host and the engine, before anything is loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, Field, FiniteFloat, PrivateAttr, model_validator

from bricks.constants import BUILTIN_HOSTS, DEFAULT_HOST, ENGINE_KINDS, LORA_RANKS, PHASES
from bricks.errors import BrickError, InvalidInputError, NotFoundError
from bricks.refs import NAME_RE, REF_FORMS, parse_ref, ref_name
from bricks.yamlconfig import (
    ConfigError,
    ConfigFormat,
    Issue,
    Problem,
    Section,
    did_you_mean,
    located_error,
    none_as,
)

if TYPE_CHECKING:
    from bricks.format import Brick, BrickMeta, HostRef

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- errors ------------------------------------------------------------------------------------------
class ManifestError(ConfigError):
    """Everything wrong with one manifest; `str()` lists one problem per line, in file order."""

    def __init__(self, problems: list[Problem], source: str = "<manifest>"):
        super().__init__(problems, source)


# --- field checks (ValueError: pydantic collects them all) ---------------------------------------------
def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_ref(ref: str) -> str:
    """Check a brick ref's syntax (the registry resolves it later); raise ValueError saying what is wrong."""
    try:
        parse_ref(ref)
    except InvalidInputError as err:
        raise ValueError(_error_text(err)) from None  # the words the registry, CLI and HTTP use
    return ref


def _check_alias(alias: str) -> str:
    if "@" in alias or alias.startswith(("^", "~")):
        raise ValueError(f"alias {alias!r} looks like a brick ref; an alias is a short plain name such as 'fr' "
                         "(the ref goes in `ref:`)")
    return _check_name(alias)


def _check_host_spec(spec: str) -> str:
    if not spec.strip() or spec != spec.strip():
        raise ValueError(f"host spec {spec!r} is empty or has spaces around it")
    if not _is_path(spec) and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", spec):
        raise ValueError(f"{spec!r} is not a built-in host name; write a local model folder as a path ('./{spec}')")
    return spec


def _is_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.startswith((".", "~"))


def _check_env_name(name: str) -> str:
    if not ENV_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not an environment variable name; api_key_env names the variable that "
                         "holds the key (e.g. BRICKWORK_API_KEY), never the key itself")
    return name


ManifestName = Annotated[str, AfterValidator(_check_name)]
BrickRef = Annotated[str, AfterValidator(check_ref)]
Alias = Annotated[str, AfterValidator(_check_alias)]


# --- the schema ----------------------------------------------------------------------------------------
class HostSpec(Section):
    """The host model."""

    spec: Annotated[str, AfterValidator(_check_host_spec)] = Field(
        description=f"built-in host name ({DEFAULT_HOST}) or a path to a local Hugging Face model folder; "
        "a relative path starts at the manifest's folder")
    growth_slots: int = Field(0, ge=0, le=4096, description="zero FFN neurons reserved per layer for growth bricks "
                              "(an exact no-op until a growth brick uses them)")


class BrickEntry(Section):
    """One brick to serve, by registry ref."""

    ref: BrickRef = Field(description=f"registry ref: {REF_FORMS}")
    gain: FiniteFloat | None = Field(None, description="gain on the brick's neurons; default: the brick's own")
    offset_scale: FiniteFloat = Field(1.0, description="k, scales the brick's stored offset (steering strength)")
    phase: Literal[PHASES] = Field(
        "all", description="neuron bricks: act on every token, only on the prompt's tokens, or only on the "
        "tokens the request generates (staged steering)")
    generated_offset_scale: FiniteFloat | None = Field(
        None, description="the offset scale at generated tokens, when it differs from offset_scale (a staged "
        "steering brick's generation strength; offset_scale is then its prompt strength)")
    routable: bool = Field(True, description="true: the retrieval policy may choose it per request; "
                           "false: never chosen by retrieval, always on")
    alias: Alias | None = Field(None, description="short unique name usable in requests and assemblies")


class RoutingConfig(Section):
    """How each request's bricks are chosen."""

    policy: Literal["explicit", "static", "retrieval"] = Field(
        "static", description="explicit: the bricks a request names (or its assembly); static: the manifest's "
        "bricks on every request; retrieval: the top_k routable bricks closest to the request, plus the rest")
    top_k: int = Field(2, ge=1, le=64, description="retrieval: most routable bricks chosen per request")
    threshold: FiniteFloat = Field(0.3, ge=-1, le=1, description="retrieval: least cosine similarity to choose a brick")
    embedder: Literal["minilm", "host", "chars", "minilm+chars"] = Field(
        "minilm", description="retrieval: what embeds requests (router/embed.py; see bench/bench_routing.py)")
    allow_request_bricks: bool = Field(True, description="whether requests may name bricks explicitly")


class EngineConfig(Section):
    """The inference engine and its limits."""

    kind: Literal[ENGINE_KINDS] = Field("vllm", description="vllm, or the transformers reference engine")
    neuron_path: Literal["gain_table", "lora"] = Field(
        "gain_table", description="how neuron bricks are served: the per-token gain table, or compiled to LoRA "
        "(no offsets)")
    growth_path: Literal["gain_table", "lora"] = Field(
        "gain_table", description="how growth bricks are served. gain_table: the manifest's growth bricks are "
        "written into the host's reserved slots side by side (host.growth_slots must hold them all) and gated "
        "per request by the gain table (exactly zero unless routed; no LoRA, torch.compile stays on); a growth "
        "brick published after start goes through LoRA, in the slots left free, if the engine has LoRA on. "
        "lora: every growth brick through the assembly's LoRA adapter")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_assemblies: int = Field(64, ge=2, le=4096, description="gain-table rows, row 0 being the plain host")
    max_loras: int = Field(4, ge=1, le=256, description="LoRA adapters in one batch")
    max_lora_rank: Literal[LORA_RANKS] = Field(16, description="rank of one served adapter; a larger summed rank is "
                                               "SVD-truncated")
    max_lora_error: FiniteFloat = Field(0.05, gt=0, le=1, description="refuse an SVD-truncated adapter whose "
                                        "relative Frobenius error is above this")
    gpu_memory_utilization: FiniteFloat = Field(0.3, gt=0, le=1, description="share of accelerator memory vLLM takes")
    max_model_len: int = Field(2048, ge=16, description="prompt plus generated tokens, per request")
    enforce_eager: bool = Field(False, description="turn off CUDA graphs / torch.compile")
    enable_prefix_caching: bool = Field(True, description="vLLM prefix cache, kept apart per assembly")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="vLLM tensor-parallel ranks; each holds its "
                                      "slice of every gain-table row (d_ff + growth_slots must split evenly)")
    pipeline_parallel_size: int = Field(1, ge=1, le=64, description="vLLM pipeline-parallel stages")


class ServerConfig(Section):
    """The HTTP server."""

    host: str = Field("127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: Annotated[str, AfterValidator(_check_env_name)] | None = Field(
        None, description="name of the environment variable holding the API key; null: no auth")
    max_tokens: int = Field(512, ge=1, description="most tokens generated per request")
    max_prompt_tokens: int = Field(1536, ge=1, description="longest prompt accepted, in tokens")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="largest request body accepted, in "
                                "bytes; a larger one is refused with 413 before it is read in full or parsed")
    max_messages: int = Field(256, ge=1, le=100_000, description="most messages in one chat request")

    def api_key(self) -> str | None:
        """The API key from the environment, or None when the server runs without auth."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise InvalidInputError(f"server.api_key_env names {self.api_key_env}, but that environment variable "
                                    "is not set", f"export {self.api_key_env}=<key>, or set api_key_env: null")
        return key


class Manifest(Section):
    """A model assembly to serve: host model, bricks, routing, engine and server."""

    name: ManifestName = Field(description="served model name; lowercase letters, digits, '.', '_', '-'")
    description: str | None = None
    host: HostSpec = Field(description="the host model the bricks run on: `spec:` (and `growth_slots:`)")
    bricks: Annotated[list[BrickEntry], none_as(list)] = Field(default_factory=list)
    assemblies: Annotated[dict[ManifestName, list[str]], none_as(dict)] = Field(
        default_factory=dict, description="named assemblies, served as extra model names: aliases or refs of bricks")
    routing: Annotated[RoutingConfig, none_as(dict)] = Field(default_factory=RoutingConfig)
    engine: Annotated[EngineConfig, none_as(dict)] = Field(default_factory=EngineConfig)
    server: Annotated[ServerConfig, none_as(dict)] = Field(default_factory=ServerConfig)

    _resolved: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_checks(self) -> Manifest:
        issues = cross_field_issues({name: getattr(self, name) for name in type(self).model_fields})
        if issues:
            # pydantic re-raises a ValidationError raised here with each issue at its own location
            raise located_error(type(self).__name__, issues)
        return self

    @property
    def resolved(self) -> dict[str, Any]:
        """{ref: the registry's resolved version}, filled by `load_manifest(..., registry=...)`."""
        return self._resolved

    def entry_for(self, key: str) -> BrickEntry | None:
        """The brick entry with this alias or ref."""
        return next((b for b in self.bricks if key in (b.alias, b.ref)), None)

    def assembly(self, name: str) -> list[BrickEntry]:
        if name not in self.assemblies:
            raise NotFoundError(f"manifest {self.name!r} has no assembly {name!r}",
                                f"use one of: {', '.join(self.assemblies) or '(none defined)'}")
        return [self.entry_for(key) for key in self.assemblies[name]]


def manifest_json_schema() -> dict[str, Any]:
    """JSON Schema of a manifest (for editors and docs)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Manifest.model_json_schema()}


# --- cross-field checks ------------------------------------------------------------------------------------
# Each takes the manifest's sections ({field: value}, None where the section itself is invalid), so they also
# run beside other errors and a user sees every problem at once.
def cross_field_issues(parts: dict[str, Any]) -> list[Issue]:
    checks = (_duplicate_ref_issues, _alias_issues, _assembly_issues, _routing_issues, _token_budget_issues)
    return [issue for check in checks for issue in check(parts)]


def _duplicate_ref_issues(parts: dict[str, Any]) -> list[Issue]:
    first: dict[str, int] = {}
    issues = []
    for i, entry in enumerate(parts.get("bricks") or []):
        if entry.ref in first:
            issues.append((("bricks", i, "ref"), f"{entry.ref!r} is already listed as bricks[{first[entry.ref]}]; "
                           "list each brick once"))
        first.setdefault(entry.ref, i)
    return issues


def _alias_issues(parts: dict[str, Any]) -> list[Issue]:
    bricks = parts.get("bricks") or []
    first: dict[str, int] = {}
    issues = []
    for i, entry in enumerate(bricks):
        if entry.alias is None:
            continue
        if entry.alias in first:
            issues.append((("bricks", i, "alias"), f"alias {entry.alias!r} is already used by "
                           f"bricks[{first[entry.alias]}]; aliases must be unique"))
        first.setdefault(entry.alias, i)
        other = next((j for j, b in enumerate(bricks) if j != i and ref_name(b.ref) == entry.alias), None)
        if other is not None:
            issues.append((("bricks", i, "alias"), f"alias {entry.alias!r} is also the name of bricks[{other}] "
                           f"({bricks[other].ref!r}), so a request naming it would be ambiguous; choose another"))
    return issues


def _assembly_issues(parts: dict[str, Any]) -> list[Issue]:
    bricks, assemblies = parts.get("bricks"), parts.get("assemblies")
    if bricks is None or assemblies is None:
        return []
    issues = []
    for name, members in assemblies.items():
        if name == parts.get("name"):
            issues.append((("assemblies", name), f"assembly {name!r} has the manifest's own name; both are served "
                           "as model names, so rename the assembly"))
        issues += _member_issues(name, members, bricks)
    return issues


def _member_issues(assembly: str, members: list[str], bricks: list[BrickEntry]) -> list[Issue]:
    keys = list(dict.fromkeys(key for b in bricks for key in (b.alias, b.ref) if key))
    seen: dict[int, str] = {}
    issues = []
    for j, key in enumerate(members):
        index = next((i for i, b in enumerate(bricks) if key in (b.alias, b.ref)), None)
        loc = ("assemblies", assembly, j)
        if index is None:
            known = f"one of: {', '.join(keys)}" if keys else "none: `bricks` is empty"
            issues.append((loc, f"{key!r} is not a brick of this manifest; an assembly lists aliases or refs "
                           f"from `bricks` ({known}){did_you_mean(key, keys)}"))
        elif index in seen:
            issues.append((loc, f"{key!r} is bricks[{index}], already in this assembly as {seen[index]!r}"))
        seen.setdefault(index, key)
    return issues


def _routing_issues(parts: dict[str, Any]) -> list[Issue]:
    routing, bricks = parts.get("routing"), parts.get("bricks")
    if routing is None or bricks is None:
        return []
    if routing.policy == "retrieval" and not any(b.routable for b in bricks):
        return [(("routing", "policy"), "policy 'retrieval' chooses among bricks with routable: true and there "
                 "are none; add bricks (routable is true by default) or use policy: static")]
    if routing.policy == "explicit" and bricks and not routing.allow_request_bricks and parts.get("assemblies") == {}:
        return [(("routing", "allow_request_bricks"), "with policy 'explicit', no assemblies and "
                 "allow_request_bricks: false, no request can ever use a brick; allow request bricks, add "
                 "assemblies, or use policy: static")]
    return []


def _token_budget_issues(parts: dict[str, Any]) -> list[Issue]:
    engine, server = parts.get("engine"), parts.get("server")
    if engine is None or server is None:
        return []
    total = server.max_prompt_tokens + server.max_tokens
    if total <= engine.max_model_len:
        return []
    room = engine.max_model_len - server.max_tokens
    fix = f"lower max_prompt_tokens to {room}" if room >= 1 else "lower max_tokens"
    return [(("server", "max_prompt_tokens"), f"max_prompt_tokens ({server.max_prompt_tokens}) + max_tokens "
             f"({server.max_tokens}) = {total} is more than engine.max_model_len ({engine.max_model_len}), so a "
             f"long prompt could not be answered in full; {fix}, or raise engine.max_model_len to {total}")]


# --- parsing ---------------------------------------------------------------------------------------------------
MANIFEST_FILE = ConfigFormat(Manifest, noun="manifest", error=ManifestError, example="manifests/smollm2-plain.yaml",
                             cross_checks=cross_field_issues)


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    """Validate a manifest's text; every problem (with its line) is raised together in one ManifestError."""
    return MANIFEST_FILE.parse(text, source)[0]


# --- loading with the registry ------------------------------------------------------------------------------
class BrickVersion(Protocol):
    """What `registry.resolve(ref)` returns."""

    name: str
    version: str
    digest: str
    kind: str
    host_fingerprint: str
    meta: BrickMeta


class BrickSource(Protocol):
    """The part of the registry a manifest needs."""

    def resolve(self, ref: str) -> BrickVersion: ...

    def get(self, ref: str) -> Brick: ...


def load_manifest(path: str | os.PathLike, registry: BrickSource | None = None, host: HostRef | None = None,
                  ) -> Manifest:
    """Read and validate a manifest file; with a registry, resolve and check every brick it names.

    A relative host path is made absolute (it starts at the manifest's folder). With `registry`, each
    ref's resolved version lands in `manifest.resolved[ref]`. All problems come in one ManifestError.
    """
    path = Path(path)
    manifest, root = MANIFEST_FILE.load(path)
    issues = _host_path_issues(manifest, path.parent)
    if registry is not None:
        issues += _registry_issues(manifest, registry, host)
    if issues:
        raise MANIFEST_FILE.error_at(issues, root, str(path))
    return manifest


def _host_path_issues(manifest: Manifest, base: Path) -> list[Issue]:
    spec = manifest.host.spec
    if spec in BUILTIN_HOSTS:
        return []
    folder = (base / Path(spec).expanduser()).resolve()
    if (folder / "config.json").is_file():
        manifest.host.spec = str(folder)
        return []
    if folder.is_dir():
        what = f"host folder {folder} has no config.json, so it is not a Hugging Face model folder"
    elif _is_path(spec):
        what = f"host folder {folder} does not exist"
    else:
        what = f"{spec!r} is neither a built-in host ({', '.join(BUILTIN_HOSTS)}) nor a folder next to the manifest"
    return [(("host", "spec"), f"{what}; give a built-in host or a model folder (a relative path starts at the "
             "manifest's folder)")]


def _registry_issues(manifest: Manifest, registry: BrickSource, host: HostRef | None) -> list[Issue]:
    issues: list[Issue] = []
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(manifest.bricks):
        try:
            info = registry.resolve(entry.ref)
            manifest.resolved[entry.ref] = info
            issues += _brick_issues(i, entry, info, manifest, registry, host)
        except BrickError as err:
            issues.append((("bricks", i, "ref"), _error_text(err)))
            continue
        key = (info.name, str(info.version))
        if key in seen:
            issues.append((("bricks", i, "ref"), f"{entry.ref!r} resolves to {info.name} {info.version}, the same "
                           f"version as bricks[{seen[key]}]; list each brick once"))
        seen.setdefault(key, i)
    return issues + _resident_issues(manifest, registry)


def _error_text(err: BrickError) -> str:
    return f"{err.problem}; {err.fix}" if err.fix else err.problem


def _brick_issues(i: int, entry: BrickEntry, info: BrickVersion, manifest: Manifest, registry: BrickSource,
                  host: HostRef | None) -> list[Issue]:
    return _host_issues(i, info, host) + _kind_issues(i, entry, info, manifest, registry)


def _kind_issues(i: int, entry: BrickEntry, info: BrickVersion, manifest: Manifest,
                 registry: BrickSource) -> list[Issue]:
    """What the brick's kind says about this entry: offsets to scale, reserved growth neurons."""
    from bricks.kinds import kind_of  # imports torch: only when resolving against a registry

    kind = kind_of(info.kind)
    issues: list[Issue] = []
    offsets = kind.has_offsets(info.meta, lambda: registry.get(entry.ref))
    if not offsets and entry.offset_scale != 1.0:
        issues.append((("bricks", i, "offset_scale"), f"{info.name} {info.version} ({kind.name} brick) has no offset "
                       "to scale; remove offset_scale (or use a steering brick)"))
    if not offsets and entry.generated_offset_scale is not None:
        issues.append((("bricks", i, "generated_offset_scale"), f"{info.name} {info.version} ({kind.name} brick) "
                       "has no offset to scale; remove generated_offset_scale"))
    staged = entry.phase != "all" or info.meta.params.get("staged", False)
    if entry.phase != "all" and kind.name != "neurons":
        issues.append((("bricks", i, "phase"), f"{info.name} {info.version} is a {kind.name} brick: only neuron "
                       "bricks act in one phase of a request; remove phase"))
    elif staged and manifest.engine.neuron_path == "lora":
        issues.append((("bricks", i, "phase"), f"{info.name} {info.version} is staged (one map while the prompt is "
                       "read, another at generated tokens), which engine.neuron_path: lora cannot serve; use "
                       "neuron_path: gain_table"))
    if offsets and entry.offset_scale != 0.0 and manifest.engine.neuron_path == "lora":
        issues.append((("bricks", i, "ref"), f"{info.name} {info.version} sets offsets, which engine.neuron_path: "
                       "lora cannot serve (an offset is a bias, not a LoRA delta); use neuron_path: gain_table, or "
                       "set offset_scale: 0 to serve its gains only"))
    slots = registry.get(entry.ref).growth_slots() if kind.adds_neurons else 0
    if slots > manifest.host.growth_slots:
        issues.append((("host", "growth_slots"), f"{kind.name} brick {info.name} {info.version} (bricks[{i}]) needs "
                       f"{slots} growth slots per layer but host.growth_slots is {manifest.host.growth_slots}; "
                       f"set host.growth_slots: {slots} or more"))
    return issues


def _resident_issues(manifest: Manifest, registry: BrickSource) -> list[Issue]:
    """engine.growth_path gain_table: the growth bricks sit side by side in the slots, so together they must fit."""
    from bricks.kinds import kind_of
    from bricks.kinds.growth import slot_demand

    if manifest.engine.growth_path != "gain_table":
        return []
    growth = [(i, b.ref) for i, b in enumerate(manifest.bricks)
              if b.ref in manifest.resolved and kind_of(manifest.resolved[b.ref].kind).adds_neurons]
    bricks = [registry.get(ref) for _, ref in growth]
    have = manifest.host.growth_slots
    if len(bricks) < 2 or any(b.growth_slots() > have for b in bricks):  # reported with the brick's own entry
        return []
    layer, most = max(slot_demand(bricks).items(), key=lambda kv: kv[1])
    if most <= have:
        return []
    listed = ", ".join(f"bricks[{i}]" for i, _ in growth)
    return [(("host", "growth_slots"), f"with engine.growth_path: gain_table the growth bricks ({listed}) are "
             f"resident side by side and need {most} growth slots in layer {layer}, but host.growth_slots is {have}; "
             f"set host.growth_slots: {most} or more, or engine.growth_path: lora (slots shared per assembly)")]


def _host_issues(i: int, info: BrickVersion, host: HostRef | None) -> list[Issue]:
    if host is None or host.runs(info.meta.host, info.kind):
        return []
    built = info.meta.host
    return [(("bricks", i, "ref"), f"{info.name} {info.version} was built for host {built.name or built.arch} "
             f"({built.short()}), but this manifest serves {host.name or host.arch} ({host.short()}); use a brick "
             "extracted from this host, or serve the host the brick was built for")]
