"""A test module sets `TORCH_THREADS = n` to run its tests with n torch threads (restored afterwards)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _torch_threads(request):
    want = getattr(request.module, "TORCH_THREADS", None)
    if want is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(want)
    yield
    torch.set_num_threads(n)
