"""Methods as plug-ins. In-tree methods are imported here so that they register themselves."""

from fluxbench.methods import (  # noqa: F401
    avalanche_adapter,
    bn_adapt,
    cema,
    clip_baselines,
    codyra,
    cpt_basic,
    cpt_bitfit,
    cpt_ewc_si,
    cpt_hft,
    cpt_lora,
    cpt_merge,
    cpt_migu,
    finetune,
    hft,
    ibcl,
    joint,
    lae,
    migu,
    mos,
    pref_replay,
    prototype,
    source,
    tent,
    vcl,
    vida,
)
from fluxbench.methods.base import Method, MethodContext
from fluxbench.methods.registry import create_method, get_method, list_methods, register_method

__all__ = ["Method", "MethodContext", "create_method", "get_method", "list_methods", "register_method"]
