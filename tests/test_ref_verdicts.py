"""One ref grammar: the manifest loader, the registry and the HTTP `bricks` field agree on every ref."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from bricks.errors import InvalidInputError, NotFoundError
from bricks.refs import parse_ref
from registry import Registry
from router.policy import Router
from serving.app import CompletionRequest
from serving.manifest import ManifestError, parse_manifest

GOOD = [
    "x", "x@latest", "x@1", "x@1.2", "x@1.2.0", "x@0.0.0", "x@^1", "x@^1.2", "x@^1.2.3", "x@~1.2", "x@~1.2.3",
    "x@stable", "x@v2.x", "x@rc.1", "x@prod-2024", "a.b_c-9@10.20.30", "0name", "a" * 64, "x@" + "t" * 64,
]
BAD = [
    "", "@1", "X", "Lang-fr", "-x", "x y", " x", "x ", "x\n", "x@1\n", "a" * 65, "x/y",
    "x@", "x@~1", "x@v1.2", "x@v1", "x@^", "x@~", "x@^x", "x@>=1.0", "x@1.2.3.4", "x@01.2.3", "x@1.02",
    "x@1.x", "x@Stable", "x@-tag", "x@1.2.3-rc1", "x@@1", "x@1@2", "x@" + "t" * 65,
]


def manifest_accepts(ref: str) -> bool:
    text = f"name: demo\nhost:\n  spec: smollm2-135m-instruct\nbricks:\n  - ref: {json.dumps(ref)}\n"
    try:
        parse_manifest(text)
    except ManifestError as err:
        assert [p.path for p in err.problems] == ["bricks[0].ref"], err
        return False
    return True


def registry_accepts(ref: str, registry: Registry) -> bool:
    """Good syntax reaches the (empty) registry's lookup and is not found; bad syntax never gets there."""
    try:
        parse_ref(ref)
    except InvalidInputError:
        with pytest.raises(InvalidInputError):
            registry.resolve(ref)
        return False
    with pytest.raises(NotFoundError):
        registry.resolve(ref)
    return True


def http_accepts(ref: str, registry: Registry) -> bool:
    """The app's path for a request's `bricks`: the request model, the router, then the registry."""
    try:
        request = CompletionRequest.model_validate({"prompt": "hi", "bricks": [ref]})
    except ValidationError:
        return False
    (choice,) = Router("explicit", []).route("hi", request.bricks).choices
    try:
        registry.resolve(choice.ref)
    except InvalidInputError as err:
        assert err.status == 422
        return False
    except NotFoundError as err:
        assert err.status == 404
    return True


@pytest.mark.parametrize("ref", GOOD + BAD, ids=repr)
def test_every_layer_gives_the_same_verdict(ref, tmp_path):
    registry = Registry(tmp_path / "registry")
    want = ref in GOOD
    assert manifest_accepts(ref) == want
    assert registry_accepts(ref, registry) == want
    assert http_accepts(ref, registry) == want
