from __future__ import annotations

import os
from pathlib import Path

import pytest

from bricks.errors import BrickError, ConflictError, InvalidInputError, NotFoundError
from bricks.format import Brick
from registry import Registry, VersionInfo, default_registry_path

from .conftest import blob_files, make_lora, make_neurons


def test_first_publish_creates_layout_and_1_0_0(reg: Registry):
    info = reg.publish(make_neurons("lang-fr"))
    assert isinstance(info, VersionInfo)
    assert (info.ref, info.kind, info.meta.name) == ("lang-fr@1.0.0", "neurons", "lang-fr")
    assert info.host_fingerprint == "sha256:" + "ab" * 32
    assert (reg.root / "catalog.sqlite").is_file()
    assert blob_files(reg.root) == [reg.root / "blobs" / "sha256" / info.digest[:2] / info.digest]
    assert info.size_bytes == blob_files(reg.root)[0].stat().st_size


def test_auto_bump_and_explicit_versions(reg: Registry):
    assert reg.publish(make_neurons("b", [1])).version == "1.0.0"
    assert reg.publish(make_neurons("b", [2])).version == "1.1.0"
    assert reg.publish(make_neurons("b", [3]), bump="patch").version == "1.1.1"
    assert reg.publish(make_neurons("b", [4]), bump="major").version == "2.0.0"
    assert reg.publish(make_neurons("b", [5]), version="1.5.0").version == "1.5.0"
    assert reg.publish(make_neurons("b", [6])).version == "2.1.0"  # bumps the highest, not the newest
    assert reg.versions("b") == ["1.0.0", "1.1.0", "1.1.1", "1.5.0", "2.0.0", "2.1.0"]
    with pytest.raises(InvalidInputError):
        reg.publish(make_neurons("b", [7]), bump="huge")
    with pytest.raises(InvalidInputError):
        reg.publish(make_neurons("b", [7]), version="3.0")


def test_versions_are_immutable_but_republish_is_idempotent(reg: Registry):
    brick = make_neurons("b", [1])
    first = reg.publish(brick, version="1.0.0")
    assert reg.publish(brick, version="1.0.0") == first
    with pytest.raises(ConflictError) as e:
        reg.publish(make_neurons("b", [2]), version="1.0.0")
    assert "immutable" in e.value.fix and e.value.status == 409
    assert reg.versions("b") == ["1.0.0"]


def test_identical_content_is_stored_once(reg: Registry):
    brick = make_neurons("b", [1])
    a = reg.publish(brick)
    b = reg.publish(brick)  # same bytes, new version: the blob is shared
    assert (a.version, b.version) == ("1.0.0", "1.1.0")
    assert a.digest == b.digest
    assert len(blob_files(reg.root)) == 1
    # The name is part of the brick's metadata, so other names are other bytes.
    assert reg.publish(make_neurons("c", [1])).digest != a.digest
    assert len(blob_files(reg.root)) == 2


def test_kind_is_fixed_by_first_publish(reg: Registry):
    reg.publish(make_neurons("b"))
    with pytest.raises(ConflictError, match="neurons"):
        reg.publish(make_lora("b"))
    assert reg.publish(make_lora("ad")).kind == "lora"


def test_get_roundtrips_bricks(reg: Registry):
    lora = make_lora("ad", rank=3)
    reg.publish(lora)
    got = reg.get("ad")
    assert isinstance(got, Brick) and got.meta == lora.meta
    mod = got.lora["model.layers.0.mlp.down_proj"]
    assert mod.rank == 3 and mod.alpha == 8.0
    assert (mod.A == lora.lora["model.layers.0.mlp.down_proj"].A).all()
    neurons = make_neurons("n", [5, 9], gain=2.0)
    reg.publish(neurons)
    assert reg.get_bytes("n@1.0.0") == neurons.to_bytes()
    assert reg.get("n").neurons[0].indices.tolist() == [5, 9]


def test_resolve_selectors(reg: Registry):
    for v in ("1.0.0", "1.2.0", "1.2.5", "1.3.1", "2.0.0"):
        reg.publish(make_neurons("b", [int(v[-1]) + 1, int(v[2]) + 20, int(v[0]) + 40]), version=v)
    reg.tag("b@1.2.0", "stable")
    cases = {"b": "2.0.0", "b@latest": "2.0.0", "b@1": "1.3.1", "b@1.2": "1.2.5", "b@^1.0": "1.3.1",
             "b@^1.2.3": "1.3.1", "b@~1.2": "1.2.5", "b@1.2.0": "1.2.0", "b@stable": "1.2.0"}
    for ref, want in cases.items():
        assert reg.resolve(ref).version == want, ref
    assert reg.get("b@stable").meta == reg.resolve("b@1.2.0").meta


def test_not_found_messages(reg: Registry):
    reg.publish(make_neurons("lang-fr"))
    with pytest.raises(NotFoundError) as e:
        reg.resolve("lang-fx")
    assert "lang-fr" in e.value.problem and "brick list" in e.value.fix and e.value.status == 404
    with pytest.raises(NotFoundError) as e:
        reg.resolve("lang-fr@3.0.0")
    assert "1.0.0" in e.value.problem
    with pytest.raises(NotFoundError, match="no version matching 'prod'"):
        reg.get("lang-fr@prod")
    for call in (reg.versions, reg.tags, reg.list):
        with pytest.raises(NotFoundError):
            call("nope")
    with pytest.raises(InvalidInputError):
        reg.resolve("Bad Ref")


def test_listing(reg: Registry):
    assert reg.names() == [] and reg.list() == []
    reg.publish(make_neurons("zeta"))
    reg.publish(make_neurons("alpha", [1]))
    reg.publish(make_neurons("alpha", [2]), bump="major")
    assert reg.names() == ["alpha", "zeta"]
    assert [i.ref for i in reg.list()] == ["alpha@1.0.0", "alpha@2.0.0", "zeta@1.0.0"]
    assert [i.ref for i in reg.list("alpha")] == ["alpha@1.0.0", "alpha@2.0.0"]


def test_tags_and_history(reg: Registry):
    reg.publish(make_neurons("b", [1]), tags=["stable"])
    reg.publish(make_neurons("b", [2]))
    assert reg.tags("b") == {"stable": "1.0.0"}
    reg.tag("b@1.1.0", "stable")
    reg.tag("b@1.1.0", "stable")  # no move, no history
    reg.tag("b", "canary")
    assert reg.tags("b") == {"canary": "1.1.0", "stable": "1.1.0"}
    reg.untag("b", "canary")
    moves = [(e.tag, e.old_version, e.new_version) for e in reg.tag_history("b")]
    assert moves == [("stable", None, "1.0.0"), ("stable", "1.0.0", "1.1.0"), ("canary", None, "1.1.0"),
                     ("canary", "1.1.0", None)]
    assert [e.new_version for e in reg.tag_history("b", "stable")] == ["1.0.0", "1.1.0"]
    for bad in ("latest", "1.0", "v2"):
        with pytest.raises(InvalidInputError):
            reg.tag("b", bad)
    with pytest.raises(InvalidInputError, match="reserved"):
        reg.publish(make_neurons("b", [3]), tags=["latest"])
    with pytest.raises(NotFoundError, match="stable"):
        reg.untag("b", "canary")
    assert reg.versions("b") == ["1.0.0", "1.1.0"]


def test_lineage(reg: Registry):
    reg.publish(make_neurons("fr", [1]))
    reg.publish(make_neurons("de", [2]))
    merged = reg.publish(make_neurons("fr-de", [1, 2]), parents=["fr", "de@^1.0"], operation="merge",
                         op_params={"how": "union"})
    lin = reg.lineage("fr-de")
    assert [p["ref"] for p in lin["parents"]] == ["de@1.0.0", "fr@1.0.0"]
    assert lin["parents"][0]["operation"] == "merge" and lin["parents"][0]["params"] == {"how": "union"}
    assert lin["children"] == []
    assert [c["ref"] for c in reg.lineage("fr@1.0.0")["children"]] == [merged.ref]
    with pytest.raises(NotFoundError):
        reg.publish(make_neurons("x", [3]), parents=["fr@9.0.0"])
    with pytest.raises(NotFoundError):
        reg.publish(make_neurons("x", [3]), parents=["ghost"])
    assert "x" not in reg.names()  # a failed publish leaves nothing in the catalog


def test_rm_refuses_referenced_versions_unless_forced(reg: Registry):
    reg.publish(make_neurons("fr", [1]), tags=["stable"])
    reg.publish(make_neurons("fr", [2]))
    reg.publish(make_neurons("child", [3]), parents=["fr@1.0.0"], operation="update")
    with pytest.raises(InvalidInputError, match="which version"):
        reg.rm("fr")
    with pytest.raises(ConflictError) as e:
        reg.rm("fr@1.0.0")
    assert "child@1.0.0" in e.value.problem and "stable" in e.value.problem and "--force" in e.value.fix
    assert reg.rm("fr@1.1.0").version == "1.1.0"
    reg.rm("fr@1.0.0", force=True)
    assert reg.lineage("child")["parents"] == [] and "fr" not in reg.names()
    assert [e.new_version for e in reg.tag_history("fr", "stable")] == ["1.0.0", None]
    assert len(blob_files(reg.root)) == 3  # rm leaves blobs to gc
    # the freed name can be reused, even with another kind
    assert reg.publish(make_lora("fr")).ref == "fr@1.0.0"


def test_rm_child_drops_its_edges(reg: Registry):
    reg.publish(make_neurons("p", [1]))
    reg.publish(make_neurons("c", [2]), parents=["p"])
    reg.rm("c@1.0.0")
    assert reg.lineage("p")["children"] == []
    reg.rm("p@1.0.0")
    assert reg.names() == []


def test_errors_are_brick_errors(reg: Registry):
    for call in (lambda: reg.resolve("x"), lambda: reg.rm("x@1.0.0"), lambda: reg.tag("x", "t")):
        with pytest.raises(BrickError):
            call()


def test_default_registry_path(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("BRICK_REGISTRY", str(tmp_path / "env"))
    assert default_registry_path(str(tmp_path / "cli")) == tmp_path / "cli"
    assert default_registry_path() == tmp_path / "env"
    monkeypatch.delenv("BRICK_REGISTRY")
    path = default_registry_path()
    assert path.name == "registry" and "brickwork" in str(path)
    assert not path.exists() or os.path.isdir(path)


def test_catalog_settings(reg: Registry):
    import sqlite3

    reg.publish(make_neurons("b"))
    conn = sqlite3.connect(reg.root / "catalog.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    assert Registry(reg.root).resolve("b").version == "1.0.0"  # reopening does not migrate again
