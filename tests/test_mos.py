"""MOS on the embedded tiny ViT and the digits stream: each mechanism of the paper, measured (specs/mos.md §9)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from conftest import compose_config
from method_helpers import seen_test, states_equal
from test_methods import run_supervised

from fluxbench.errors import ConfigError
from fluxbench.methods import create_method
from fluxbench.methods import mos as mos_module
from fluxbench.methods.mos import adapter_config, class_batches
from fluxbench.peft import attach, average
from fluxbench.protocols.execution import train_and_evaluate
from fluxbench.protocols.metrics import summarize_matrix
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything
from fluxbench.protocols.two_phase import check_config

DEPTH, WIDTH = 4, 64  # the tiny ViT


def make(*overrides: str, epochs: int = 5):
    cfg = compose_config("method=mos", f"method.epochs={epochs}", *overrides)
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)
    return create_method(cfg["method"], method_context(cfg, num_classes=10)), stream


@pytest.fixture(scope="module")
def trained():
    """MOS with its defaults (epochs capped at 5, as test_methods does) over the whole stream: the method,
    the stream, what it held after each task, and the accuracy matrix."""
    method, stream = make()
    history = []

    def record(i: int, R: np.ndarray) -> None:
        history.append({"originals": list(method.originals), "prototypes": method.prototypes.clone()})

    R = train_and_evaluate(method, stream, torch.device("cpu"), after_experience=record)
    return method, stream, history, R


def test_one_stored_adapter_per_task_and_they_differ(trained):
    method, stream, history, _ = trained
    names = {name for name, _ in method.adapters.named_parameters()}
    for t, held in enumerate(history):
        assert len(held["originals"]) == t + 1 and set(held["originals"][t]) == names
    final = method.originals
    for t in range(1, len(final)):
        diff = max(float((final[t][k] - final[t - 1][k]).abs().max()) for k in names)
        assert diff > 1e-7, f"task {t}'s adapter equals task {t - 1}'s"
    # a stored adapter never changes afterwards, and (paper mode) retrieval runs it as stored
    assert all(states_equal(history[0]["originals"][0], s) for s in (final[0], method.snapshots[0]))
    assert all(states_equal(a, b) for a, b in zip(final, method.snapshots))


def test_merge_pulls_the_adapter_towards_the_mean_of_earlier_ones():
    method, stream = make(epochs=1)
    beta = method.hparams.adapter_momentum
    assert beta == 0.1
    for exp in stream[:2]:
        method.train_experience(exp)
    method.before_experience(stream[2])
    mean = average(method.originals[:2])
    before = method.adapters.state()
    method.after_step(stream[2])
    after = method.adapters.state()
    for k in before:
        assert torch.allclose(after[k], (1 - beta) * before[k] + beta * mean[k], atol=1e-6)
    for _ in range(200):  # the fixed point of repeated merges is the mean
        method.after_step(stream[2])
    assert all(torch.allclose(method.adapters.state()[k], mean[k], atol=1e-6) for k in mean)

    fresh, _ = make(epochs=1)
    fresh.before_experience(stream[0])  # task 0: nothing to merge with
    start = fresh.adapters.state()
    fresh.after_step(stream[0])
    assert states_equal(start, fresh.adapters.state())


def test_merge_in_the_training_loop_applies_the_coefficient_once_per_step():
    method, stream = make("method.crct_epochs=0", epochs=1)
    for exp in stream[:2]:
        method.train_experience(exp)
    method.hparams.lr = 1e-9  # task 2: gradients move nothing measurable, so only the merges act
    mean, start = average(method.originals), method.adapters.state()
    steps = -(-len(stream[2].train) // method.hparams.batch_size)
    method.train_experience(stream[2])
    end = method.originals[2]
    assert max(float((start[k] - mean[k]).abs().max()) for k in mean) > 1e-6
    for k in mean:
        expected = mean[k] + (1 - 0.1) ** steps * (start[k] - mean[k])
        assert torch.allclose(end[k], expected, atol=1e-7), k


def test_faithful_to_code_pulls_before_every_block_and_stored_adapters_drift():
    method, stream = make("method.faithful_to_code=true", epochs=1)
    beta, shrink = 0.1, 0.9 ** DEPTH
    for exp in stream[:2]:
        method.train_experience(exp)
    originals = [dict(s) for s in method.originals]
    # Q2: every evaluation batch pulls stored adapter 1 towards adapter 0, once per block; the batches are
    # upstream's (method.batch_size samples), whatever batch the protocol hands predict
    x, _ = seen_test(stream, 1)
    method.predict(x)
    batches = -(-len(x) // method.hparams.batch_size)
    assert batches > 1
    for k in originals[1]:
        expected = originals[0][k] + shrink ** batches * (originals[1][k] - originals[0][k])
        assert torch.allclose(method.snapshots[1][k], expected, atol=1e-6), k
    assert states_equal(method.snapshots[0], originals[0]) and states_equal(method.originals[1], originals[1])
    # Q1: one training forward pulls the current adapter once per block
    method.before_experience(stream[2])
    mean, start = average(originals), method.adapters.state()
    xb, yb = stream[2].tensors("train")
    method.training_loss(xb[:8], yb[:8], stream[2])
    now = method.adapters.state()
    for k in mean:
        assert torch.allclose(now[k], mean[k] + shrink * (start[k] - mean[k]), atol=1e-6), k
    assert beta == method.hparams.adapter_momentum


def test_prototypes_are_first_adapter_class_means_and_never_change(trained):
    method, stream, history, _ = trained
    method.model.eval()
    for exp in (stream[0], stream[-1]):
        for c in exp.new_class_range:
            with torch.no_grad(), method.adapters.using(method.originals[0]):
                feats = torch.cat([method.model.backbone(x) for x in class_batches(exp.train, c, 50, "cpu")])
            assert torch.allclose(method.prototypes[c], feats.mean(0), atol=1e-5)
    first = stream[0].new_class_range
    assert torch.equal(history[0]["prototypes"][first.start:first.stop], method.prototypes[first.start:first.stop])


def test_classifier_alignment_trains_only_the_head(monkeypatch):
    calls = []
    real = mos_module.align_classifier

    def recording(head, *args, **kwargs):
        adapters, weights = method.adapters.state(), head.weight.detach().clone()
        accuracy = real(head, *args, **kwargs)
        calls.append((states_equal(adapters, method.adapters.state()), torch.equal(weights, head.weight), accuracy))
        return accuracy

    monkeypatch.setattr(mos_module, "align_classifier", recording)
    method, stream = make(epochs=1)
    for exp in stream[:2]:
        method.train_experience(exp)
    assert len(calls) == 1, "alignment runs from the second task on"
    adapters_unchanged, head_unchanged, accuracy = calls[0]
    assert adapters_unchanged and not head_unchanged
    assert accuracy > 0.9, f"alignment accuracy on the sampled features: {accuracy:.3f}"


def test_removing_classifier_alignment_lowers_old_class_accuracy(trained):
    _, stream, _, R = trained
    method, _ = make("method.crct_epochs=0")
    R_without = train_and_evaluate(method, stream, torch.device("cpu"))
    sizes = np.array([len(exp.test) for exp in stream[:-1]])
    with_ca, without = (float(np.average(m[-1, :-1], weights=sizes)) for m in (R, R_without))
    print(f"old-class accuracy after the last task: {with_ca:.3f} with alignment, {without:.3f} without")
    assert with_ca > without


def test_retrieval_picks_the_right_task_adapter_for_most_samples(trained, record_property):
    method, stream, _, _ = trained
    x, y = seen_test(stream, len(stream) - 1)
    task, _, cos = method.retrieve(x)
    true_task = method.cls2task[y]
    retrieval = float((task == true_task).float().mean())
    coarse = float((method.cls2task[cos.argmax(1)] == true_task).float().mean())
    record_property("retrieval_accuracy", retrieval)
    print(f"MOS adapter retrieval on digits: {100 * retrieval:.1f}% (prototype guess alone {100 * coarse:.1f}%)")
    assert retrieval > 0.7
    assert retrieval >= coarse, "self-refinement should not make the prototype guess worse here"
    method.hparams.max_iter = 1  # one round: the adapter is the prototype guess
    try:
        task1, _, _ = method.retrieve(x)
    finally:
        method.hparams.max_iter = 4
    assert torch.equal(task1, method.cls2task[cos.argmax(1)])


def test_ensemble_adds_the_prototype_softmax_sharpened_by_the_task_count(trained):
    method, stream, _, _ = trained
    x, _ = seen_test(stream, len(stream) - 1)
    _, logits, cos = method.retrieve(x)
    expected = logits.softmax(1) + (5 * cos).softmax(1)
    assert torch.allclose(method.predict(x), expected, atol=1e-6)


def test_adapters_start_as_identity_and_have_the_papers_size():
    method, stream = make()
    assert method.adapters.num_parameters() == DEPTH * (2 * WIDTH * 16 + 16 + WIDTH)
    x, _ = stream[0].tensors("test")
    method.model.eval()
    with torch.no_grad():
        with method.adapters.disabled():
            plain = method.model.backbone(x)
        assert torch.equal(method.model.backbone(x), plain)
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    assert attach(vit_b, "adapter", **adapter_config(16)).num_parameters() == 304_320  # spec §2


def test_mos_beats_finetune_on_last_accuracy(trained):
    _, stream, _, R = trained  # the same run as test_methods' run_supervised("mos")
    mos = summarize_matrix(R, [len(exp.test) for exp in stream])["last_accuracy"]
    finetune = summarize_matrix(*run_supervised("finetune"))["last_accuracy"]
    print(f"last accuracy on digits: mos {mos:.3f}, finetune {finetune:.3f}")
    assert mos > finetune + 0.3


@pytest.mark.parametrize("faithful", [False, True])
def test_resume_after_an_experience_gives_the_same_predictions(faithful):
    flag = f"method.faithful_to_code={str(faithful).lower()}"
    a, stream = make(flag, epochs=1)
    a.train_experience(stream[0])
    checkpoint = io.BytesIO()
    torch.save({"method": a.state_dict(), "rng": torch.get_rng_state()}, checkpoint)
    a.train_experience(stream[1])
    b, _ = make(flag, epochs=1)
    checkpoint.seek(0)
    state = torch.load(checkpoint, weights_only=False)
    b.load_state_dict(state["method"])
    torch.set_rng_state(state["rng"])
    b.train_experience(stream[1])
    x, _ = seen_test(stream, 1)
    assert np.array_equal(a.predict(x).numpy(), b.predict(x).numpy())


def test_search_space_is_valid_and_bad_values_are_config_errors():
    cfg = compose_config("protocol=two_phase", "method=mos")
    dists = check_config(cfg)
    assert {"lr", "adapter_momentum", "reg", "ffn_num", "max_iter", "ca_storage"} <= set(dists)
    assert cfg["method"]["faithful_to_code"] is False
    for bad in ("method.ca_storage=full", "method.adapter_momentum=1.5", "method.max_iter=0"):
        bad_cfg = compose_config("method=mos", bad)
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            create_method(bad_cfg["method"], method_context(bad_cfg, num_classes=10))


def test_faithful_prototypes_see_the_adapters_dropout_as_upstream():
    method, stream = make("method.faithful_to_code=true", epochs=1)
    method.train_experience(stream[0])
    method.model.eval()
    for c in stream[0].new_class_range:
        with torch.no_grad(), method.adapters.using(method.originals[0]):
            clean = torch.cat([method.model.backbone(x) for x in class_batches(stream[0].train, c, 50, "cpu")]).mean(0)
        gap = float((method.prototypes[c] - clean).abs().max())
        assert 0 < gap < 0.1 * float(clean.abs().max())  # dropout noise: not the eval-mode mean, but close to it
