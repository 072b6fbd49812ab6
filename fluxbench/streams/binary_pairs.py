"""Binary task streams: each experience is one pair of classes, as in IBCL's Split CIFAR-10 / CIFAR-100 tasks.

Lu et al., "IBCL" (arXiv 2305.14782), upstream ``ibcl-anon/ibcl`` ``utils/preprocess_utils.py``: Split CIFAR-10
task ``i`` is classes ``(2i, 2i+1)`` with label ``class - 2i``; Split CIFAR-100 task ``i`` is animal class ``A[i]``
(label 0) against non-animal class ``N[i]`` (label 1). A benchmark states its pairs as ``class_pairs``; the stream
is the class-incremental stream whose class order is the pairs in sequence, two classes per experience, so task
``i``'s 0/1 label is its stream label minus ``2i`` and the stream manifest replays it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from fluxbench.errors import ConfigError


def pairs_order(pairs: Sequence[Sequence[int]], num_classes: int) -> list[int]:
    """The class order of a binary stream (label 0 then label 1 of each task), validated in one line."""
    order = []
    for k, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ConfigError(f"benchmark.class_pairs[{k}] must be a pair of class ids; got {pair!r}")
        order.extend(int(c) for c in pair)
    bad = sorted({c for c in order if not 0 <= c < num_classes})
    if bad or len(set(order)) != len(order):
        raise ConfigError("benchmark.class_pairs must be distinct classes of "
                          f"0..{num_classes - 1}; got {list(pairs)}")
    return order


def consecutive_pairs(num_tasks: int) -> list[list[int]]:
    """Split CIFAR-10's pairs: ``(0, 1), (2, 3), ...``."""
    return [[2 * i, 2 * i + 1] for i in range(num_tasks)]
