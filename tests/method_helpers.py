"""Small helpers shared by the method-specific tests (MOS, LAE, MIGU, HFT)."""

from functools import cache

import torch


def seen_test(stream, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images and labels of experiences 0..upto."""
    xs, ys = zip(*(exp.tensors("test") for exp in stream[: upto + 1]))
    return torch.cat(xs), torch.cat(ys)


def states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def _features(method, x: torch.Tensor) -> torch.Tensor:
    method.model.eval()
    return method.model.backbone(x)


def first_task_retention(method, stream) -> dict[str, float]:
    """How much of experience 0 the backbone keeps after training on the rest of ``stream``.

    ``ncm``: nearest-class-mean accuracy on experience 0's test images (means of its training images),
    ``cosine``: mean cosine similarity of their features to those right after experience 0. Both look
    past the classifier head, whose bias toward new classes dominates class-incremental forgetting.
    """
    x, y = stream[0].tensors("test")
    xt, yt = stream[0].tensors("train")
    method.train_experience(stream[0])
    before = _features(method, x)
    for exp in stream[1:]:
        method.train_experience(exp)
    after, train = _features(method, x), _features(method, xt)
    classes = torch.unique(yt)
    means = torch.stack([train[yt == c].mean(0) for c in classes])
    ncm = float((classes[torch.cdist(after, means).argmin(1)] == y).float().mean())
    return {"ncm": ncm, "cosine": float(torch.nn.functional.cosine_similarity(before, after).mean())}


@cache
def retention_on_two_tasks(name: str, seed: int, *overrides: str) -> dict[str, float]:
    """:func:`first_task_retention` on two tasks of 5 digits, 10 epochs each (cached: finetune is shared)."""
    from conftest import compose_config

    from fluxbench.methods import create_method
    from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything

    cfg = compose_config(f"method={name}", "stream.classes_per_exp=5", "method.epochs=10", *overrides)
    split = load_split(cfg, "evaluation")
    seed_everything(seed)
    stream = build_stream(cfg, split, seed=seed)
    return first_task_retention(create_method(cfg["method"], method_context(cfg, num_classes=10)), stream)
