"""What every brick kind provides, so the rest of brickwork asks the kind instead of switching on it.

A kind owns, for its bricks:
- tensors: the in-memory part per owner (a layer, or a LoRA target module) and its safetensors keys;
- validation of each part against the host the brick was built for;
- size (what `size()` counts, in `unit`) and the layers a brick touches;
- composition: how the parts of every brick of an assembly combine into one composed value;
- the reference application (transformers hooks) of that composed value;
- compilation to LoRA (the served adapter), and what the served engine needs (LoRA target modules,
  reserved growth neurons, whether offsets exist).
A new kind is one module holding a `Kind` subclass, listed in `bricks/kinds/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from bricks.errors import InvalidInputError

if TYPE_CHECKING:
    from bricks.format import Brick, BrickMeta, HostRef


@dataclass(frozen=True)
class BrickUse:
    """A brick as an assembly uses it: an optional gain override, a scale on its stored offset, and the
    phase of the request it acts in (neuron bricks only; bricks.constants.PHASES): `all` tokens, only the
    `prompt` tokens (read before generation) or only the `generated` ones. `generated_offset_scale` is the
    scale at generated tokens when it differs from `offset_scale` (a staged steering brick's two strengths)."""

    brick: Brick
    gain: float | None = None
    offset_scale: float = 1.0
    phase: str = "all"
    generated_offset_scale: float | None = None

    def scale_in(self, phase: str) -> float:
        """The offset scale at tokens of `phase` (prompt or generated)."""
        if phase == "generated" and self.generated_offset_scale is not None:
            return float(self.generated_offset_scale)
        return float(self.offset_scale)

    def acts_in(self, phase: str) -> bool:
        return self.phase in ("all", phase)



@dataclass
class LowRank:
    """One low-rank delta B A of a LoRA target module, its scaling folded into B."""

    A: torch.Tensor  # [r, d_in]
    B: torch.Tensor  # [d_out, r]

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass(frozen=True)
class LoraContext:
    """What compiling to the served adapter may need: reserved growth neurons (the first `growth_start` of
    them hold resident growth bricks) and (to compile neuron gains) the host's down_proj weights per layer."""

    host: HostRef
    reserved: int = 0
    w_down: dict[int, torch.Tensor] | None = None
    growth_start: int = 0


def bad_brick(source: str, problem: str, fix: str = "re-create the brick or re-export it") -> InvalidInputError:
    return InvalidInputError(f"{source}: {problem}", fix)


def check_layer(src: str, layer: int, host: HostRef) -> None:
    if not 0 <= layer < host.n_layers:
        raise bad_brick(src, f"layer {layer} does not exist (host has {host.n_layers} layers)")


class Kind(ABC):
    name: ClassVar[str]  # the `kind` in brick metadata, and the prefix of its tensor keys
    unit: ClassVar[str]  # what size() counts
    part_type: ClassVar[type]  # the in-memory part of one owner
    peft_export: ClassVar[str | None] = None  # why a PEFT adapter cannot hold this kind (None: it can)
    adds_neurons: ClassVar[bool] = False  # whether its bricks need reserved FFN neurons (growth_slots)

    # --- tensors -----------------------------------------------------------------------------------
    @abstractmethod
    def owner_key(self, owner: Any) -> str:
        """The owner (layer or module) as written in tensor keys."""

    @abstractmethod
    def parse_owner(self, key: str) -> Any:
        """Inverse of owner_key; raises ValueError for a key that is not an owner of this kind."""

    @abstractmethod
    def part_tensors(self, part: Any) -> dict[str, torch.Tensor]:
        """{tensor name: tensor} of one part."""

    @abstractmethod
    def part_from_tensors(self, tensors: dict[str, torch.Tensor]) -> Any:
        """Rebuild one part; raises KeyError for a missing tensor."""

    # --- validation and size -----------------------------------------------------------------------
    @abstractmethod
    def check_part(self, src: str, owner: Any, part: Any, host: HostRef, brick: Brick) -> None:
        """Raise InvalidInputError if the part does not fit the host (shapes, ranges, finite values)."""

    @abstractmethod
    def layer_of(self, owner: Any) -> int: ...

    @abstractmethod
    def part_size(self, part: Any) -> int: ...

    def growth_slots(self, parts: dict) -> int:
        """Reserved FFN neurons per layer the served host needs for this brick."""
        return 0

    def has_offsets(self, meta: BrickMeta, load: Callable[[], Brick]) -> bool:
        """Whether the brick adds offsets (only then does offset_scale mean something); `load` reads the
        whole brick where the metadata does not tell."""
        return False

    # --- composition and application -----------------------------------------------------------------
    @abstractmethod
    def compose(self, uses: list[BrickUse], host: HostRef) -> Any:
        """The composed value of this kind's bricks in `uses` (in assembly order)."""

    def order_matters(self, uses: list[BrickUse]) -> bool:
        """Whether composing these uses in another order would give another result."""
        return False

    def is_empty(self, composed: Any) -> bool:
        return not composed

    @abstractmethod
    def hooks(self, model: torch.nn.Module, adapter: Any, composed: Any) -> list:
        """Register the reference (transformers) hooks applying `composed`; return their handles."""

    # --- serving -------------------------------------------------------------------------------------------
    @abstractmethod
    def to_lora(self, composed: Any, ctx: LoraContext) -> dict[str, list[LowRank]]:
        """The composed value as low-rank deltas per target module ({} when it has no LoRA part)."""

    @abstractmethod
    def lora_targets(self, load: Callable[[], Brick], neuron_path: str) -> set[str]:
        """Module suffixes (q_proj, down_proj, ...) the served adapter touches for this brick; `load` reads
        the brick for a kind whose targets depend on its tensors."""


class LayerKind(Kind):
    """A kind whose parts are owned by a layer (neurons, growth): the owner key is the layer number."""

    def owner_key(self, owner: int) -> str:
        return str(owner)

    def parse_owner(self, key: str) -> int:
        return int(key)

    def layer_of(self, owner: int) -> int:
        return owner
