"""Methods by name: in-tree ones by decorator, others through the ``fluxbench.methods`` entry-point group.

``@register_method("name")`` registers a :class:`~fluxbench.methods.base.Method` subclass.
A package outside fluxbench adds a method without editing fluxbench by declaring::

    [project.entry-points."fluxbench.methods"]
    my_method = "my_package.my_module:MyMethod"

and giving the class a ``config_file`` (its defaults and search space, in the schema of
``conf/method/*.yaml``). The registry calls::

    cls(cls.Hparams(**hyperparameters), ctx: MethodContext) -> Method
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from importlib.metadata import entry_points
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf

from fluxbench.errors import ConfigError
from fluxbench.methods.base import CONF_DIR, Method, MethodContext

ENTRY_POINT_GROUP = "fluxbench.methods"
META_KEYS = ("name", "search_space")
_METHODS: dict[str, type[Method]] = {}
_plugins_loaded = False


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def wrap(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name]} and {cls})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def load_plugins() -> None:
    """Import every method declared in the ``fluxbench.methods`` entry-point group (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if ep.name not in _METHODS:
            register_method(ep.name)(cls)


def list_methods(pattern: str = "*") -> list[str]:
    load_plugins()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> type[Method]:
    load_plugins()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; registered methods: {', '.join(list_methods())}")
    return _METHODS[name]


def method_config(name: str) -> dict[str, Any]:
    """The method's defaults and search space as a plain dict: composed by Hydra for in-tree methods (their YAML
    pulls the shared training keys from ``conf/method/training`` through its defaults list), read as it is for
    methods from other packages."""
    path = get_method(name).config_path()
    if not path.is_file():
        raise ConfigError(f"method {name!r} has no config file at {path}")
    if path.parent != CONF_DIR / "method":
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra job: compose in its context
        return OmegaConf.to_container(compose("config", [f"method={name}"]).method, resolve=True)
    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        return OmegaConf.to_container(compose("config", [f"method={name}"]).method, resolve=True)


def hyperparameters(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameter part of a method config node (without ``name`` and ``search_space``)."""
    return {k: v for k, v in cfg.items() if k not in META_KEYS}


def validate_hyperparameters(cfg: Mapping[str, Any]) -> Any:
    """The method's ``Hparams`` built from a config node; a one-line ConfigError if anything is off."""
    cls = get_method(cfg["name"])
    values = hyperparameters(cfg)
    expected = {f.name for f in fields(cls.Hparams)}
    required = {f.name for f in fields(cls.Hparams) if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = sorted(set(values) - expected), sorted(required - set(values))
    if unknown or missing:
        raise ConfigError(f"method {cls.name!r}: unknown hyperparameters {unknown}, missing {missing}")
    hints = get_type_hints(cls.Hparams)
    for name, value in values.items():
        check_type(name, value, hints.get(name, Any))
    return cls.Hparams(**values)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_type(name: str, value: Any, hint: Any) -> None:
    """``method.<name>`` must match its annotated type (before it reaches ``range()`` or torch)."""
    allowed = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, UnionType) else [hint]
    if value is None and len(allowed) < len(get_args(hint) or [hint]):
        return
    for kind in allowed:
        if kind not in _TYPE_WORDS:
            return  # a type we do not check (lists, mappings, custom classes)
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is str and isinstance(value, str):
            return
    words = " or ".join(_TYPE_WORDS[k] for k in allowed)
    raise ConfigError(f"method.{name} must be {words}; got {value!r}")


def create_method(cfg: Mapping[str, Any], ctx: MethodContext) -> Method:
    """Build the method a config node names, validating its hyperparameters."""
    return get_method(cfg["name"])(validate_hyperparameters(cfg), ctx)
