"""Gain-table bookkeeping without an engine: rows, reference counts, LRU reuse, batch moves."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from serving.vllm_model import _TABLE, BrickRowTracker, GainTable, RowsExhausted
from serving.vllm_plugin import EXTRA_ASSEMBLY, EXTRA_ROW, EXTRA_ROW_GENERATED


class _Params:
    def __init__(self, aid=None, path=None, generated=None):
        self.extra_args = {EXTRA_ASSEMBLY: aid, EXTRA_ROW: path} if aid else None
        if generated:
            self.extra_args[EXTRA_ROW_GENERATED] = generated


@pytest.fixture
def rows(tmp_path):
    paths = {}
    for k in range(4):
        p = tmp_path / f"r{k}.safetensors"
        save_file({"gain": torch.full((2, 6), float(k + 2)), "offset": torch.full((2, 6), float(k))}, p)
        paths[f"a{k}"] = str(p)
    return paths


def test_rows_fill_recycle_and_never_steal_a_running_row(rows):
    t = GainTable(3, 2, 8, "cpu")  # rows 1 and 2 usable; width 8 > row width 6: the rest stays identity
    r0 = t.acquire("a0", rows["a0"])
    r1 = t.acquire("a1", rows["a1"])
    assert {r0, r1} == {1, 2} and t.gain[r0, 0, :6].eq(2).all() and t.gain[r0, 0, 6:].eq(1).all()
    assert t.acquire("a0", rows["a0"]) == r0 and t.loads == 2  # cached: no reload
    with pytest.raises(RowsExhausted):
        t.acquire("a2", rows["a2"])  # both rows are in use
    t.release(r1)
    assert t.acquire("a2", rows["a2"]) == r1 and t.offset[r1, 1, 0] == 2.0  # LRU row with no users reused
    assert t.acquire(None, None) == 0


def test_tracker_follows_adds_removes_and_moves(rows):
    _TABLE["active"] = t = GainTable(8, 2, 6, "cpu")
    try:
        tr = BrickRowTracker(None, "cpu", False)
        tr.update_state(BatchUpdate(3, [], [(0, _Params("a0", rows["a0"]), [], []), (1, _Params(), [], []),
                                            (2, _Params("a1", rows["a1"]), [], [])], []))
        ra, rb = t.request_rows.tolist()[0], t.request_rows.tolist()[2]
        assert t.request_rows.tolist() == [ra, 0, rb] and ra and rb and ra != rb
        tr.update_state(BatchUpdate(3, [], [], [(0, 2, MoveDirectionality.SWAP)]))
        assert t.request_rows.tolist() == [rb, 0, ra]
        tr.update_state(BatchUpdate(2, [1], [], [(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
        assert t.request_rows.tolist() == [rb, ra]
        tr.update_state(BatchUpdate(1, [1], [], []))
        assert t._refs[ra] == 0 and t._refs[rb] == 1
    finally:
        _TABLE.pop("active", None)


def test_extra_args_are_validated():
    class P:
        extra_args = {EXTRA_ASSEMBLY: 5}

    with pytest.raises(ValueError, match="must both be strings"):
        BrickRowTracker.validate_params(P())


def test_gated_columns_default_to_zero_in_every_row(rows, tmp_path):
    """Resident growth slots (columns 6 and 7 here): gain 0 unless a row file sets them."""
    t = GainTable(3, 2, 8, "cpu", gated=(6, 8))
    assert t.gain[:, :, 6:].eq(0).all() and t.gain[:, :, :6].eq(1).all()
    r = t.acquire("a0", rows["a0"])  # a row 6 wide leaves the gated columns at 0
    assert t.gain[r, :, :6].eq(2).all() and t.gain[r, :, 6:].eq(0).all()
    routed = tmp_path / "routed.safetensors"
    save_file({"gain": torch.tensor([[1.0] * 6 + [1.0, 0.0]] * 2), "offset": torch.zeros(2, 8)}, routed)
    t.release(r)
    t.acquire("a9", str(routed))  # the third row is free: no recycling yet
    r2 = t.acquire("a8", str(routed))  # recycles a0's row: its old gains must not survive
    assert t.gain[r2, 0].tolist() == [1.0] * 7 + [0.0]


def test_a_batch_all_on_row_0_still_zeroes_the_gated_columns(monkeypatch):
    import serving.vllm_model as vm

    t = GainTable(3, 2, 8, "cpu", gated=(6, 8))
    monkeypatch.setitem(vm._TABLE, "active", t)
    h = torch.randn(5, 8)
    before = h.clone()
    vm._neuron_affine(h, 0)  # nothing filled: every token on row 0
    assert torch.equal(h[:, :6], before[:, :6]) and h[:, 6:].eq(0).all()
    plain = GainTable(3, 2, 8, "cpu")
    monkeypatch.setitem(vm._TABLE, "active", plain)
    vm._neuron_affine(h, 0)
    assert torch.equal(h[:, :6], before[:, :6])  # no gated columns: row 0 leaves h bit for bit


def test_token_rows_follow_each_step_and_padding_reads_row_0():
    """The persistent buffer, filled in place per step: rows change between steps, tokens past the batch
    (CUDA-graph padding, or a smaller step after a larger one) read row 0, and the tensor is never replaced."""
    t = GainTable(8, 2, 4, "cpu", max_tokens=16)
    buf = t.token_rows
    t.fill_token_rows([3, 0, 5], np.array([0, 4, 5, 9]))  # a prefill step: 4, 1 and 4 tokens
    assert buf.tolist() == [3, 3, 3, 3, 0, 5, 5, 5, 5] + [0] * 7
    t.fill_token_rows([5, 2], [0, 1, 2])  # decode: the batch shrank and its rows changed
    assert buf.tolist() == [5, 2] + [0] * 14
    t.fill_token_rows([7], [0, 1, 2])  # fewer known rows than requests: the rest read row 0
    assert buf.tolist() == [7, 0] + [0] * 14
    t.fill_token_rows(np.array([], dtype=np.int64), [0])  # an empty step clears what the last one wrote
    assert not buf.any() and t.token_rows is buf
    with pytest.raises(ValueError, match="token buffer holds 16"):
        t.fill_token_rows([1], [0, 17])


def test_staged_requests_split_their_tokens_by_position():
    """A staged request's tokens at positions >= its prompt length read its generated row: chunked prefill
    (computed tokens from an earlier chunk or a prefix-cache hit) and decode steps, beside unstaged ones."""
    t = GainTable(8, 2, 4, "cpu", max_tokens=16)
    # request 0 staged (rows 3 / 4, prompt 5): 3 tokens at positions 4..6; request 1 plain (row 2): 2 tokens
    t.fill_token_rows([3, 2], [0, 3, 5], generated_rows=[4, 2], num_computed=[4, 0], prompt_lens=[5, 9])
    assert t.token_rows[:5].tolist() == [3, 4, 4, 2, 2]
    t.fill_token_rows([3, 2], [0, 2, 3], generated_rows=[4, 2], num_computed=[0, 0], prompt_lens=[5, 9])
    assert t.token_rows[:3].tolist() == [3, 3, 2]  # a first chunk: all prompt
    t.fill_token_rows([3], [0, 1], generated_rows=[3], num_computed=[9], prompt_lens=[5])
    assert t.token_rows[:1].tolist() == [3]  # the same row twice: not staged, nothing else read
    with pytest.raises(ValueError, match="computed-token count"):
        t.fill_token_rows([3], [0, 1], generated_rows=[4])


def test_a_staged_request_holds_two_rows(rows):
    t = GainTable(8, 2, 6, "cpu")
    p, g = t.acquire_phases("s", rows["a0"], rows["a1"])
    assert p != g and t.gain[p, 0, 0] == 2 and t.gain[g, 0, 0] == 3
    assert t.acquire_phases("s", rows["a0"], rows["a1"]) == (p, g) and t.loads == 2
    assert t.acquire_phases("plain", rows["a2"], None)[0] == t.acquire_phases("plain", rows["a2"], None)[1]
    t.release_phases((p, g))
    t.release_phases((p, g))
    assert t._refs[p] == 0 and t._refs[g] == 0


def test_the_op_applies_each_tokens_row_and_identity_past_the_batch(monkeypatch):
    import serving.vllm_model as vm

    t = GainTable(4, 2, 3, "cpu")
    t.write_row(1, torch.full((2, 3), 2.0), torch.full((2, 3), 0.5))
    t.write_row(2, torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 3.0]] * 2))
    monkeypatch.setitem(vm._TABLE, "active", t)
    t.fill_token_rows([1, 2], [0, 2, 3])
    h = torch.ones(5, 3)  # 3 real tokens + 2 padded ones
    vm._neuron_affine(h, 1)
    assert h.tolist() == [[2.5] * 3, [2.5] * 3, [1.0, 2.0, 3.0], [1.0] * 3, [1.0] * 3]


@contextmanager
def _active(vm, table):
    saved = vm._TABLE.get("active")
    vm._TABLE["active"] = table
    try:
        yield
    finally:
        if saved is None:
            vm._TABLE.pop("active", None)
        else:
            vm._TABLE["active"] = saved


def test_the_op_body_reads_nothing_on_the_host():
    """Every tensor on the meta device, where any host read of a value (bool(), .item(), .tolist(), .cpu(),
    a data-dependent shape) raises: the op body must still run, as a captured CUDA graph requires."""
    import serving.vllm_model as vm

    with pytest.raises((NotImplementedError, RuntimeError)):
        bool(torch.ones(1, device="meta").any())  # the device really refuses host reads
    t = GainTable(6, 3, 16, "meta", gated=(12, 16), max_tokens=64)
    assert t.gain.is_meta and t.offset.is_meta and t.token_rows.is_meta
    for n in (1, 7, 64):
        h = torch.empty(n, 16, device="meta")
        vm.neuron_affine(t, h, 2)  # the body the op runs
        assert h.shape == (n, 16) and h.is_meta
    h = torch.empty(9, 16, device="meta")
    with _active(vm, t):
        vm._neuron_affine(h, 1)  # the registered op's implementation (calling the op on meta would run its fake)


def test_v1_runner_fills_the_rows_in_model_forward(rows):
    """The V1 hook: the runner's _model_forward fills the buffer from the tracker's slot rows and the runner's
    host query_start_loc, then runs the model (a stand-in runner here: the attributes vLLM 0.32 has)."""
    from types import SimpleNamespace

    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    import serving.vllm_model as vm

    t = GainTable(8, 2, 6, "cpu", max_tokens=32)
    seen = []
    batch = SimpleNamespace(num_reqs=2, num_computed_tokens_cpu=np.zeros(4, dtype=np.int32),
                            num_prompt_tokens=np.full(4, 3, dtype=np.int32))
    runner = SimpleNamespace(input_batch=batch,
                             query_start_loc=SimpleNamespace(np=np.array([0, 3, 4, 4, 4], dtype=np.int32)),
                             model=lambda **kw: seen.append(t.token_rows[:6].tolist()) or "out")
    assert vm.install_v1_fill_hook() and vm.install_v1_fill_hook()  # idempotent
    with _active(vm, t):
        tr = BrickRowTracker(None, "cpu", False)
        tr.update_state(BatchUpdate(2, [], [(0, _Params("a0", rows["a0"]), [], []), (1, _Params(), [], [])], []))
        r = int(t.request_rows[0])
        assert GPUModelRunner._model_forward(runner, input_ids=None, positions=None) == "out"
        tr.update_state(BatchUpdate(2, [], [], [(0, 1, MoveDirectionality.SWAP)]))
        runner.query_start_loc.np[:3] = [0, 1, 2]  # next step: two decode tokens, slots swapped
        batch.num_computed_tokens_cpu[:2] = [1, 3]
        GPUModelRunner._model_forward(runner, input_ids=None, positions=None)
        # a staged request in slot 0: its prompt (3 tokens, then 2 more in a second chunk) on the prompt row,
        # then its generated tokens on the other row
        tr.update_state(BatchUpdate(2, [0], [(0, _Params("s", rows["a2"], rows["a3"]), [], [])], []))
        p, g = int(t.request_rows[0]), int(t.generated_rows[0])
        batch.num_prompt_tokens[0], batch.num_computed_tokens_cpu[:2] = 5, [0, 4]
        runner.query_start_loc.np[:3] = [0, 3, 4]
        GPUModelRunner._model_forward(runner, input_ids=None, positions=None)
        batch.num_computed_tokens_cpu[:2] = [3, 5]
        runner.query_start_loc.np[:3] = [0, 3, 4]  # the rest of the prompt and the first generated token
        GPUModelRunner._model_forward(runner, input_ids=None, positions=None)
    assert seen[:2] == [[r, r, r, 0, 0, 0], [0, r, 0, 0, 0, 0]]
    assert p != g and seen[2:] == [[p, p, p, r, 0, 0], [p, p, g, r, 0, 0]]


def test_v2_model_state_tracks_requests_and_fills_before_each_forward(rows):
    """The V2 hook: add_request reads extra_args, remove_request releases, prepare_inputs fills from the
    batch's req_ids and query_start_loc_np; ids it does not know (dummy batches) read row 0."""
    from types import SimpleNamespace

    import serving.vllm_model as vm

    cls = vm.brick_model_state_cls()
    state = cls.__new__(cls)  # DefaultModelState's own fields, as for a plain text model
    state.rope_state = state.prompt_embeds_state = None
    state.rows, state.prompt_lens = {}, {}
    t = GainTable(8, 2, 6, "cpu", max_tokens=32)

    def new(req_id, aid=None, generated=None, prompt=(1,)):
        return SimpleNamespace(req_id=req_id, sampling_params=_Params(aid, rows.get(aid), generated),
                               prefill_token_ids=list(prompt), prompt_token_ids=list(prompt), mm_features=[])

    def batch(req_ids, qsl, computed=None):
        return SimpleNamespace(req_ids=req_ids, num_reqs=len(req_ids), query_start_loc_np=np.array(qsl + [qsl[-1]]),
                               num_computed_tokens_np=np.array(computed or [0] * len(req_ids)))

    with _active(vm, t):
        state.add_request(0, new("x", "a0"))
        state.add_request(1, new("y"))
        state.add_request(2, new("z", "a1"))
        (rx, _), (rz, _) = state.rows["x"], state.rows["z"]
        assert state.prepare_inputs(batch(["z", "y", "x"], [0, 2, 3, 5]), None) == {}
        assert t.token_rows[:6].tolist() == [rz, rz, 0, rx, rx, 0]
        state.remove_request("z")
        assert t._refs[rz] == 0 and t._refs[rx] == 1
        state.prepare_inputs(batch(["x", "y"], [0, 1, 2]), None)
        assert t.token_rows[:6].tolist() == [rx, 0, 0, 0, 0, 0]
        state.prepare_inputs(batch(["req_0_dummy", "req_1_dummy"], [0, 1, 2]), None)
        assert not t.token_rows.any()
        state.add_request(3, new("s", "a2", rows["a3"], prompt=(1, 2, 3)))
        p, g = state.rows["s"]
        state.prepare_inputs(batch(["s", "x"], [0, 2, 3], computed=[2, 7]), None)  # prompt tail + 1st generated
        assert p != g and t.token_rows[:4].tolist() == [p, g, rx, 0]
        state.remove_request("s")
        assert t._refs[p] == 0 and t._refs[g] == 0


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_shards_apply_the_full_table_slice_by_slice(tmp_path, tp):
    """Rank r's MLP sees neurons [r*w/tp, (r+1)*w/tp): its table holds that slice of every row, from the same
    full-width row files. Rows narrower than the served width (growth slots past d_ff) and gated columns
    that straddle a shard boundary included; the shards' outputs side by side equal the unsharded op."""
    from serving.gain_table import neuron_affine, shard_columns

    width, layers, gen = 16, 2, torch.Generator().manual_seed(0)
    paths = {}
    for k in range(3):
        p = tmp_path / f"tp{k}.safetensors"
        save_file({"gain": torch.rand(layers, 13, generator=gen), "offset": torch.randn(layers, 13, generator=gen)}, p)
        paths[f"a{k}"] = str(p)
    gated = (7, 16)
    full = GainTable(5, layers, width, "cpu", gated=gated, max_tokens=16)
    shards = [GainTable(5, layers, width, "cpu", gated=gated, max_tokens=16, columns=shard_columns(width, r, tp))
              for r in range(tp)]
    assert [s.columns for s in shards] == [(r * width // tp, (r + 1) * width // tp) for r in range(tp)]
    request_rows, qsl = [], [0, 2, 5, 6, 9]
    for t in [full, *shards]:  # the same requests in the same order: the same rows on every rank
        request_rows = [t.acquire(a, paths.get(a)) for a in ("a2", "a0", None, "a1")]
        t.fill_token_rows(request_rows, qsl)
    h = torch.randn(9, width, generator=gen)
    expect = h.clone()
    neuron_affine(full, expect, 1)
    parts = [h[:, slice(*s.columns)].clone() for s in shards]
    for s, part in zip(shards, parts):
        neuron_affine(s, part, 1)
    assert torch.equal(torch.cat(parts, dim=1), expect)
    assert torch.equal(torch.cat([s.gain[:, 0] for s in shards], dim=1), full.gain[:, 0])


def test_shard_columns_refuses_an_uneven_split():
    from serving.gain_table import shard_columns

    assert shard_columns(1536, 1, 2) == (768, 1536)
    with pytest.raises(ValueError, match="does not split evenly over 5"):
        shard_columns(1536, 0, 5)
    with pytest.raises(ValueError, match="not a rank"):
        shard_columns(1536, 2, 2)
    with pytest.raises(ValueError, match="not a slice"):
        GainTable(2, 1, 8, "cpu", columns=(4, 12))
