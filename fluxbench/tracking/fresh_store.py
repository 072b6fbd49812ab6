"""A new local SQLite store starts as a copy of an already migrated empty one.

Creating an MLflow store runs its full chain of schema migrations (about 2-4 s on 2 cores), every
time a researcher points ``tracking.uri`` at a new file and in every test that uses a fresh
store. The result of those migrations depends only on the MLflow version, so it is made once per
version in the cache and copied; the only per-store fields (the Default experiment's artifact
location and times) are then set to what MLflow itself would have written.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from fluxbench.cache import cache_dir
from fluxbench.tracking.locks import file_lock


def _template() -> Path:
    """The migrated empty store for this MLflow version, made once (under a lock) in the cache."""
    import mlflow
    from mlflow.tracking import MlflowClient

    folder = cache_dir("mlflow")
    template = folder / f"empty-store-{mlflow.__version__}.db"
    if template.exists():
        return template
    with file_lock(folder / f"{template.name}.lock"):
        if not template.exists():
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                made = Path(scratch) / "store.db"
                MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()
                os.replace(made, template)
    return template


def _default_artifact_root() -> str:
    # MLflow's own default for a store opened without --default-artifact-root: ./mlruns of the opening process
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.utils.uri import resolve_uri_if_local

    return resolve_uri_if_local(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)


def seed_sqlite_store(path: Path) -> bool:
    """Put a migrated empty store at ``path`` if nothing (or an empty file) is there; True if it did.

    The caller holds the store's lock, so no other process opens ``path`` meanwhile; the copy lands
    under a temporary name and is renamed into place, so a kill leaves either nothing or a whole store.
    """
    if path.exists() and path.stat().st_size > 0:
        return False
    template = _template()
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        shutil.copyfile(template, partial)
        now = int(time.time() * 1000)
        with sqlite3.connect(partial) as db:
            db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                       "WHERE experiment_id = 0", (f"{_default_artifact_root()}/0", now, now))
        db.close()
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return True
