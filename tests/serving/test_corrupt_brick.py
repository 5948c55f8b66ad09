"""A brick whose blob is damaged after the server started: requests that need it get a clear 4xx naming the
brick and version, every other assembly keeps being served, and nothing answers 5xx (reference engine on
the tiny host; no vLLM)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from bricks.kinds.neurons import neuron_brick
from registry import Registry

TORCH_THREADS = 1
CHAT = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture
def served(tmp_path, tiny_host, tiny_host_dir):
    from serving.app import create_app
    from serving.service import open_service

    reg = Registry(tmp_path / "registry")
    reg.publish(neuron_brick("good", tiny_host.ref, {1: [3, 9, 40]}, gain=0.0))
    bad = neuron_brick("bad", tiny_host.ref, {2: [5, 7]}, gain=2.0)
    reg.publish(bad)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"name: corrupt\nhost:\n  spec: {tiny_host_dir}\n"
        "bricks:\n  - ref: good@^1\n    alias: good\n  - ref: bad@^1\n    alias: bad\n"
        "assemblies:\n  with-good: [good]\n  with-bad: [bad]\n  both: [good, bad]\n"
        "routing:\n  policy: explicit\nengine:\n  kind: transformers\n  max_model_len: 256\n"
        "server:\n  max_tokens: 8\n  max_prompt_tokens: 64\n")
    svc = open_service(manifest, reg, engine_kind="transformers", self_test=False)
    svc.host = tiny_host
    asyncio.run(svc.start())
    # raise_server_exceptions=False: an unhandled error shows up as the 500 a real client would get.
    with TestClient(create_app(svc), raise_server_exceptions=False) as client:
        yield client, reg, bad
    asyncio.run(svc.stop())


def _chat(client: TestClient, model: str | None = None, bricks: list[str] | None = None, stream: bool = False):
    body = {"messages": CHAT, "max_tokens": 3, "temperature": 0, "stream": stream}
    body |= {"model": model} if model else {}
    body |= {"bricks": bricks} if bricks else {}
    return client.post("/v1/chat/completions", json=body)


def _flip_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x40
    return bytes(damaged)


@pytest.mark.parametrize("damage", [_flip_byte, lambda data: data[: len(data) // 2], None],
                         ids=["flipped-byte", "truncated", "missing"])
def test_damaged_brick_fails_its_assemblies_only(served, damage):
    client, reg, bad_brick = served
    blob = reg.store.path(reg.resolve("bad").digest)
    if damage is None:
        blob.unlink()
    else:
        blob.write_bytes(damage(blob.read_bytes()))

    for bad in (_chat(client, "with-bad"), _chat(client, "both"), _chat(client, bricks=["bad"]),
                _chat(client, "with-bad", stream=True),
                client.post("/v1/completions", json={"prompt": "fox", "max_tokens": 2, "model": "with-bad"})):
        assert bad.status_code == 410, bad.text
        error = bad.json()["error"]
        assert "bad@1.0.0" in error["message"] and error["type"] == "CorruptBlobError"
        assert ("missing" if damage is None else "corrupt") in error["message"]
    for ok in (_chat(client), _chat(client, "with-good"), _chat(client, bricks=["good"]),
               _chat(client, "with-good", stream=True)):
        assert ok.status_code == 200, ok.text
    assert _chat(client, "with-good").json()["brickwork"]["bricks"] == ["good@1.0.0"]
    for path in ("/health", "/v1/models", "/v1/bricks", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert 'status="410"' in client.get("/metrics").text

    # Re-publishing the same bytes heals the blob; the next request builds the assembly.
    reg.publish(bad_brick, version="1.0.0")
    assert reg.verify() == []
    assert _chat(client, "with-bad").status_code == 200
