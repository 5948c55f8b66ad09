"""`neurons` bricks: per layer, FFN neuron indices S and the affine map h[S] <- g * h[S] + v applied to them.

Stored per layer: `indices` (sorted, unique int64), `gain` (a scalar gain is stored expanded), an optional
`offset`, and optionally the per-label mean activations of S as evidence (`label_means`).
Bricks compose in assembly order as affine maps: (g1, v1) then (g2, v2) is (g1*g2, g2*v1 + v2), into one
dense gain row G[layer, d_ff] and offset row O[layer, d_ff] — what the vLLM gain table holds.
On the LoRA path a gain is a down_proj delta (A = E_S, B = (g - 1) W_down[:, S]); an offset is a bias,
not a low-rank delta, and is refused there.

Staged bricks (steering that works best, issue 15): a brick may also store `generated_gain` /
`generated_offset`, the map at the tokens a request generates, while `gain` / `offset` act on the prompt
tokens; a use (`BrickUse.phase`) may also restrict any neuron brick to one phase. An assembly whose two
phases differ composes into a `NeuronMap` with a `generated` map: the gain table gives each token the row
of its phase (a prompt token: position < prompt length), the reference hooks apply the prompt map to a
forward that starts a sequence and the generated map to a forward that continues a KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bricks.errors import InvalidInputError
from bricks.kinds.base import BrickUse, LayerKind, LoraContext, LowRank, bad_brick, check_layer
from bricks.kinds.lora import module_name, widen

if TYPE_CHECKING:
    from bricks.format import Brick, BrickMeta, HostRef


@dataclass
class NeuronSet:
    """Neurons of one layer and the affine map applied to them."""

    indices: torch.Tensor  # int64 [r], sorted, unique
    gain: torch.Tensor  # float32 [r] (a scalar gain is stored expanded)
    offset: torch.Tensor | None = None  # float32 [r]
    label_means: torch.Tensor | None = None  # float32 [n_labels, r]
    # Staged bricks: the map at generated tokens (gain and offset above then act on prompt tokens only).
    generated_gain: torch.Tensor | None = None  # float32 [r]
    generated_offset: torch.Tensor | None = None  # float32 [r]

    @property
    def staged(self) -> bool:
        return self.generated_gain is not None

    def map_in(self, phase: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(gain, offset) at tokens of `phase` (prompt or generated)."""
        if phase == "generated" and self.staged:
            return self.generated_gain, self.generated_offset
        return self.gain, self.offset


@dataclass
class NeuronMap:
    """The composed neuron map of an assembly: a dense gain and offset per layer, and where the tokens a
    request generates get another map (staged), that map as `generated` (None: the same map everywhere)."""

    gain: torch.Tensor  # [n_layers, d_ff]
    offset: torch.Tensor  # [n_layers, d_ff]
    generated: NeuronMap | None = None

    @classmethod
    def identity(cls, n_layers: int, d_ff: int) -> NeuronMap:
        return cls(torch.ones(n_layers, d_ff), torch.zeros(n_layers, d_ff))

    @property
    def staged(self) -> bool:
        return self.generated is not None

    def phases(self) -> list[NeuronMap]:
        """The prompt-token map and, when staged, the generated-token map."""
        return [self] if self.generated is None else [self, self.generated]

    def is_identity(self) -> bool:
        return all(bool((m.gain == 1).all() and (m.offset == 0).all()) for m in self.phases())

    def has_offset(self) -> bool:
        return any(bool((m.offset != 0).any()) for m in self.phases())

    def touched_layers(self) -> list[int]:
        """Layers any phase changes."""
        n = self.gain.shape[0]
        return [i for i in range(n) if any((m.gain[i] != 1).any() or (m.offset[i] != 0).any() for m in self.phases())]

    def same_as(self, other: NeuronMap) -> bool:
        return torch.equal(self.gain, other.gain) and torch.equal(self.offset, other.offset)


def compose_neurons(uses: list[BrickUse], n_layers: int, d_ff: int) -> NeuronMap:
    """The assembly's map at prompt tokens and at generated tokens; one map when the two are equal."""
    prompt = _compose_phase(uses, n_layers, d_ff, "prompt")
    if any(_staged_use(u) for u in uses):
        generated = _compose_phase(uses, n_layers, d_ff, "generated")
        if not prompt.same_as(generated):
            prompt.generated = generated
    return prompt


def _staged_use(u: BrickUse) -> bool:
    """Whether this use can act differently on generated tokens than on prompt tokens."""
    staged_brick = any(s.staged for s in u.brick.neurons.values())
    return u.phase != "all" or u.generated_offset_scale is not None or staged_brick


def _compose_phase(uses: list[BrickUse], n_layers: int, d_ff: int, phase: str) -> NeuronMap:
    m = NeuronMap.identity(n_layers, d_ff)
    for u in uses:
        if not u.acts_in(phase):
            continue
        scale = u.scale_in(phase)
        for layer, s in u.brick.neurons.items():
            gain, offset = s.map_in(phase)
            g = gain if u.gain is None else torch.full_like(gain, float(u.gain))
            v = torch.zeros_like(g) if offset is None else offset * scale
            idx = s.indices
            m.offset[layer, idx] = g * m.offset[layer, idx] + v
            m.gain[layer, idx] = m.gain[layer, idx] * g
    return m


def _neuron_hook(gain: torch.Tensor, offset: torch.Tensor | None):
    def hook(module, args):
        h = args[0]
        out = h * gain.to(h.dtype)
        if offset is not None:
            out = out + offset.to(h.dtype)
        return (out, *args[1:])

    return hook


def _staged_hook(phase: dict, maps: list[tuple[torch.Tensor, torch.Tensor]]):
    """down_proj pre-hook applying the map of the current phase: maps[0] while a prompt is read, maps[1] at
    generated tokens; `phase["generated"]` is set by the model-level hook of `neuron_map_hooks`."""
    def hook(module, args):
        h = args[0]
        gain, offset = maps[1] if phase["generated"] else maps[0]
        return (h * gain.to(h.dtype) + offset.to(h.dtype), *args[1:])

    return hook


def _phase_hook(phase: dict):
    """Model forward-pre-hook: a forward that continues a KV cache computes generated tokens; one that
    starts a sequence (no cache, or an empty one) reads a prompt. That is how transformers' `generate`
    and the reference engine call the model; a teacher-forced pass reads everything as prompt."""
    def hook(module, args, kwargs):
        past = kwargs.get("past_key_values")
        length = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        phase["generated"] = int(length) > 0
        return None

    return hook


def neuron_map_hooks(model: torch.nn.Module, adapter: Any, nmap: NeuronMap) -> list:
    """Forward-pre-hooks on down_proj: h <- h * G[layer] + O[layer] (only on layers the map changes);
    a staged map adds one model-level hook that tells the layers which phase a forward is in."""
    handles = []
    if nmap.generated is not None:
        phase = {"generated": False}
        handles.append(model.register_forward_pre_hook(_phase_hook(phase), with_kwargs=True))
        for layer in nmap.touched_layers():
            maps = [(m.gain[layer], m.offset[layer]) for m in nmap.phases()]
            down = adapter.down_proj(model, layer)
            handles.append(down.register_forward_pre_hook(_staged_hook(phase, maps)))
        return handles
    for layer in nmap.touched_layers():
        off = nmap.offset[layer] if (nmap.offset[layer] != 0).any() else None
        handles.append(adapter.down_proj(model, layer).register_forward_pre_hook(_neuron_hook(nmap.gain[layer], off)))
    return handles


@contextmanager
def neuron_map_applied(model: torch.nn.Module, adapter: Any, nmap: NeuronMap) -> Iterator[None]:
    handles = neuron_map_hooks(model, adapter, nmap)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def neuron_map_to_lora(nmap: NeuronMap, w_down: dict[int, torch.Tensor], adapter_name: str = "assembly"
                       ) -> dict[str, LowRank]:
    """down_proj deltas for a composed neuron map (gain part only); `w_down[layer]` is [d_model, d_ff]."""
    if nmap.staged:
        raise InvalidInputError(
            f"{adapter_name}: staged neuron bricks (another map at generated tokens, or a brick used in one phase "
            "only) cannot be expressed as LoRA", "serve them with engine.neuron_path: gain_table")
    if nmap.has_offset():
        raise InvalidInputError(
            f"{adapter_name}: neuron bricks with offsets (steering, mean-ablation) cannot be expressed as LoRA",
            "serve them with engine.neuron_path: gain_table, or drop the offset (offset_scale: 0)")
    out = {}
    for layer in nmap.touched_layers():
        s = torch.nonzero(nmap.gain[layer] != 1).flatten()
        A = torch.zeros(len(s), nmap.gain.shape[1])
        A[torch.arange(len(s)), s] = 1.0
        B = w_down[layer].float()[:, s] * (nmap.gain[layer, s] - 1)
        out[module_name(layer, "down_proj")] = LowRank(A, B)
    return out


class NeuronKind(LayerKind):
    name = "neurons"
    part_type = NeuronSet
    unit = "neurons"

    def part_tensors(self, part: NeuronSet) -> dict[str, torch.Tensor]:
        out = {"indices": part.indices, "gain": part.gain}
        if part.offset is not None:
            out["offset"] = part.offset
        if part.label_means is not None:
            out["label_means"] = part.label_means
        if part.generated_gain is not None:
            out["generated_gain"] = part.generated_gain
        if part.generated_offset is not None:
            out["generated_offset"] = part.generated_offset
        return out

    def part_from_tensors(self, tensors: dict[str, torch.Tensor]) -> NeuronSet:
        return NeuronSet(tensors["indices"], tensors["gain"], tensors.get("offset"), tensors.get("label_means"),
                         tensors.get("generated_gain"), tensors.get("generated_offset"))

    def check_part(self, src: str, layer: int, s: NeuronSet, host: HostRef, brick: Brick) -> None:
        check_layer(src, layer, host)
        idx = s.indices
        if idx.dtype != torch.int64 or idx.dim() != 1 or idx.numel() == 0:
            raise bad_brick(src, f"layer {layer}: indices must be a non-empty 1-D int64 tensor")
        if int(idx.min()) < 0 or int(idx.max()) >= host.d_ff:
            raise bad_brick(src, f"layer {layer}: neuron index out of range [0, {host.d_ff})")
        if idx.unique().numel() != idx.numel():
            raise bad_brick(src, f"layer {layer}: neuron indices repeat")
        r = idx.numel()
        if s.generated_offset is not None and s.generated_gain is None:
            raise bad_brick(src, f"layer {layer}: generated_offset without generated_gain (a staged brick "
                                 "stores both maps' gains)")
        for name, t in (("gain", s.gain), ("offset", s.offset), ("generated_gain", s.generated_gain),
                        ("generated_offset", s.generated_offset)):
            if t is not None and (t.shape != (r,) or not t.is_floating_point()):
                raise bad_brick(src, f"layer {layer}: {name} must be a float tensor of shape [{r}], "
                                     f"got {tuple(t.shape)}")
            if t is not None and not torch.isfinite(t).all():
                raise bad_brick(src, f"layer {layer}: {name} holds NaN or inf")
        n_labels = len(brick.meta.labels)
        if s.label_means is not None and s.label_means.shape != (n_labels, r):
            raise bad_brick(src, f"layer {layer}: label_means must be [{n_labels} labels, {r}], "
                                 f"got {tuple(s.label_means.shape)}")

    def part_size(self, part: NeuronSet) -> int:
        return int(part.indices.numel())

    def has_offsets(self, meta: BrickMeta, load: Callable[[], Brick]) -> bool:
        recorded = meta.params.get("has_offset")
        if recorded is not None:
            return bool(recorded)
        return any(s.offset is not None or s.generated_offset is not None  # older metadata does not say
                   for s in load().parts.values())

    def compose(self, uses: list[BrickUse], host: HostRef) -> NeuronMap:
        return compose_neurons(uses, host.n_layers, host.d_ff)

    def order_matters(self, uses: list[BrickUse]) -> bool:
        """Offsets do not commute: two bricks setting offsets on one neuron compose in the given order."""
        seen: dict[int, set[int]] = {}
        for u in uses:
            for layer, s in u.brick.neurons.items():
                if s.offset is None and s.generated_offset is None:
                    continue
                if u.scale_in("prompt") == 0 and u.scale_in("generated") == 0:
                    continue
                idx = set(s.indices.tolist())
                if seen.get(layer, set()) & idx:
                    return True
                seen.setdefault(layer, set()).update(idx)
        return False

    def is_empty(self, composed: NeuronMap) -> bool:
        return composed.is_identity()

    def hooks(self, model: torch.nn.Module, adapter: Any, composed: NeuronMap) -> list:
        return neuron_map_hooks(model, adapter, composed)

    def to_lora(self, composed: NeuronMap, ctx: LoraContext) -> dict[str, list[LowRank]]:
        if ctx.w_down is None:  # served through the gain table, not the adapter
            return {}
        deltas = neuron_map_to_lora(composed, ctx.w_down)
        return {mod: [widen(lr, mod, ctx.host, ctx.reserved)] for mod, lr in deltas.items()}

    def lora_targets(self, load: Callable[[], Brick], neuron_path: str) -> set[str]:
        return {"down_proj"} if neuron_path == "lora" else set()


KIND = NeuronKind()


def neuron_brick(name: str, host: HostRef, layers: dict[int, Any], gain: float | torch.Tensor = 0.0,
                 offset: dict[int, torch.Tensor] | None = None, **meta: Any) -> Brick:
    """Build a neurons brick from {layer: indices}; a scalar gain is expanded per neuron."""
    from bricks.format import Brick, BrickMeta

    sets = {}
    for layer, idx in layers.items():
        idx, order = torch.sort(torch.as_tensor(idx, dtype=torch.int64).reshape(-1))
        g = torch.as_tensor(gain, dtype=torch.float32)
        g = g.expand(idx.numel()).clone() if g.dim() == 0 else g.float()[order]
        off = None if offset is None or layer not in offset else torch.as_tensor(offset[layer]).float()[order]
        sets[int(layer)] = NeuronSet(idx, g, off)
    brick = Brick(BrickMeta(name=name, kind=KIND.name, host=host, **meta), sets)
    brick.validate()
    return brick
