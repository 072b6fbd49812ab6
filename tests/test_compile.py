"""``compile=<backend>``: the shared training step runs through torch.compile, with the eager numbers.

``aot_eager`` traces with Dynamo and AOTAutograd exactly as inductor does, without generating C++: the code path
is the one a GPU run takes with ``compile=inductor``, at a fraction of the compile time.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from fluxbench.cli import main
from fluxbench.methods import create_method
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything


def train_two_experiences(*overrides: str) -> tuple[torch.Tensor, dict]:
    cfg = compose_config("method=finetune", "method.epochs=1", "stream.classes_per_exp=5", *overrides)
    seed_everything(0)
    stream = build_stream(cfg, load_split(cfg, "evaluation"), seed=0)
    method = create_method(cfg["method"], method_context(cfg, num_classes=10))
    for exp in stream:
        method.train_experience(exp)
    x, _ = stream[0].tensors("test")
    return method.predict(x), method.state_dict()


def test_a_compiled_training_step_gives_the_eager_model():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager_logits, eager_state = train_two_experiences()
    assert not counters["stats"]["unique_graphs"]  # eager: nothing compiled
    compiled_logits, compiled_state = train_two_experiences("compile=aot_eager")
    assert counters["stats"]["unique_graphs"] >= 1  # the step went through Dynamo
    assert eager_state.keys() == compiled_state.keys()  # no _orig_mod: checkpoints stay interchangeable
    torch.testing.assert_close(compiled_logits, eager_logits, atol=1e-4, rtol=1e-4)
    assert (compiled_logits.argmax(1) == eager_logits.argmax(1)).float().mean() > 0.99


def test_an_unknown_compile_backend_is_one_line(capsys, store):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "protocol=conventional", "method=finetune", "compile=turbo",
              *(f"{k}={v}" for k, v in store.items())])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compile='turbo' is not a torch.compile backend" in err[0] and "inductor" in err[0]
