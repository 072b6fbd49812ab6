"""LAE on the embedded tiny ViT and the digits stream: each mechanism of the paper, measured (specs/lae.md §7)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import compose_config
from method_helpers import seen_test, states_equal
from test_methods import run_supervised

from fluxbench.errors import ConfigError
from fluxbench.methods import create_method
from fluxbench.protocols.execution import train_and_evaluate
from fluxbench.protocols.metrics import summarize_matrix
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything
from fluxbench.protocols.two_phase import check_config

DEPTH, WIDTH = 4, 64  # the tiny ViT; LAE's 5 adapted blocks are clamped to its 4


def make(*overrides: str):
    cfg = compose_config("method=lae", *overrides)
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)
    return create_method(cfg["method"], method_context(cfg, num_classes=10)), stream


def test_offline_module_is_the_ema_of_the_online_one_after_every_step():
    method, stream = make("method.ema_decay=0.9", "method.epochs=2", "method.num_freeze_epochs=1")
    method.train_experience(stream[0])
    assert method.offline is None, "no offline expert during the first task"
    at_task_end = method.online.state()
    checks = []
    expected: dict = {}
    original_before, original_after = method.before_experience, method.after_step

    def before_experience(exp):
        original_before(exp)
        assert states_equal(method.offline, at_task_end), "the offline expert starts as a copy of the online one"
        expected.update({k: v.clone() for k, v in method.offline.items()})

    def after_step(exp):
        online = method.online.state()
        for k in expected:
            expected[k] = 0.9 * expected[k] + 0.1 * online[k]
        original_after(exp)
        checks.append(max(float((method.offline[k] - expected[k]).abs().max()) for k in expected))

    method.before_experience, method.after_step = before_experience, after_step
    method.train_experience(stream[1])
    steps = 2 * (len(stream[1].train) // method.hparams.batch_size)
    assert len(checks) == steps and max(checks) < 1e-7
    assert not states_equal(method.offline, method.online.state()), "with decay 0.9 the offline expert lags"
    method.hparams.ema_decay = 0.0  # decay 0: the offline expert mirrors the online one
    original_after(stream[1])
    assert all(torch.allclose(method.offline[k], v) for k, v in method.online.state().items())


def test_online_module_is_frozen_for_the_warm_up_epochs_of_later_tasks():
    method, stream = make()  # the paper's 5 epochs, 3 of them frozen from the second task on
    assert (method.hparams.epochs, method.hparams.num_freeze_epochs) == (5, 3)
    marks: list[tuple[int, dict, torch.Tensor, bool]] = []
    original_before = method.before_epoch

    def before_epoch(exp, epoch):
        original_before(exp, epoch)
        new = exp.new_class_range
        trainable = all(p.requires_grad for p in method.online.parameters())
        marks.append((epoch, method.online.state(), method.model.head.weight[new.start:new.stop].clone(), trainable))

    method.before_epoch = before_epoch
    for t in range(2):
        marks.clear()
        method.train_experience(stream[t])
        new = stream[t].new_class_range
        marks.append((5, method.online.state(), method.model.head.weight[new.start:new.stop].clone(), True))
        for (epoch, pet, head, trainable), (_, pet_next, head_next, _) in zip(marks, marks[1:]):
            frozen = t > 0 and epoch < 3
            assert trainable is not frozen, (t, epoch)
            where = f"task {t} epoch {epoch}"
            assert states_equal(pet, pet_next) is frozen, f"{where}: the PET {'changed' if frozen else 'was idle'}"
            assert not torch.equal(head, head_next), f"{where}: the new head rows did not learn"


def test_old_head_rows_never_move():
    method, stream = make("method.epochs=2", "method.num_freeze_epochs=1")
    method.train_experience(stream[0])
    old = method.model.head.weight[:2].clone(), method.model.head.bias[:2].clone()
    method.train_experience(stream[1])
    assert torch.equal(old[0], method.model.head.weight[:2]) and torch.equal(old[1], method.model.head.bias[:2])


@pytest.fixture(scope="module")
def trained():
    """LAE with its defaults over the whole stream (the same run as test_methods' run_supervised("lae"))."""
    method, stream = make()
    R = train_and_evaluate(method, stream, torch.device("cpu"))
    return method, stream, R


def test_ensemble_is_the_elementwise_max_of_the_two_experts(trained):
    method, stream, _ = trained
    x, y = seen_test(stream, len(stream) - 1)
    online, offline = method.experts(x)
    ensemble = method.predict(x)
    assert torch.equal(ensemble, torch.maximum(online, offline))
    assert not torch.allclose(ensemble.sum(1), torch.ones(len(x))), "a max of two softmaxes is not a distribution"
    # the offline expert is the same model with the offline PET loaded
    other, _ = make()
    other.load_state_dict(method.state_dict())
    other.online.load_state(method.offline)
    assert torch.allclose(other.experts(x)[0], offline, atol=1e-6)
    accs = [float((p.argmax(1) == y).float().mean()) for p in (online, offline, ensemble)]
    print("LAE last accuracy on digits: online {:.3f}, offline {:.3f}, ensemble {:.3f}".format(*accs))
    assert accs[2] >= min(accs[:2])


def test_lae_forgets_less_than_finetune(trained):
    _, stream, R = trained
    lae = summarize_matrix(R, [len(exp.test) for exp in stream])["forgetting"]
    finetune = summarize_matrix(*run_supervised("finetune"))["forgetting"]
    print(f"forgetting on digits: lae {lae:.3f}, finetune {finetune:.3f}")
    assert lae < finetune - 0.3


@pytest.mark.parametrize("pet, per_block", [
    ("adapter", 2 * WIDTH * 5 + 5 + WIDTH + 1),  # down, up, learnable scale
    ("lora", 2 * (2 * 5 * WIDTH) + 2),  # A and B for K and V, two scales
    ("prefix", 2 * 10 * WIDTH + 2),  # 10 keys, 10 values, two scales
])
def test_every_pet_kind_trains_and_has_the_papers_size(pet, per_block):
    method, stream = make(f"method.pet={pet}", "method.epochs=1", "method.num_freeze_epochs=0")
    assert method.online.num_parameters() == DEPTH * per_block
    x, _ = stream[0].tensors("test")
    method.model.eval()
    with torch.no_grad():
        with method.online.disabled():
            plain = method.model.backbone(x)
        starts_as_identity = torch.equal(method.model.backbone(x), plain)
    assert starts_as_identity is (pet != "prefix")
    before = method.online.state()
    method.train_experience(stream[0])
    assert not states_equal(before, method.online.state())
    assert torch.isfinite(method.predict(x)).all() and method.offline is None


def test_resume_after_an_experience_gives_the_same_predictions():
    a, stream = make("method.epochs=2", "method.num_freeze_epochs=1")
    for exp in stream[:2]:
        a.train_experience(exp)
    checkpoint = io.BytesIO()
    torch.save({"method": a.state_dict(), "rng": torch.get_rng_state()}, checkpoint)
    a.train_experience(stream[2])
    b, _ = make("method.epochs=2", "method.num_freeze_epochs=1")
    checkpoint.seek(0)
    state = torch.load(checkpoint, weights_only=False)
    b.load_state_dict(state["method"])
    torch.set_rng_state(state["rng"])
    b.train_experience(stream[2])
    x, _ = seen_test(stream, 2)
    assert np.array_equal(a.predict(x).numpy(), b.predict(x).numpy())


def test_search_space_is_valid_and_bad_values_are_config_errors():
    cfg = compose_config("protocol=two_phase", "method=lae")
    assert {"lr", "epochs", "num_freeze_epochs", "ema_decay", "pet_size", "adapt_blocks"} <= set(check_config(cfg))
    for bad in ("method.num_freeze_epochs=5", "method.pet=vpt", "method.ensemble=vote", "method.ema_decay=2"):
        bad_cfg = compose_config("method=lae", bad)
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            create_method(bad_cfg["method"], method_context(bad_cfg, num_classes=10))
