"""fluxbench's Hydra configs. Importing this package (Hydra does, to read it) registers the typed schemas."""

from fluxbench.conf.schema import register_schemas

register_schemas()
