"""Export/import between registries; bad archives change nothing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bricks.errors import ConflictError, InvalidInputError
from registry import Registry

from .conftest import blob_files, make_lora, make_neurons


@pytest.fixture
def src(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "src")
    reg.publish(make_neurons("fr", [1]), tags=["stable"])
    reg.publish(make_neurons("fr", [2]))
    reg.publish(make_lora("ad"))
    reg.publish(make_neurons("fr-ad", [3]), parents=["fr@1.0.0", "ad"], operation="merge", op_params={"w": 0.5})
    return reg


def _snapshot(reg: Registry) -> tuple:
    files = sorted(p.relative_to(reg.root) for p in reg.root.rglob("*") if p.is_file() and "catalog" not in p.name)
    return [i.ref for i in reg.list()], {n: reg.tags(n) for n in reg.names()}, files


def _rewrite(archive: Path, out: Path, edit) -> Path:
    """Copy a tar archive, letting `edit(name, data)` change (or drop, with None) each member."""
    with tarfile.open(archive) as tin, tarfile.open(out, "w") as tout:
        for m in tin:
            data = edit(m.name, tin.extractfile(m).read())
            if data is not None:
                info = tarfile.TarInfo(m.name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_roundtrip_keeps_versions_tags_lineage(src: Registry, tmp_path: Path, suffix: str):
    archive = src.export(None, tmp_path / f"all{suffix}")
    dst = Registry(tmp_path / "dst")
    added = dst.import_archive(archive)
    assert sorted(i.ref for i in added) == sorted(i.ref for i in src.list())
    assert [(i.ref, i.digest, i.created) for i in dst.list()] == [(i.ref, i.digest, i.created) for i in src.list()]
    assert dst.tags("fr") == {"stable": "1.0.0"}
    assert dst.lineage("fr-ad") == src.lineage("fr-ad")
    assert dst.get_bytes("ad") == src.get_bytes("ad")
    assert dst.verify() == []
    assert dst.import_archive(archive) == []  # same versions, same bytes: skipped


def test_export_selected_refs_keeps_edges_between_them(src: Registry, tmp_path: Path):
    archive = src.export(["fr-ad", "fr@stable"], tmp_path / "some.tar")
    dst = Registry(tmp_path / "dst")
    assert sorted(i.ref for i in dst.import_archive(archive)) == ["fr-ad@1.0.0", "fr@1.0.0"]
    assert [p["ref"] for p in dst.lineage("fr-ad")["parents"]] == ["fr@1.0.0"]
    assert dst.tags("fr") == {"stable": "1.0.0"}


def test_import_conflicting_version_changes_nothing(src: Registry, tmp_path: Path):
    archive = src.export(None, tmp_path / "all.tar")
    dst = Registry(tmp_path / "dst")
    dst.publish(make_neurons("zz"))
    dst.publish(make_neurons("fr", [9]), version="1.1.0")
    before = _snapshot(dst)
    with pytest.raises(ConflictError, match=r"fr@1\.1\.0"):
        dst.import_archive(archive)
    assert _snapshot(dst) == before


def test_tampered_blob_rejected_registry_unchanged(src: Registry, tmp_path: Path):
    archive = src.export(None, tmp_path / "all.tar")

    def flip(name: str, data: bytes) -> bytes:
        if name.startswith("blobs/"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        return data

    dst = Registry(tmp_path / "dst")
    dst.publish(make_neurons("zz"))
    before = _snapshot(dst)
    with pytest.raises(InvalidInputError, match="sha256"):
        dst.import_archive(_rewrite(archive, tmp_path / "bad.tar", flip))
    assert _snapshot(dst) == before


def test_tampered_index_rejected(src: Registry, tmp_path: Path):
    archive = src.export(["fr@1.0.0"], tmp_path / "one.tar")

    def rename(name: str, data: bytes) -> bytes:
        if name != "index.json":
            return data
        index = json.loads(data)
        index["versions"][0]["meta_json"] = index["versions"][0]["meta_json"].replace('"method":"manual"',
                                                                                      '"method":"forged"')
        return json.dumps(index).encode()

    dst = Registry(tmp_path / "dst")
    with pytest.raises(InvalidInputError, match="does not describe"):
        dst.import_archive(_rewrite(archive, tmp_path / "bad.tar", rename))
    assert dst.names() == [] and blob_files(dst.root) == []


def test_missing_blob_and_dangling_refs_rejected(src: Registry, tmp_path: Path):
    archive = src.export(None, tmp_path / "all.tar")
    dst = Registry(tmp_path / "dst")
    drop_one = _rewrite(archive, tmp_path / "drop.tar", lambda n, d: None if n.startswith("blobs/") else d)
    with pytest.raises(InvalidInputError, match="missing"):
        dst.import_archive(drop_one)

    def dangling(name: str, data: bytes) -> bytes:
        if name == "index.json":
            index = json.loads(data)
            index["tags"].append({"name": "fr", "tag": "ghost", "version": "7.0.0"})
            data = json.dumps(index).encode()
        return data

    with pytest.raises(InvalidInputError, match="does not hold"):
        dst.import_archive(_rewrite(archive, tmp_path / "dangling.tar", dangling))
    assert dst.names() == []


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_truncated_archive_rejected(src: Registry, tmp_path: Path, suffix: str):
    archive = src.export(None, tmp_path / f"all{suffix}")
    data = archive.read_bytes()
    # A plain tar ends in zero padding that can go without loss; cut inside the last member's data.
    with tarfile.open(archive) as tar:
        end = max(m.offset_data + m.size for m in tar) if suffix == ".tar" else len(data)
    dst = Registry(tmp_path / "dst")
    for cut in (0, 100, end // 3, end // 2, end - 10):
        truncated = tmp_path / f"cut{suffix}"
        truncated.write_bytes(data[:cut])
        with pytest.raises(InvalidInputError):
            dst.import_archive(truncated)
    assert dst.names() == [] and blob_files(dst.root) == []
    with pytest.raises(InvalidInputError, match="does not exist"):
        dst.import_archive(tmp_path / "nope.tar")


@pytest.mark.parametrize("member", ["../evil", "/etc/evil", "blobs/../../evil", "notes.txt", "link"])
def test_unsafe_members_refused(src: Registry, tmp_path: Path, member: str):
    archive = src.export(None, tmp_path / "all.tar")
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as tin, tarfile.open(bad, "w") as tout:
        for m in tin:
            tout.addfile(m, tin.extractfile(m))
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tout.addfile(info)
        else:
            info.size = 1
            tout.addfile(info, io.BytesIO(b"x"))
    dst = Registry(tmp_path / "dst")
    with pytest.raises(InvalidInputError, match="member"):
        dst.import_archive(bad)
    assert dst.names() == []
    assert not (tmp_path / "evil").exists()


def test_export_refuses_corrupt_blobs(src: Registry, tmp_path: Path):
    src.store.path(src.resolve("ad").digest).write_bytes(b"rot")
    from registry import CorruptBlobError

    with pytest.raises(CorruptBlobError):
        src.export(None, tmp_path / "all.tar")
    assert not (tmp_path / "all.tar").exists()


def test_archive_sizes_are_bounded_before_reading(src: Registry, tmp_path: Path, monkeypatch):
    """A member's stated size is checked before it is unpacked (a gzip bomb's would not fit in memory)."""
    import registry.archive as archive_mod

    archive = src.export(None, tmp_path / "all.tar.gz")
    dst = Registry(tmp_path / "dst")
    monkeypatch.setattr(archive_mod, "MAX_TOTAL_BYTES", 2000)
    with pytest.raises(InvalidInputError, match="BRICK_MAX_ARCHIVE_BYTES"):
        dst.import_archive(archive)
    monkeypatch.setattr(archive_mod, "MAX_TOTAL_BYTES", 1 << 30)
    monkeypatch.setattr(archive_mod, "MAX_INDEX_BYTES", 10)
    with pytest.raises(InvalidInputError, match="an index is at most"):
        dst.import_archive(archive)
    monkeypatch.setattr(archive_mod, "MAX_INDEX_BYTES", 1 << 20)
    padded = tmp_path / "padded.tar"
    padded.write_bytes(src.export(None, tmp_path / "plain.tar").read_bytes() + bytes(3 << 20))
    monkeypatch.setattr(archive_mod, "MAX_TRAILER_BYTES", 1 << 20)
    with pytest.raises(InvalidInputError, match="after the end-of-archive"):
        dst.import_archive(padded)
    assert dst.names() == []
