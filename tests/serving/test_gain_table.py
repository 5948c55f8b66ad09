"""Gain-table bookkeeping without an engine: rows, reference counts, LRU reuse, batch moves."""

import pytest
import torch
from safetensors.torch import save_file
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from serving.vllm_model import _TABLE, BrickRowTracker, GainTable, RowsExhausted
from serving.vllm_plugin import EXTRA_ASSEMBLY, EXTRA_ROW


class _Params:
    def __init__(self, aid=None, path=None):
        self.extra_args = {EXTRA_ASSEMBLY: aid, EXTRA_ROW: path} if aid else None


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
    vm._neuron_affine(h, 0)  # no request rows: every token on row 0
    assert torch.equal(h[:, :6], before[:, :6]) and h[:, 6:].eq(0).all()
    t.gated = None
    vm._neuron_affine(h, 0)
    assert torch.equal(h[:, :6], before[:, :6])  # no gated columns: the identity leaves h alone
