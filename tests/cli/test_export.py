"""`brick export-model` through click's runner, on a registry in tmp and the tiny host."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from cli.export import export_model_cmd
from registry import Registry
from tests.bricks.test_export import ATOL, PROMPT, gain_brick, growth_brick, lora_brick, offset_brick


@pytest.fixture
def run(registry_dir):
    runner = CliRunner()

    def invoke(*args, code=0):
        res = runner.invoke(export_model_cmd, list(args))
        assert res.exit_code == code, res.output
        assert "Traceback" not in res.output
        return res.output

    return invoke


@pytest.fixture
def published(registry_dir, tiny_host):
    reg = Registry(registry_dir)
    ref = tiny_host.ref
    return {b.name: reg.publish(b) for b in (gain_brick(ref), offset_brick(ref), lora_brick(ref), growth_brick(ref))}


def _manifest(tmp_path, host_dir, policy="static", assemblies=""):
    path = tmp_path / f"{policy}.yaml"
    path.write_text(
        f"name: tiny\nhost:\n  spec: {host_dir}\n  growth_slots: 3\nbricks:\n"
        "  - ref: gains@^1\n    alias: g\n    gain: 0.5\n"
        "  - ref: steer@^1\n    offset_scale: 2.0\n"
        "  - ref: tuned@^1\n    alias: t\n"
        "  - ref: grown@1.0.0\n"
        f"{assemblies}routing:\n  policy: {policy}\nengine:\n  kind: transformers\n")
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_static_manifest_exports_its_bricks(run, published, registry_dir, tiny_host, tiny_host_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    text = run(str(_manifest(tmp_path, tiny_host_dir)), "-o", str(out))
    assert "gains@1.0.0, steer@1.0.0, tuned@1.0.0, grown@1.0.0" in text and "mlp_bias true" in text
    record = json.loads((out / "brickwork-export.json").read_text())
    assert [(b["ref"], b["digest"], b["gain"], b["offset_scale"]) for b in record["bricks"]] == [
        ("gains@1.0.0", published["gains"].digest, 0.5, 1.0), ("steer@1.0.0", published["steer"].digest, None, 2.0),
        ("tuned@1.0.0", published["tuned"].digest, None, 1.0), ("grown@1.0.0", published["grown"].digest, None, 1.0)]
    assert record["host"]["fingerprint"] == tiny_host.ref.fingerprint and record["about"]["manifest"] == "tiny"

    bricks = {name: Registry(registry_dir).get(v.ref) for name, v in published.items()}
    uses = [BrickUse(bricks["gains"], gain=0.5), BrickUse(bricks["steer"], offset_scale=2.0),
            BrickUse(bricks["tuned"]), BrickUse(bricks["grown"])]
    ids = tiny_host.tokenizer([PROMPT], return_tensors="pt").input_ids
    with assembly_applied(tiny_host.model, tiny_host.adapter, assemble(tiny_host.ref, uses)):
        want = _logits(tiny_host.model, ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), ids)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    assert "--force" in run(str(_manifest(tmp_path, tiny_host_dir)), "-o", str(out), code=1)
    run(str(_manifest(tmp_path, tiny_host_dir)), "-o", str(out), "--force", "--bricks", "t")
    assert [b["ref"] for b in json.loads((out / "brickwork-export.json").read_text())["bricks"]] == ["tuned@1.0.0"]


@pytest.mark.parametrize("policy", ["retrieval", "explicit"])
def test_per_request_routing_needs_a_chosen_set(policy, run, published, tiny_host_dir, tmp_path):
    manifest = str(_manifest(tmp_path, tiny_host_dir, policy, assemblies="assemblies:\n  tiny-fr: [t, g]\n"))
    text = run(manifest, "-o", str(tmp_path / "x"), code=1)
    assert "routes per request" in text and "--assembly" in text and "tiny-fr" in text
    assert not (tmp_path / "x").exists()
    record = json.loads(run(manifest, "-o", str(tmp_path / "a"), "--assembly", "tiny-fr", "--json"))
    assert [b["ref"] for b in record["bricks"]] == ["tuned@1.0.0", "gains@1.0.0"] and not record["mlp_bias"]
    assert record["path"] == str(tmp_path / "a") and record["intermediate_size"] == {"host": 128, "exported": 128}
    record = json.loads(run(manifest, "-o", str(tmp_path / "b"), "--bricks", "grown@1.0.0,g", "--json"))
    assert [b["ref"] for b in record["bricks"]] == ["grown@1.0.0", "gains@1.0.0"]
    assert record["intermediate_size"]["exported"] == 131


def test_user_mistakes_are_one_message(run, published, tiny_host_dir, tmp_path):
    manifest = str(_manifest(tmp_path, tiny_host_dir))
    text = run(manifest, "-o", str(tmp_path / "y"), "--bricks", "nope", code=1)
    assert "'nope' is not a brick of manifest 'tiny'" in text and "g, gains@^1" in text
    assert "more than once" in run(manifest, "-o", str(tmp_path / "y"), "--bricks", "g,g", code=1)
    assert "pass one of them" in run(manifest, "-o", str(tmp_path / "y"), "--bricks", "g", "--assembly", "a", code=1)
    assert "no assembly 'a'" in run(manifest, "-o", str(tmp_path / "y"), "--assembly", "a", code=1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: tiny\nhost:\n  spec: {tiny_host_dir}\nbricks:\n  - ref: missing@^1\n")
    assert "missing" in run(str(bad), "-o", str(tmp_path / "y"), code=1)
    assert not (tmp_path / "y").exists()
