"""The `brick` CLI through click's runner: output, --json, exit codes, no tracebacks for user errors."""

import json

import pytest
import torch
from click.testing import CliRunner

from bricks.format import save_brick
from bricks.kinds.neurons import neuron_brick
from cli.main import cli


@pytest.fixture
def brick_file(tmp_path, tiny_host):
    def make(name="lang-fr", layers=None, gain=0.0):
        b = neuron_brick(name, tiny_host.ref, layers or {0: [1, 2, 3], 2: [5]}, gain=gain, method="emergent",
                         description="French neurons", offset={2: torch.tensor([0.25])})
        return str(save_brick(b, tmp_path / f"{name}-{gain}.safetensors"))

    return make


def test_publish_list_show(run, brick_file):
    run("publish", brick_file(), "--tag", "stable")
    run("publish", brick_file(gain=0.5))
    rows = json.loads(run("list", "--json"))
    assert [r["ref"] for r in rows] == ["lang-fr@1.0.0", "lang-fr@1.1.0"]
    shown = json.loads(run("show", "lang-fr@stable", "--json"))
    assert shown["version"] == "1.0.0" and shown["layers"] == {"0": 3, "2": 1} and shown["tags"] == ["stable"]
    text = run("show", "lang-fr")
    assert "lang-fr@1.1.0" in text and "L0:3" in text and "French neurons" in text
    assert "lang-fr" in run("list")


def test_tag_rm_gc(run, brick_file):
    run("publish", brick_file())
    run("publish", brick_file(gain=2.0))
    assert "-> 1.0.0" in run("tag", "lang-fr@1.0.0", "prod")
    out = run("rm", "lang-fr@1.0.0", code=1)
    assert "prod" in out and "--force" in out
    run("rm", "lang-fr@1.0.0", "--force")
    gc = json.loads(run("gc", "--grace", "0", "--json"))
    assert gc["blobs_removed"] == 1
    assert "ok" in run("verify")


def test_export_import_roundtrip(run, brick_file, tmp_path, monkeypatch):
    run("publish", brick_file())
    archive = tmp_path / "bricks.tar"
    run("export", str(archive))
    other = tmp_path / "other"
    res = CliRunner().invoke(cli, ["--registry", str(other), "import", str(archive)])
    assert res.exit_code == 0 and "lang-fr@1.0.0" in res.output


def test_user_errors_are_one_clean_message(run, tmp_path):
    out = run("show", "nope", code=1)
    assert "nope" in out and "brick list" in out
    assert "malformed" in run("show", "Bad@@1", code=1).lower() or "ref" in run("show", "Bad@@1", code=1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "not a readable safetensors" in run("publish", str(bad), code=1)


def test_host_info(run, tiny_host_dir):
    info = json.loads(run("host", "info", str(tiny_host_dir), "--json"))
    assert info["d_ff"] == 128 and info["fingerprint"].startswith("sha256:")
    assert "neither a built-in" in run("host", "info", "/no/such/host", code=1)


def test_manifest_validate_and_schema(run, tmp_path):
    schema = json.loads(run("manifest", "schema"))
    assert "properties" in schema and "bricks" in schema["properties"]
    assert "ok" in run("manifest", "validate", "manifests/smollm2-plain.yaml")
    bad = tmp_path / "m.yaml"
    bad.write_text("name: x\nhost:\n  spec: smollm2-135m-instruct\nbricks:\n  - ref: lang-fr@^1\n    gian: 2\n")
    out = run("manifest", "validate", str(bad), code=1)
    assert "bricks[0]" in out and "gain" in out and ":6:" in out
    bad.write_text("name: x\nhost:\n  spec: smollm2-135m-instruct\nbricks:\n  - ref: lang-fr@^1\n")
    out = run("manifest", "validate", str(bad), code=1)
    assert ":5:" in out and "lang-fr" in out  # unknown brick in the (empty) registry


def test_export_and_import_peft(run, brick_file, tmp_path, tiny_host_dir):
    run("publish", brick_file(gain=0.5))
    # offsets cannot go into a LoRA adapter: one clear error
    assert "offsets" in run("export-peft", str(tmp_path / "x"), "lang-fr", "--host", str(tiny_host_dir), code=1)
    from bricks.host import host_ref
    from bricks.kinds.neurons import neuron_brick as nb

    save_brick(nb("gains", host_ref(str(tiny_host_dir)), {1: [1, 2]}, gain=0.0), tmp_path / "g.safetensors")
    run("publish", str(tmp_path / "g.safetensors"))
    out = run("export-peft", str(tmp_path / "peft"), "gains", "--host", str(tiny_host_dir))
    assert "rank 2" in out and (tmp_path / "peft" / "adapter_config.json").is_file()
    assert "gains-lora@1.0.0" in run("import-peft", str(tmp_path / "peft"), "--name", "gains-lora",
                                     "--host", str(tiny_host_dir))


def test_generate_and_route_on_the_reference_engine(run, brick_file, tmp_path, tiny_host_dir):
    run("publish", brick_file())
    m = tmp_path / "tiny.yaml"
    m.write_text(f"name: tiny\nhost:\n  spec: {tiny_host_dir}\nbricks:\n  - ref: lang-fr@^1\n    alias: fr\n"
                 "routing:\n  policy: static\nengine:\n  kind: transformers\n  max_model_len: 256\n"
                 "server:\n  max_tokens: 32\n  max_prompt_tokens: 128\n")
    out = json.loads(run("generate", str(m), "The quick brown fox", "--max-tokens", "5", "--json", "--no-chat"))
    assert out["bricks"] == ["lang-fr@1.0.0"] and isinstance(out["text"], str)
    d = json.loads(run("route", str(m), "anything", "--json"))
    assert d["policy"] == "static" and d["bricks"] == ["lang-fr@^1"]
    assert "above the server's limit" in run("generate", str(m), "x", "--max-tokens", "999", code=1)


def test_list_never_cuts_names_or_versions(registry_dir, brick_file, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    name = "emergent-a-rather-long-brick-name-for-a-label"
    runner = CliRunner()
    assert runner.invoke(cli, ["--registry", str(registry_dir), "publish", brick_file(name)]).exit_code == 0
    res = runner.invoke(cli, ["--registry", str(registry_dir), "list"])
    assert res.exit_code == 0, res.output
    assert name in res.stdout and "1.0.0" in res.stdout
    assert all(len(line) <= 80 for line in res.stdout.splitlines())
    monkeypatch.setenv("COLUMNS", "200")  # room for everything: no column is dropped
    wide = runner.invoke(cli, ["--registry", str(registry_dir), "list"]).stdout
    assert all(c in wide for c in ("kind", "method", "created"))
