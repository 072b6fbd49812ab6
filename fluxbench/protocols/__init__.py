"""Protocol runners by name: each is ``run(cfg: dict, tracker: Tracker) -> dict``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from fluxbench.errors import ConfigError

PROTOCOLS = {
    "continual_pretraining": "fluxbench.protocols.continual_pretraining",
    "conventional": "fluxbench.protocols.conventional",
    "mtil": "fluxbench.protocols.mtil",
    "online_tta": "fluxbench.protocols.online_tta",
    "preference": "fluxbench.protocols.preference",
    "two_phase": "fluxbench.protocols.two_phase",
}


def get_protocol(name: str) -> Callable[..., dict[str, Any]]:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return import_module(PROTOCOLS[name]).run


# the config groups a protocol picks when the command line does not name them (Hydra cannot let a group option
# override another group's default): continual pretraining and MTIL need a CLIP, an image-text benchmark and
# their own methods; the test-time protocols a corrupted benchmark; the preference protocol binary tasks
PROTOCOL_DEFAULTS = {
    "continual_pretraining": {"benchmark": "fomo_digits", "backbone": "tiny_clip", "method": "cpt_finetune"},
    "mtil": {"benchmark": "fomo_digits", "backbone": "tiny_clip", "method": "codyra"},
    "online_tta": {"benchmark": "digits_c", "method": "tent"},
    "two_phase_tta": {"benchmark": "digits_c", "method": "tent"},
    "preference": {"benchmark": "digits_pairs", "method": "ibcl"},
}


# the plain names a researcher types under an image-text protocol, for that protocol's own implementation:
# `protocol=continual_pretraining method=finetune,lora` means the contrastive finetune and LoRA, not the
# class-incremental ones (which cannot run on a CLIP stream)
PROTOCOL_METHOD_NAMES = {
    "continual_pretraining": {
        "finetune": "cpt_finetune", "lora": "cpt_lora", "migu": "cpt_migu", "hft": "cpt_hft",
        "ewc": "cpt_ewc", "si": "cpt_si",
    },
    "mtil": {"finetune": "clip_finetune", "lora": "clip_lora", "zeroshot": "clip_zeroshot"},
}


def _method_names_for(protocol: str, value: str) -> str:
    """A ``method=`` value (one name or a multirun comma list) with the protocol's plain names resolved."""
    names = PROTOCOL_METHOD_NAMES.get(protocol, {})
    return ",".join(names.get(name.strip(), name.strip()) for name in value.split(","))


def with_protocol_defaults(args: list[str]) -> list[str]:
    """``args`` with the chosen protocol's plain method names resolved, plus ``group=option`` for each of the
    protocol's defaults the command line leaves open."""
    chosen = {a.partition("=")[0].lstrip("+~"): a.partition("=")[2] for a in args if "=" in a}
    protocol = chosen.get("protocol", "")
    resolved = [f"method={_method_names_for(protocol, a.partition('=')[2])}" if a.startswith("method=") else a
                for a in args]
    extra = PROTOCOL_DEFAULTS.get(protocol, {})
    return [*resolved, *(f"{group}={option}" for group, option in extra.items() if group not in chosen)]
