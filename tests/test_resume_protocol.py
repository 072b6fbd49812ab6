"""Exact resume through the protocol, for every registered supervised method; and checkpoints that cannot run code.

A seed is crashed after its second experience (the checkpoint holds experiences 0 and 1), the same
call is made again, and the accuracy matrix must equal, bit for bit, that of an uninterrupted seed:
resumed from the checkpoint for a method with ``exact_resume``, restarted from scratch for the others.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import numpy as np
import pytest
from test_methods import run_supervised, short_overrides

from fluxbench.errors import DataError
from fluxbench.methods import list_methods
from fluxbench.methods.registry import get_method
from fluxbench.protocols import conventional
from fluxbench.protocols.execution import SupervisedLoop
from fluxbench.tracking import Tracker
from fluxbench.tracking.layout import FAILURE_TAG, KIND_SEED, KIND_TAG

SUPERVISED = [n for n in list_methods() if get_method(n).kind == "supervised"]


class Crash(RuntimeError):
    pass


def crash_at(monkeypatch, experience: int) -> None:
    """Make the supervised loop fail when it reaches ``experience`` (earlier ones are checkpointed)."""
    original = SupervisedLoop.experience

    def experience_or_crash(self, method, stream, i, partial, device):
        if i == experience:
            raise Crash(f"crash before experience {i}")
        return original(self, method, stream, i, partial, device)

    monkeypatch.setattr(SupervisedLoop, "experience", experience_or_crash)


def seed_runs(tracker: Tracker) -> list:
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = '{KIND_SEED}'")


@pytest.mark.parametrize("name", SUPERVISED)
def test_crash_after_experience_1_then_resume_gives_the_identical_matrix(name, make_config, monkeypatch):
    cfg = make_config(f"method={name}", *short_overrides(name), "protocol.num_seeds=1")
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    crash_at(monkeypatch, 2)
    with pytest.raises(Crash):
        conventional.run(cfg, tracker)
    (failed,) = seed_runs(tracker)
    assert failed.info.status == "FAILED" and "crash before experience 2" in failed.data.tags[FAILURE_TAG]
    monkeypatch.undo()

    trained = []
    original = SupervisedLoop.experience
    monkeypatch.setattr(SupervisedLoop, "experience",
                        lambda self, method, *a: trained.append(a[1]) or original(self, method, *a))
    resumed = conventional.run(cfg, tracker)
    monkeypatch.undo()
    # from the checkpoint (experiences 0 and 1 are not trained again), or from the start where the method says so
    assert trained == ([2, 3, 4] if get_method(name).exact_resume else [0, 1, 2, 3, 4])
    reference, _ = run_supervised(name)  # the same seed, uninterrupted, without tracking
    np.testing.assert_array_equal(resumed["seeds"][0].matrix, reference)
    (seed,) = seed_runs(tracker)
    assert seed.info.run_id == failed.info.run_id and seed.info.status == "FINISHED"
    assert FAILURE_TAG not in seed.data.tags  # the earlier stop's reason is gone with the resume


def _interrupted_seed(make_config, monkeypatch):
    cfg = make_config("method=finetune", "method.epochs=1", "protocol.num_seeds=1")
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    crash_at(monkeypatch, 2)
    with pytest.raises(Crash):
        conventional.run(cfg, tracker)
    monkeypatch.undo()
    (checkpoint,) = Path(cfg["tracking"]["checkpoint_dir"]).iterdir()
    assert checkpoint.suffix == ".pt"
    return cfg, tracker, checkpoint


class Payload:
    """Unpickling this would create a file: the proof that a checkpoint ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(make_config, monkeypatch, tmp_path):
    cfg, tracker, checkpoint = _interrupted_seed(make_config, monkeypatch)
    marker = tmp_path / "payload-ran"
    checkpoint.write_bytes(pickle.dumps({"format": 1, "method": Payload(str(marker))}))
    with pytest.raises(DataError, match=r"refusing the checkpoint .*weights_only=True") as err:
        conventional.run(cfg, tracker)
    assert "\n" not in str(err.value) and str(checkpoint) in str(err.value)
    assert not marker.exists()
    statuses = {r.info.status for r in tracker.client.search_runs([tracker.experiment_id], "")}
    assert statuses == {"FAILED"}  # parent and seed: recorded, never left RUNNING


def test_a_failed_checkpoint_write_leaves_no_partial_file(make_config, monkeypatch):
    cfg = make_config("method=finetune", "method.epochs=1", "protocol.num_seeds=1")
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    real_open = builtins.open

    def disk_full(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(".pt.tmp"):
            handle.write = lambda data: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        return handle

    monkeypatch.setattr(builtins, "open", disk_full)
    with pytest.raises(DataError, match="cannot write the checkpoint .*No space left on device"):
        conventional.run(cfg, tracker)
    monkeypatch.undo()
    assert list(Path(cfg["tracking"]["checkpoint_dir"]).iterdir()) == []
    assert {r.info.status for r in tracker.client.search_runs([tracker.experiment_id], "")} == {"FAILED"}
    assert conventional.run(cfg, tracker)["summary"]["last_accuracy"]["n"] == 1  # and the rerun completes
