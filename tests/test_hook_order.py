"""The exact sequence of calls the protocol makes on a method, and the shared loop makes on its hooks, through
training, evaluation, checkpoints, a crash and the resume (in the style of Lightning's ``test_hooks.py``).

A change that reorders, adds or drops a call (a second evaluation, a checkpoint before the matrix row is filled,
a hook skipped on resume) fails here first, with the whole sequence in the diff.
"""

from __future__ import annotations

import pytest
from test_resume_protocol import Crash, crash_at

from fluxbench.methods.finetune import Finetune
from fluxbench.protocols import conventional
from fluxbench.tracking import Tracker

PER_BATCH = ("training_loss", "before_optimizer_step", "after_step")
COUNTS: dict[str, int] = {}  # calls per hook, for the per-batch ones that the sequence folds into "steps"
HOOKS = ("train_experience", "before_experience", "trainable_parameters", "before_epoch", "training_batches",
         *PER_BATCH, "after_experience", "predict", "state_dict", "load_state_dict", "cost")


def _experience_of(args) -> str:
    index = getattr(args[0], "index", None) if args else None
    return "" if index is None else f"({index}" + (f", {args[1]})" if len(args) > 1 else ")")


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Every hook call on the method, in order; a batch's three calls are one ``step`` (counted apart)."""
    record: list[str] = []
    record_counts = COUNTS
    record_counts.clear()

    def recording(name: str):
        original = getattr(Finetune, name)

        def hook(self, *args, **kwargs):
            record_counts[name] = record_counts.get(name, 0) + 1
            event = "step" if name in PER_BATCH else name + _experience_of(args if name != "predict" else ())
            if name not in PER_BATCH[1:]:  # one entry per batch, not three
                record.append(event)
            return original(self, *args, **kwargs)

        return hook

    for name in HOOKS:
        monkeypatch.setattr(Finetune, name, recording(name))
    return record


def squeeze(events: list[str]) -> list[str]:
    """``step`` repeated n times becomes one ``steps``: the batch count is the data's, not the protocol's."""
    out: list[str] = []
    for e in events:
        if e == "step" and out and out[-1] == "steps":
            continue
        out.append("steps" if e == "step" else e)
    return out


def experience(i: int) -> list[str]:
    """Train on i (one epoch), evaluate experiences 0..i (one test batch each), checkpoint."""
    return [f"train_experience({i})", f"before_experience({i})", "trainable_parameters", f"before_epoch({i}, 0)",
            f"training_batches({i})", "steps", f"after_experience({i})", *["predict"] * (i + 1), "state_dict"]


def test_train_evaluate_checkpoint_crash_and_resume_call_the_hooks_in_this_order(calls, make_config):
    cfg = make_config("method=finetune", "method.epochs=1", "protocol.num_seeds=1")
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    with pytest.MonkeyPatch.context() as crashing:
        crash_at(crashing, 2)
        with pytest.raises(Crash):
            conventional.run(cfg, tracker)
    assert squeeze(calls) == [*experience(0), *experience(1)]
    assert COUNTS["training_loss"] == COUNTS["before_optimizer_step"] == COUNTS["after_step"] > 2  # each batch

    calls.clear()
    conventional.run(cfg, tracker)  # the resume: the checkpoint is loaded before anything else
    assert squeeze(calls) == ["load_state_dict", *experience(2), *experience(3), *experience(4), "cost"]

    calls.clear()
    conventional.run(cfg, tracker)  # finished: read back from the store, the method is not even built
    assert calls == []
