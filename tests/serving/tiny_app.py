"""The HTTP app on the tiny host with the transformers reference engine (no vLLM), for limit, auth and fuzz
tests: one neuron brick `fr` published, explicit routing, small limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import labelled_brick

KEY = "sk-tiny-test-key-0123456789"
KEY_ENV = "BRICK_TINY_TEST_KEY"
MANIFEST = """\
name: tiny
host:
  spec: {host}
bricks:
  - ref: fr@^1
    alias: french
assemblies:
  fr-only: [french]
routing:
  policy: explicit
engine:
  kind: transformers
  max_model_len: 256
server:
  max_tokens: 8
  max_prompt_tokens: 128
  max_body_bytes: 4096
  max_messages: 16
"""


def tiny_service(root: Path, host, extra: str = ""):
    """A started BrickService over a fresh registry in `root` (extra: YAML lines added under server:)."""
    from registry import Registry
    from serving.service import open_service

    reg = Registry(root / "registry")
    if not reg.list():
        reg.publish(labelled_brick(host, gain=0.0, name="fr"))
    path = root / "m.yaml"
    path.write_text(MANIFEST.format(host=host.path) + extra)
    svc = open_service(path, reg, engine_kind="transformers", self_test=False)
    svc.host = host
    asyncio.run(svc.start())
    return svc


def client_for(svc, **kw):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    return TestClient(create_app(svc), raise_server_exceptions=False, **kw)
