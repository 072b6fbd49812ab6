"""Shared by the TTA tests: a short digits-C config, its corrupted domains built once, one method run."""

from __future__ import annotations

from functools import cache
from typing import Any

from conftest import compose_config

from fluxbench.methods import Method, create_method
from fluxbench.protocols.online_tta import adapt_stream, tta_metrics
from fluxbench.protocols.setup import method_context, seed_everything
from fluxbench.protocols.tta_data import load_domains, seed_stream
from fluxbench.streams.experience import Experience

# one noise, two blurs, one weather, one digital corruption: a short continual digits-C stream (5 x 539 images)
SHORT = ("shot_noise", "defocus_blur", "motion_blur", "frost", "contrast")
# keep each method's defaults, but cap what only costs time (ViDA's uncertainty: 4 augmented views, not 10)
QUICK = {"vida": ("method.num_augment=4",)}


def tta_config(*overrides: str, names: tuple[str, ...] = SHORT, **named: Any) -> dict:
    return compose_config("protocol=online_tta", "benchmark=digits_c", "protocol.num_seeds=1",
                          f"benchmark.corruptions.names=[{','.join(names)}]", *overrides, **named)


@cache
def _domains(names: tuple[str, ...], setting: str):
    return load_domains(tta_config(names=names, **{"stream.setting": setting}))


def domains_of(cfg: dict):
    """The corrupted domains a config names (cached: each corruption is made once per session)."""
    names = tuple(cfg["benchmark"]["corruptions"]["names"])
    return _domains(names, cfg["stream"]["setting"])


def build(cfg: dict, seed: int = 0) -> tuple[Method, list[Experience]]:
    """The method and the stream of one seed, made in the protocol's order (seed, stream, method)."""
    domains, num_classes = domains_of(cfg)
    seed_everything(seed)
    stream = seed_stream(cfg, domains, num_classes, seed)
    method = create_method(cfg["method"], method_context(cfg, num_classes=num_classes))
    return method, stream


@cache
def run_method(name: str, *overrides: str) -> tuple[dict[str, float], dict[str, float]]:
    """Mean/per-domain errors and ``cost()`` of ``name`` over the short continual digits-C stream (seed 0)."""
    cfg = tta_config(f"method={name}", *QUICK.get(name, ()), *overrides)
    method, stream = build(cfg)
    hits = adapt_stream(method, stream, int(cfg["protocol"]["batch_size"]), method.device)
    return tta_metrics(stream, hits), method.cost()
