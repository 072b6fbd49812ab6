"""One seed of any protocol as a child run: stream, method, the loop over experiences, checkpoints, read-back.

A *loop* says what is its own (:class:`SeedLoop`: the supervised loop in :mod:`.execution`, the
online test-time loop in :mod:`.online_tta`); :func:`run_seed` does the rest, the same way for all:

1. the seed's config hash is held (:meth:`Tracker.exclusive`): a second process with the same seed waits;
2. a finished run with that hash is read back, not run again;
3. otherwise: seed every RNG, build the stream, start (or resume) the run, build the method;
4. a resumed run loads the last checkpoint (``weights_only=True``: nothing in it can execute code) when both
   the loop and the method resume exactly, and restores every RNG; else it restarts the seed from scratch;
5. per experience: ``loop.experience`` -> step metrics -> checkpoint (atomic: temp file, then rename);
6. the result (metrics, matrix) is logged, the run ends, the checkpoint is removed;
7. the result is *read back from the store*, so an aggregate is computed the same way whether a seed ran now
   or in an earlier call.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from fluxbench.errors import DataError
from fluxbench.methods import Method, MethodContext, create_method
from fluxbench.protocols import rng
from fluxbench.protocols.execution import peak_memory_mb
from fluxbench.streams.experience import Experience
from fluxbench.streams.manifest import stream_manifest
from fluxbench.tracking import RunHandle, SeedRecord, Tracker, config_hash, flatten
from fluxbench.tracking.layout import KIND_SEED, MANIFEST_ARTIFACT, SEED_TAG

CHECKPOINT_FORMAT = 1


class SeedLoop(Protocol):
    """What one kind of seed does. ``partial`` holds the results so far (tensors: it is checkpointed)."""

    resumable: bool  # False: an interrupted seed restarts from its first experience
    fingerprint: str  # of the data: part of the seed's config hash

    def num_experiences(self) -> int: ...

    def stream(self, seed: int) -> list[Experience]: ...

    def context(self, stream: list[Experience]) -> MethodContext: ...

    def tags(self) -> dict[str, str]: ...  # set on the seed run once the method is built

    def begin(self, stream: list[Experience]) -> dict[str, Any]: ...

    def experience(self, method: Method, stream: list[Experience], i: int, partial: dict[str, Any],
                   device: torch.device) -> dict[str, float]: ...

    def result(self, stream: list[Experience], partial: dict[str, Any]) -> tuple[dict[str, float], Any, Any]: ...


class Checkpoints:
    """The checkpoint file of one seed run: written atomically, loaded safely, removed when the run finishes."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.path = Path(root) / f"{key}.pt"
        self.tmp = self.path.with_name(self.path.name + ".tmp")

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # an unpickling refusal, a truncated file: never run what is in it
            raise DataError(f"refusing the checkpoint {self.path}: it is not a fluxbench checkpoint that loads with "
                            f"weights_only=True ({type(err).__name__}); delete it to restart the seed") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise DataError(f"refusing the checkpoint {self.path}: unknown format; delete it to restart the seed")
        return state

    def save(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.tmp, "wb") as handle:
                handle.write(buf.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(self.tmp, self.path)
        except OSError as err:
            self.tmp.unlink(missing_ok=True)
            raise DataError(f"cannot write the checkpoint {self.path}: {err.strerror or err}; free space there or "
                            "set tracking.checkpoint_dir") from None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.tmp.unlink(missing_ok=True)


def seed_key(cfg: Mapping[str, Any], seed: int, loop: SeedLoop) -> str:
    return config_hash(cfg, "seed", seed, loop.fingerprint)


def run_seed(cfg: Mapping[str, Any], seed: int, loop: SeedLoop, tracker: Tracker, parent: RunHandle,
             tags: Mapping[str, Any] | None = None, progress: Callable[[int], None] | None = None) -> SeedRecord:
    """Run (or resume, or read back) one seed of ``loop`` as a child run of ``parent``."""
    key = seed_key(cfg, seed, loop)
    with tracker.exclusive(key, f"seed {seed} of {cfg['method']['name']}"):
        done = tracker.finished(key)
        if done is not None:
            if progress:
                progress(loop.num_experiences())
            return tracker.read_seed(done, skipped=True)
        run_id = _run(cfg, seed, key, loop, tracker, parent, dict(tags or {}), progress or (lambda n: None))
    return tracker.read_seed(run_id)


def _run(cfg: Mapping[str, Any], seed: int, key: str, loop: SeedLoop, tracker: Tracker, parent: RunHandle,
         tags: dict[str, Any], progress: Callable[[int], None]) -> str:
    rng.seed_everything(seed)
    stream = loop.stream(seed)
    run = tracker.start(f"seed {seed}", key, KIND_SEED, parent.run_id, {SEED_TAG: seed, **tags})
    ckpt = Checkpoints(cfg["tracking"]["checkpoint_dir"], key)
    with tracker.failing_on_error(run):
        if not run.resumed:
            tracker.log_params(run, flatten(cfg) | {SEED_TAG: seed})
            tracker.log_json(run, stream_manifest(stream, seed=seed, fingerprint=loop.fingerprint), MANIFEST_ARTIFACT)
        ctx = loop.context(stream)
        method = create_method(cfg["method"], ctx)
        tracker.set_tags(run, loop.tags())
        resumable = loop.resumable and type(method).exact_resume
        start, partial, elapsed = _restore(ckpt.load() if run.resumed else None, method, loop, stream, resumable)
        progress(start)
        began = time.perf_counter() - elapsed
        for i in range(start, loop.num_experiences()):  # a loop may make more than one pass over its stream
            tracker.log_metrics(run, loop.experience(method, stream, i, partial, ctx.device), step=i)
            if resumable:
                ckpt.save({"method": method.state_dict(), "rng": rng.capture(), "next": i + 1, "partial": partial,
                           "elapsed": time.perf_counter() - began})
            progress(1)
        metrics, matrix, sizes = loop.result(stream, partial)
        metrics.update(wall_time_s=time.perf_counter() - began, peak_memory_mb=peak_memory_mb(ctx.device),
                       **method.cost())
        tracker.log_seed_result(run, metrics, matrix, sizes)
        for path, text in getattr(loop, "artifacts", lambda s, p: {})(stream, partial).items():
            tracker.log_text(run, text, path)  # a loop's own tables (continual pretraining: dataset x task)
        tracker.end(run)
    ckpt.clear()
    return run.run_id


def _restore(state: dict[str, Any] | None, method: Method, loop: SeedLoop, stream: list[Experience],
             resumable: bool) -> tuple[int, dict[str, Any], float]:
    """``(next experience, partial results, seconds already spent)``: from the checkpoint, or from the start."""
    if state is None:
        return 0, loop.begin(stream), 0.0
    if not resumable:
        why = "the loop" if not loop.resumable else f"method {method.name!r}"
        print(f"fluxbench: {why} cannot resume exactly: restarting this seed from its first experience",
              file=sys.stderr)
        return 0, loop.begin(stream), 0.0
    method.load_state_dict(state["method"])
    rng.restore(state["rng"])
    return int(state["next"]), state["partial"], float(state.get("elapsed", 0.0))
