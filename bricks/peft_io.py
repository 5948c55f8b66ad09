"""PEFT LoRA adapters in and out of brickwork (peft does the reading: config and weights)."""

from __future__ import annotations

from pathlib import Path

from bricks.compose import BrickUse, assemble
from bricks.errors import InvalidInputError
from bricks.format import Brick, BrickMeta, HostRef
from bricks.kinds.lora import LoraModule
from bricks.lora import Adapter, assembly_adapter, down_proj_weights, write_peft

_PREFIX = "base_model.model."


def brick_from_peft(folder: Path, name: str, host: HostRef) -> Brick:
    """A `lora` brick from a PEFT folder; refuses DoRA, biases and modules the host does not have."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    try:
        cfg = LoraConfig.from_pretrained(str(folder))
        weights = load_peft_weights(str(folder), device="cpu")
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{folder} is not a readable PEFT LoRA adapter ({e})",
                                "pass a folder with adapter_config.json and adapter_model.safetensors") from None
    if getattr(cfg, "use_dora", False) or cfg.bias != "none":
        raise InvalidInputError(f"{folder}: DoRA and LoRA biases are not supported", "export a plain LoRA adapter")
    modules: dict[str, LoraModule] = {}
    for key, A in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        mod = key[: -len(".lora_A.weight")].removeprefix(_PREFIX)
        B = weights.get(key.replace("lora_A", "lora_B"))
        if B is None:
            raise InvalidInputError(f"{folder}: {mod} has lora_A but no lora_B", "re-save the adapter")
        r = A.shape[0]
        alpha = (cfg.alpha_pattern or {}).get(mod.rsplit(".", 1)[-1], cfg.lora_alpha)
        if cfg.use_rslora:
            alpha = alpha * r**0.5  # rsLoRA scales by alpha/sqrt(r): keep the product the same
        modules[mod] = LoraModule(A.float(), B.float(), float(alpha))
    if not modules:
        raise InvalidInputError(f"{folder}: no LoRA weights found", "check the adapter folder")
    brick = Brick(BrickMeta(name=name, kind="lora", host=host, method="import-peft",
                            params={"source": str(folder), "r": cfg.r, "lora_alpha": cfg.lora_alpha}), modules)
    brick.validate(host)
    return brick


def export_peft(bricks: list[Brick], host, folder: Path, max_rank: int = 512) -> Adapter:
    """Compile bricks (neuron gains and LoRA; the kinds a PEFT adapter can hold) into one PEFT LoRA folder."""
    for b in bricks:
        if b.spec.peft_export is not None:
            raise InvalidInputError(f"brick {b.name!r}: {b.spec.peft_export}",
                                    "export only neuron and LoRA bricks")
    adapter = assembly_adapter(assemble(host.ref, [BrickUse(b) for b in bricks]), max_rank,
                               w_down=down_proj_weights(host))
    write_peft(adapter, folder)
    return adapter
