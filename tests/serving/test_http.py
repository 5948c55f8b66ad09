"""The HTTP server on loopback, driven by the official openai client and raw httpx, on the session engine."""

import httpx
import pytest
import torch

from bricks.format import HostRef
from bricks.kinds.neurons import neuron_brick
from tests.serving.conftest import KEY

pytestmark = [pytest.mark.real, pytest.mark.vllm]


@pytest.fixture
def client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=KEY)


def test_chat_with_and_without_bricks(client):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.with_raw_response.create(model="equivalence", messages=msgs, max_tokens=10,
                                                             temperature=0)
    assert plain.headers["x-brick-assembly"] == "none"
    body = plain.parse()
    assert "Paris" in body.choices[0].message.content and body.usage.completion_tokens <= 10
    raw = client.chat.completions.with_raw_response.create(model="equivalence", messages=msgs, max_tokens=10,
                                                           temperature=0, extra_body={"bricks": ["abl@1", "amp"]})
    got = raw.parse()
    assert raw.headers["x-brick-assembly"] != "none"
    assert {r.split("@")[0] for r in got.model_extra["brickwork"]["bricks"]} == {"abl", "amp"}
    assert got.choices[0].message.content != body.choices[0].message.content


def test_completions_and_streaming(client):
    c = client.completions.create(model="equivalence", prompt="The capital of France is", max_tokens=6,
                                  temperature=0)
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model="equivalence", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True))
    assert streamed == c.choices[0].text and c.choices[0].text
    chat = client.chat.completions.create(model="equivalence", messages=[{"role": "user", "content": "Hi!"}],
                                          max_tokens=8, temperature=0, stream=True,
                                          extra_body={"bricks": [{"ref": "steer", "offset_scale": 2.0}]})
    chunks = list(chat)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert chunks[0].model_extra["brickwork"]["bricks"][0].startswith("steer@")


def test_models_bricks_health_metrics(base_url):
    h = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{base_url}/health").json()["status"] == "ok"
    assert httpx.get(f"{base_url}/v1/models", headers=h).json()["data"][0]["id"] == "equivalence"
    listed = httpx.get(f"{base_url}/v1/bricks", headers=h).json()["data"]
    kinds = {b["resolved"].split("@")[0]: b["kind"] for b in listed}
    assert kinds["lora"] == "lora" and kinds["grow"] == "growth"
    assert httpx.get(f"{base_url}/metrics").status_code == 401  # with a key configured, metrics need it
    text = httpx.get(f"{base_url}/metrics", headers=h).text
    assert "brick_assembly_cache_total" in text and "brick_requests_total" in text


@pytest.mark.parametrize("body,status,word", [
    ({"prompt": "x", "bricks": ["no-such-brick"]}, 404, "no-such-brick"),
    ({"prompt": "x", "bricks": ["other-host"]}, 409, "built for host"),
    ({"prompt": 5}, 422, "prompt"),
    ({"prompt": "x", "max_tokens": 10_000}, 422, "max_tokens"),
    ({"prompt": "x", "bricks": [{"ref": "abl", "gian": 2}]}, 422, "gian"),
    ({"prompt": "x", "temperature": -1}, 422, "temperature"),
])
def test_errors_are_json_with_the_right_status(base_url, served, body, status, word):
    if not any(v.name == "other-host" for v in served.registry.list()):
        other = HostRef(**{**served.host.ref.model_dump(), "fingerprint": "sha256:" + "0" * 64, "name": "other"})
        served.registry.publish(neuron_brick("other-host", other, {0: [1]}, gain=0.0))
    r = httpx.post(f"{base_url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    assert word in r.json()["error"]["message"]


def test_api_key_is_required(base_url):
    r = httpx.post(f"{base_url}/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    r = httpx.post(f"{base_url}/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_brick_published_while_running_is_used(client, served):
    ref = served.host.ref
    served.registry.publish(neuron_brick("hot", ref, {i: torch.arange(0, 1536, 7) for i in range(0, 30, 2)},
                                         gain=0.0))
    r = client.completions.with_raw_response.create(model="equivalence", prompt="The capital of France is",
                                                    max_tokens=5, temperature=0, extra_body={"bricks": ["hot"]})
    assert r.parse().model_extra["brickwork"]["bricks"] == ["hot@1.0.0"]
