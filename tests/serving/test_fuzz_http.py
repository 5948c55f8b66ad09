"""HTTP fuzzing on the tiny host (transformers engine): schemathesis generates requests from the app's own
OpenAPI schema, and hypothesis sends chat and completion bodies shaped like OpenAI's with odd values in every
field. No request may get a 5xx, and every refusal is the JSON error shape."""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.tiny_app import client_for, tiny_service

EXAMPLES = int(os.environ.get("BRICK_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_host):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("fuzz-http")
    mp.setenv("BRICK_CACHE", str(root / "cache"))
    yield tiny_service(root, tiny_host)
    mp.undo()


@pytest.fixture(scope="module")
def client(svc):
    with client_for(svc) as c:
        yield c


def test_no_5xx_from_the_openapi_schema(client):
    """Every operation in /openapi.json, with requests schemathesis generates (valid and not). Its pytest
    plugin (`schemathesis.pytest.from_fixture`) fails under pytest 9 ('Function' object has no attribute
    '_nodeid'), so the operations' hypothesis strategies are drawn from here."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/bricks"}
    for op in operations:
        _fuzz_operation(op)


def _fuzz_operation(op):
    @settings(max_examples=max(EXAMPLES // 6, 5), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def check(case):
        response = case.call()
        assert response.status_code < 500, (op.path, case.body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]["message"]

    check()


TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", "\ud800", "<|im_start|>", "\x00", "a" * 2000]))
NUMBER = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                   st.sampled_from(["1", True, [], {}]))
BRICK = st.one_of(st.sampled_from(["fr", "french", "fr@1", "fr@stable", "nope", "../fr", "fr@v1"]), TEXT,
                  st.fixed_dictionaries({"ref": st.one_of(TEXT, st.just("fr"), NUMBER)},
                                        optional={"gain": NUMBER, "offset_scale": NUMBER, "other": NUMBER}), NUMBER)
MESSAGE = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "bot"]),
                                           "content": st.one_of(TEXT, NUMBER)},
                                          optional={"name": TEXT, "tool_calls": st.lists(NUMBER, max_size=2)}),
                    NUMBER, TEXT)
COMMON = {"model": st.one_of(TEXT, st.sampled_from(["tiny", "fr-only"]), NUMBER),
          "max_tokens": st.one_of(st.integers(-2, 10), NUMBER), "max_completion_tokens": NUMBER,
          "temperature": st.one_of(st.floats(0, 2), NUMBER), "top_p": st.one_of(st.floats(0, 1), NUMBER),
          "seed": NUMBER, "stream": st.one_of(st.booleans(), NUMBER),
          "stop": st.one_of(TEXT, st.lists(TEXT, max_size=6), NUMBER), "n": NUMBER,
          "bricks": st.one_of(st.lists(BRICK, max_size=4), NUMBER, TEXT), "logprobs": NUMBER}


def _check(response):
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["code"] == response.status_code and error["message"]


@FUZZ
@given(st.fixed_dictionaries({"messages": st.one_of(st.lists(MESSAGE, max_size=4), NUMBER)},
                             optional={**COMMON}))
def test_chat_bodies(client, body):
    _check(client.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(st.fixed_dictionaries({"prompt": st.one_of(TEXT, NUMBER)}, optional={**COMMON}))
def test_completion_bodies(client, body):
    _check(client.post("/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["application/json", "text/plain", "", "application/x-www-form"]))
def test_raw_bytes(client, raw, content_type):
    for path in ("/v1/chat/completions", "/v1/completions"):
        _check(client.post(path, content=raw, headers={"content-type": content_type}))
