"""fluxbench: a benchmark harness for continual learning and test-time adaptation."""

__version__ = "0.1.0"
