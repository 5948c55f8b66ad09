"""Random controls: a group statistic means something only next to the same statistic of random groups."""

from __future__ import annotations

import torch


def random_sets(d_ff: int, size: int, n: int, exclude: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """n random same-size neuron sets of a layer of width d_ff, disjoint from `exclude`, each sorted."""
    pool = torch.tensor(sorted(set(range(d_ff)) - set(exclude.tolist())), dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    return [pool[torch.randperm(len(pool), generator=gen)[:size]].sort().values for _ in range(n)]
