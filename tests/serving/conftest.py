"""One vLLM engine per test session, on a background event loop (vLLM's async engine is bound to the
loop that created it; the HTTP server and the tests' coroutines run on that same loop)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from bricks.format import Brick, BrickMeta
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick


class BackgroundLoop:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def hand_made_bricks(ref) -> dict[str, Brick]:
    """Bricks on the real host that change its output visibly, one per case the equivalence test needs."""
    g = torch.Generator().manual_seed(7)

    def pick(n):
        return torch.randperm(ref.d_ff, generator=g)[:n]

    out = {
        "abl": neuron_brick("abl", ref, {i: pick(60) for i in range(0, 30, 3)}, gain=0.0),
        "amp": neuron_brick("amp", ref, {i: pick(40) for i in range(1, 30, 4)}, gain=2.5),
        "steer": neuron_brick("steer", ref, {i: pick(30) for i in (8, 12, 16)}, gain=1.0,
                              offset={i: 0.6 * torch.randn(30, generator=g) for i in (8, 12, 16)}),
    }
    staged = pick(40)
    out["staged"] = neuron_brick("staged", ref, {i: staged for i in (6, 14, 22)}, gain=0.0,
                                 offset={i: 0.8 * torch.randn(40, generator=g) for i in (6, 14, 22)})
    for s in out["staged"].neurons.values():  # generated tokens: gain 1 and another offset
        s.generated_gain = torch.ones(40)
        s.generated_offset = 0.8 * torch.randn(40, generator=g)
    out["staged"].meta.params["staged"] = True
    shared = pick(40)
    out["ov1"] = neuron_brick("ov1", ref, {5: shared[:30], 20: shared}, gain=0.3)
    out["ov2"] = neuron_brick("ov2", ref, {5: shared[10:], 20: shared[:20]}, gain=1.8,
                              offset={5: 0.3 * torch.randn(30, generator=g), 20: 0.3 * torch.randn(20, generator=g)})
    lora = {}
    for mod, (d_in, d_out) in {"model.layers.4.mlp.down_proj": (ref.d_ff, ref.d_model),
                               "model.layers.9.mlp.gate_proj": (ref.d_model, ref.d_ff),
                               "model.layers.9.mlp.up_proj": (ref.d_model, ref.d_ff)}.items():
        lora[mod] = LoraModule(torch.randn(4, d_in, generator=g) / d_in**0.5,
                               torch.randn(d_out, 4, generator=g) * 0.5, alpha=8.0)
    out["lora"] = Brick(BrickMeta(name="lora", kind="lora", host=ref), lora)
    out["grow"] = growth_brick(ref, "grow", {3: 4, 18: 4}, g)
    return out


def growth_brick(ref, name: str, sizes: dict[int, int], g: torch.Generator) -> Brick:
    """{layer: k} random grown neurons, large enough to change SmolLM2's greedy output."""
    return Brick(BrickMeta(name=name, kind="growth", host=ref), {
        i: GrowthNeurons(torch.randn(k, ref.d_model, generator=g) * 0.2, torch.randn(k, ref.d_model, generator=g) * 0.2,
                         torch.randn(ref.d_model, k, generator=g) * 0.5) for i, k in sizes.items()})


def late_growth(svc) -> str:
    """Publish `grow-late` (once) into the served registry: not in the manifest, so not resident (LoRA path)."""
    if not any(v.name == "grow-late" for v in svc.registry.list()):
        svc.registry.publish(growth_brick(svc.host.ref, "grow-late", {3: 4, 12: 4, 25: 4},
                                           torch.Generator().manual_seed(9)))
    return "grow-late"


@pytest.fixture(scope="session")
def bg_loop():
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory, real_host, bg_loop):
    """A BrickService on vLLM with LoRA on (3 slots) and 8 growth slots, over a registry of hand-made bricks;
    the growth brick `grow` is resident (growth_path gain_table, 4 of the 8 slots in layers 3 and 18)."""
    from registry import Registry
    from serving.service import open_service

    root = tmp_path_factory.mktemp("served")
    reg = Registry(root / "registry")
    bricks = hand_made_bricks(real_host.ref)
    for b in bricks.values():
        reg.publish(b)
    manifest = root / "m.yaml"
    manifest.write_text(
        "name: equivalence\nhost:\n  spec: smollm2-135m-instruct\n  growth_slots: 8\n"
        "bricks:\n" + "".join(f"  - ref: {n}@^1\n" for n in bricks) +
        "routing:\n  policy: explicit\n"
        "engine:\n  kind: vllm\n  growth_path: gain_table\n  max_loras: 3\n  max_lora_rank: 128\n"
        "  max_model_len: 1024\n"
        "  enforce_eager: true\n  max_assemblies: 32\n"
        "server:\n  max_tokens: 64\n  max_prompt_tokens: 512\n  api_key_env: BRICK_TEST_KEY\n")
    svc = open_service(manifest, reg)
    svc.host = real_host
    bg_loop.run(svc.start())
    yield svc
    bg_loop.run(svc.stop())


KEY = "test-key-123"  # the served manifest's api_key_env (BRICK_TEST_KEY) holds it while `base_url` runs


@pytest.fixture(scope="module")
def base_url(served, bg_loop):
    """The HTTP app over the session engine, on a free loopback port, for one test module."""
    import socket

    import uvicorn

    from serving.app import create_app

    mp = pytest.MonkeyPatch()
    mp.setenv("BRICK_TEST_KEY", KEY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning"))

    async def start():
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        return task

    async def wait(task):
        await task

    task = bg_loop.run(start())
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    bg_loop.run(wait(task))
    mp.undo()
