"""Fixtures shared by all tests: an isolated cache, composed configs, a throwaway MLflow store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; set before torch loads OpenMP
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session", autouse=True)
def fluxbench_cache(tmp_path_factory) -> Path:
    """One cache for the session (the tiny ViT is pre-trained once), never the user's own."""
    path = Path(os.environ.get("FLUXBENCH_TEST_CACHE") or tmp_path_factory.mktemp("fluxbench-cache"))
    os.environ["FLUXBENCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test models are tiny: one intra-op thread is as fast, and far faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def empty_store_template(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema migrated once (migrations take seconds per store)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "artifacts"))
    store.engine.dispose()
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store_template) -> dict[str, str]:
    """Tracking overrides pointing at a fresh SQLite store in the test's own directory (also the cwd,
    so that MLflow's default artifact root lands there too)."""
    shutil.copy(empty_store_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return {
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.checkpoint_dir": str(tmp_path / "checkpoints"),
        "tracking.experiment": "tests",
    }


def compose_config(*overrides: str, **named: object) -> dict:
    """The resolved config the CLI would see for these overrides (plus ``key=value`` keywords)."""
    items = [*overrides, *(f"{k}={v}" for k, v in named.items()), "progress=false"]
    with initialize_config_module("fluxbench.conf", version_base="1.3"):
        return OmegaConf.to_container(compose("config", items), resolve=True)


@pytest.fixture
def make_config(store):
    def make(*overrides: str, **named: object) -> dict:
        return compose_config(*overrides, *(f"{k}={v}" for k, v in store.items()), **named)

    return make
