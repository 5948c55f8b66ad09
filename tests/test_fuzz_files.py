"""Property-based fuzzing of the files users hand brickwork: manifests, brick files (tensors and metadata),
registry archives, training and facts files. Whatever the bytes, reading them either works or raises the
project's own BrickError (a message naming the problem and the fix), never another exception."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bricks.errors import BrickError

# BRICK_FUZZ_EXAMPLES=2000 for a longer local hunt; CI runs a modest number
EXAMPLES = int(os.environ.get("BRICK_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON-like values, with the awkward ones: huge and negative numbers, empty and odd strings, nesting
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["", "..", "../x", "a/b", "1.0", "v1.2", "~", "null"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                       max_leaves=12)

BASE_MANIFEST = {"name": "m", "host": {"spec": "smollm2-135m-instruct"},
                 "bricks": [{"ref": "fr@^1", "alias": "fr"}], "assemblies": {"only-fr": ["fr"]},
                 "routing": {"policy": "explicit"}, "engine": {"kind": "transformers"}, "server": {}}
MANIFEST_PATHS = [("name",), ("host",), ("host", "spec"), ("host", "growth_slots"), ("bricks",), ("bricks", 0),
                  ("bricks", 0, "ref"), ("bricks", 0, "gain"), ("bricks", 0, "alias"), ("assemblies",),
                  ("assemblies", "only-fr"), ("routing", "policy"), ("routing", "top_k"), ("engine", "max_model_len"),
                  ("engine", "max_lora_rank"), ("server", "max_body_bytes"), ("server", "api_key_env"),
                  ("server", "port"), ("extra",)]


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _only_brick_errors(fn, *args):
    try:
        return fn(*args)
    except BrickError as err:
        assert str(err).strip(), "an error with no message"
        return err


# --- manifests ---------------------------------------------------------------------------------------------
@FUZZ
@given(st.text(max_size=300))
def test_manifest_text(text):
    from serving.manifest import parse_manifest

    _only_brick_errors(parse_manifest, text)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(MANIFEST_PATHS), JSONISH), min_size=1, max_size=4))
def test_manifest_fields(changes):
    from serving.manifest import parse_manifest

    tree = json.loads(json.dumps(BASE_MANIFEST))
    for path, value in changes:
        try:
            _set(tree, path, value)
        except (KeyError, IndexError, TypeError):  # an earlier change replaced the parent
            pass
    text = yaml.safe_dump(tree, allow_unicode=True)
    got = _only_brick_errors(parse_manifest, text)
    if isinstance(got, BrickError):
        assert "<manifest>" in str(got)  # every problem names the file


# --- brick files ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brick_bytes(tiny_host) -> bytes:
    from tests.conftest import labelled_brick

    return labelled_brick(tiny_host, gain=0.5).to_bytes()


@FUZZ
@given(data=st.data())
def test_brick_bytes_cut_or_flipped(brick_bytes, data):
    from bricks.format import brick_from_bytes

    raw = bytearray(brick_bytes)
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=4))
    for at, x in flips:
        raw[at] ^= x
    _only_brick_errors(brick_from_bytes, bytes(raw[:cut] if data.draw(st.booleans()) else raw))


META_FIELDS = ["format", "name", "kind", "host", "method", "params", "metrics", "labels", "routing",
               "description", "profile", "created", "extra"]


@FUZZ
@given(st.dictionaries(st.sampled_from(META_FIELDS + ["host.n_layers", "host.d_ff", "host.fingerprint"]),
                       JSONISH, min_size=1, max_size=3))
def test_brick_metadata(brick_bytes, changes):
    """The metadata JSON in the safetensors header, fields replaced by anything, tensors kept."""
    from safetensors.torch import load, save

    from bricks.format import META_KEY, brick_from_bytes

    header = json.loads(brick_bytes[8:8 + int.from_bytes(brick_bytes[:8], "little")])
    meta = json.loads(header["__metadata__"][META_KEY])
    for key, value in changes.items():
        owner, _, field = key.rpartition(".")
        target = meta.get(owner) if owner else meta
        if isinstance(target, dict):  # an earlier change may have replaced the host
            target[field] = value
    data = save(load(brick_bytes), metadata={META_KEY: json.dumps(meta)})
    _only_brick_errors(brick_from_bytes, data)


# --- archives ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_host) -> bytes:
    from registry import Registry
    from tests.conftest import labelled_brick

    root = tmp_path_factory.mktemp("archive")
    reg = Registry(root / "reg")
    reg.publish(labelled_brick(tiny_host, name="fr"), tags=["stable"])
    return reg.export(None, root / "a.tar").read_bytes()


def _import(tmp_path, data: bytes):
    from registry import Registry

    path = tmp_path / "in.tar"
    path.write_bytes(data)
    reg = Registry(tmp_path / "target")
    got = _only_brick_errors(reg.import_archive, path)
    if isinstance(got, BrickError):
        assert reg.list() == [], "a refused archive left versions behind"
    assert {p.name for p in tmp_path.iterdir()} <= {"in.tar", "target"}, "something was written outside"
    return got


@FUZZ
@given(data=st.data())
def test_archive_bytes_cut_or_flipped(tmp_path_factory, archive, data):
    raw = bytearray(archive)
    for at, x in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=3)):
        raw[at] ^= x
    _import(tmp_path_factory.mktemp("imp"), bytes(raw[:data.draw(st.integers(0, len(raw)))]))


MEMBER_NAMES = st.one_of(st.sampled_from(["index.json", "blobs/x", "../index.json", "/etc/passwd", "blobs/../../x",
                                          "blobs\\..\\x", "C:x", "./index.json", "blobs/" + "a" * 64]),
                         st.text(min_size=1, max_size=30))


@FUZZ
@given(st.lists(st.tuples(MEMBER_NAMES, st.sampled_from(["file", "dir", "symlink"]), JSONISH), min_size=1,
                max_size=4))
def test_archive_members(tmp_path_factory, members):
    """Hand-made tars: odd member names and types, index.json holding anything."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            payload = json.dumps(value).encode()
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.DIRTYPE if kind == "dir" else tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                tar.addfile(info)
    _import(tmp_path_factory.mktemp("imp"), buf.getvalue())


@FUZZ
@given(st.dictionaries(st.sampled_from(["format_version", "versions", "tags", "lineage", "extra"]), JSONISH,
                       min_size=1, max_size=2), st.sampled_from(["versions", "tags"]), JSONISH)
def test_archive_index(tmp_path_factory, archive, changes, inner_key, inner_value):
    """The archive's index.json with fields (or one entry's fields) replaced, blobs kept."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    index = json.loads(members["index.json"])
    if index.get(inner_key) and isinstance(inner_value, dict):
        index[inner_key][0].update(inner_value)
    index.update(changes)
    members["index.json"] = json.dumps(index).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    _import(tmp_path_factory.mktemp("imp"), buf.getvalue())


# --- training and facts files -------------------------------------------------------------------------------
LINES = st.one_of(st.binary(max_size=60), JSONISH.map(lambda v: json.dumps(v).encode()),
                  st.fixed_dictionaries({}, optional={"prompt": JSONISH, "target": JSONISH, "paraphrases": JSONISH,
                                                      "text": JSONISH, "messages": JSONISH}
                                        ).map(lambda v: json.dumps(v).encode()))


@FUZZ
@given(st.lists(LINES, max_size=6), st.sampled_from(["examples", "facts", "chat_prompts"]))
def test_jsonl_files(tmp_path_factory, lines, reader):
    from bricks.ops import data
    from bricks.ops.grow import check_facts

    path = tmp_path_factory.mktemp("jsonl") / "f.jsonl"
    path.write_bytes(b"\n".join(lines))
    got = _only_brick_errors(getattr(data, f"read_{reader}"), path)
    if reader == "facts" and not isinstance(got, BrickError):
        _only_brick_errors(check_facts, got)
