"""Small helpers shared by the method-specific tests (MOS, LAE)."""

import torch


def seen_test(stream, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images and labels of experiences 0..upto."""
    xs, ys = zip(*(exp.tensors("test") for exp in stream[: upto + 1]))
    return torch.cat(xs), torch.cat(ys)


def states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)
