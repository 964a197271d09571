"""How the samples of a batch are split over the ranks: ``local_slice`` is the one
rule.

Which samples form each global batch is left to the single-process ``Trainer``
(``cnnfast.nn.training``): its seeded permutation, kept in its training state, is
the same on every rank, so every rank builds the same global batch.
``DistributedTrainer.train_step`` then gives rank ``r`` the contiguous part
``local_slice(len(batch), r, size)`` of it, and ``distributed_evaluate`` splits the
evaluation set the same way. With one rank the slice is the whole batch: the same
seed trains exactly as ``Trainer`` does.
"""

from __future__ import annotations

from typing import Tuple


def local_slice(n_global: int, rank: int, size: int) -> Tuple[int, int]:
    """``(start, stop)`` of rank's part of a global batch of ``n_global`` samples:
    ``size`` contiguous near-equal parts (sizes differ by at most one, the larger
    first; a part may be empty when ``n_global < size``)."""
    if not (0 <= rank < size):
        raise ValueError(f"rank={rank!r} must lie in [0, size={size})")
    base, rem = divmod(int(n_global), int(size))
    start = rank * base + min(rank, rem)
    return start, start + base + (1 if rank < rem else 0)
