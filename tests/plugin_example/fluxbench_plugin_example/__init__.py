"""An example fluxbench plug-in: a method that lives in its own package."""
