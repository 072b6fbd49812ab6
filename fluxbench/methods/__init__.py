"""Methods as plug-ins. In-tree methods are imported here so that they register themselves."""

from fluxbench.methods import avalanche_adapter, cema, finetune, joint, lae, mos, prototype, source, tent, vida  # noqa: F401
from fluxbench.methods.base import Method, MethodContext
from fluxbench.methods.registry import create_method, get_method, list_methods, register_method

__all__ = ["Method", "MethodContext", "create_method", "get_method", "list_methods", "register_method"]
