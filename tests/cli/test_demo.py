"""`brick demo`'s publishing step on the tiny host: afterwards every example manifest resolves and serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cli.demo import DEMO_NAMES, DEMO_TAG, STEER_NAME, publish_demo_bricks
from tests.conftest import tiny_corpus

MANIFESTS = sorted((Path(__file__).resolve().parents[2] / "manifests").glob("*.yaml"))


@pytest.fixture(scope="module")
def demo_registry(tiny_host, tmp_path_factory):
    """A fresh registry after the demo's publishing step (force: the random tiny host's bricks are not
    selective, and this test is about names, versions, tags and kinds, not about selectivity)."""
    from registry.registry import Registry

    reg = Registry(tmp_path_factory.mktemp("demo-registry"))
    published = publish_demo_bricks(reg, tiny_host, tiny_corpus(), top_pct=2.0, force=True, progress=False)
    return reg, published


def test_publishes_the_demo_names_tagged(demo_registry):
    reg, published = demo_registry
    assert sorted(v.name for v in published) == sorted([*DEMO_NAMES.values(), STEER_NAME])
    assert all(v.version == "1.0.0" and reg.tags(v.name) == {DEMO_TAG: "1.0.0"} for v in published)
    steer = reg.get(STEER_NAME)
    assert steer.meta.params["steering"]["target"] == "fr" and "held_out" not in steer.meta.metrics
    assert steer.meta.params["staged"] and steer.meta.params["steering"]["prompt"] == {"form": "mean", "k": 2.0}
    assert all(bool((s.gain == 0).all()) and bool((s.generated_gain == 1).all()) and s.generated_offset is not None
               for s in steer.neurons.values())
    assert [p["name"] for p in reg.lineage(STEER_NAME)["parents"]] == ["lang-fr"]


def test_a_second_demo_run_publishes_nothing(demo_registry, tiny_host, monkeypatch):
    import cli.demo

    reg, _ = demo_registry
    monkeypatch.setattr(cli.demo, "publish_demo_bricks", lambda *a, **k: pytest.fail("published again"))
    assert cli.demo._ensure_bricks(reg, tiny_host) == list(DEMO_NAMES.values())
    assert all(reg.versions(name) == ["1.0.0"] for name in [*DEMO_NAMES.values(), STEER_NAME])


def test_there_are_manifests():
    assert len(MANIFESTS) >= 3


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_example_manifest_validates_and_serves(demo_registry, tiny_host, path, tmp_path, monkeypatch):
    """Every ref resolves on the demo's registry (checked against the host they were published for), and
    the service builds the assembly each prompt routes to on the reference engine (no vLLM here)."""
    from serving.manifest import load_manifest
    from serving.service import BrickService

    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    reg, _ = demo_registry
    manifest = load_manifest(path, registry=reg, host=tiny_host.ref)
    assert set(manifest.resolved) == {b.ref for b in manifest.bricks}
    svc = BrickService(manifest, reg, engine_kind="transformers", host=tiny_host, self_test=False)
    served = {v.ref for v in manifest.resolved.values()}  # exact name@version
    assert asyncio.run(_serve_prompts(svc, manifest, served)) == len(manifest.assemblies) + 2


async def _serve_prompts(svc, manifest, served: set[str]) -> int:
    """Route and answer two prompts and one per named assembly; the number of answers."""
    from serving.engine import GenRequest

    await svc.start()
    try:
        plans = [svc.plan(prompt)[1] for prompt in ("Le renard brun rapide", "def add(a, b):")]
        plans += [svc.plan("hello", model=model)[1] for model in manifest.assemblies]
        assert all(set(built.refs) <= served for built in plans)
        assert all(built.refs for built in plans[2:])
        ids = svc.tokenize_chat([{"role": "user", "content": "hello"}])
        outs = [await svc.engine.generate(GenRequest(ids, 2, ignore_eos=True), built) for built in plans]
        return sum(1 for out in outs if out.token_ids)
    finally:
        await svc.stop()


def test_publishes_a_trained_skill_and_grown_facts_once(demo_registry, tiny_host, monkeypatch):
    """The demo's customized bricks, as `brick train` and `brick grow` publish them; a second run makes none."""
    import cli.demo
    from cli.demo import FACT_NAME, SKILL_NAME, publish_made_bricks

    reg, _ = demo_registry
    made = publish_made_bricks(reg, tiny_host, train={"steps": 2, "batch_size": 4},
                               grow={"steps": 2, "memory_docs": 1, "memory_tokens": 64, "eval_docs": 1},
                               n_facts=2, progress=False)
    assert [(v.name, v.version) for v in made] == [(SKILL_NAME, "1.0.0"), (FACT_NAME, "1.0.0")]
    skill, fact = reg.get(SKILL_NAME), reg.get(FACT_NAME)
    assert skill.kind == "lora" and skill.meta.routing.texts and "heldout_loss_after" in skill.meta.metrics
    assert fact.kind == "growth" and fact.meta.metrics["n_facts"] == 2 and "generality_heldout" in fact.meta.metrics
    assert skill.meta.method == "train-lora" and fact.meta.method == "grow-tpatcher"
    assert reg.tags(SKILL_NAME) == {DEMO_TAG: "1.0.0"} == reg.tags(FACT_NAME)
    monkeypatch.setattr(cli.demo, "publish_made_bricks", lambda *a, **k: pytest.fail("made again"))
    assert cli.demo._ensure_made(reg, tiny_host) == [SKILL_NAME, FACT_NAME]
