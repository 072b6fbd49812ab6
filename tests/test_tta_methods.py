"""Every test-time method on a short continual digits-C stream, and what defines each one (the specs' CPU checks)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from tta_helpers import build, run_method, tta_config

from fluxbench.errors import ConfigError
from fluxbench.methods import get_method, list_methods
from fluxbench.methods.cema import distillation_loss
from fluxbench.methods.tbr import TBRBatchNorm2d
from fluxbench.methods.tta_common import entropy, use_batch_statistics
from fluxbench.methods.vida import hka_scales
from fluxbench.protocols.tta_data import unlabeled_batches

TTA_METHODS = [name for name in list_methods() if get_method(name).kind == "tta"]


def first_batches(stream, n: int, index: int = 1, batch_size: int = 64) -> list[torch.Tensor]:
    """The first ``n`` unlabeled batches of experience ``index``."""
    batches = unlabeled_batches(stream[index].test, batch_size, "cpu")
    return [x for x, _, _ in (next(batches) for _ in range(n))]


def state(method: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the contract, for every registered test-time method ------------------------------------------------------
@pytest.mark.parametrize("name", TTA_METHODS)
def test_every_tta_method_adapts_online_and_resets_exactly(name):
    method, stream = build(tta_config(f"method={name}"))
    x0, x1, x2 = first_batches(stream, 3)
    initial = state(method)
    torch.manual_seed(1)
    first = method.adapt(x0)
    assert first.shape == (len(x0), 10) and first.dtype == torch.float32 and torch.isfinite(first).all()
    method.adapt(x1)
    method.adapt(x2)
    method.reset()
    assert same_state(state(method), initial), "reset() must restore the state the method was built with"
    torch.manual_seed(1)
    assert torch.equal(method.adapt(x0), first), "after reset() the method must behave as a fresh one"
    metrics, cost = run_method(name)
    assert set(metrics) >= {"mean_error", "error.shot_noise-5", "error.contrast-5"}
    assert metrics["mean_error"] < 0.9  # better than chance (10 classes) on every method
    assert all(math.isfinite(v) for v in cost.values())


# -- the claims on digits-C (continual) ---------------------------------------------------------------
def test_tent_and_vida_end_below_source():
    source = run_method("source")[0]["mean_error"]
    source_vit = run_method("source", "method.source_model=vit")[0]["mean_error"]
    tent = run_method("tent")[0]["mean_error"]
    vida = run_method("vida")[0]["mean_error"]
    assert source > 0.4 and source_vit > 0.4  # the shift is real: the source models fail on digits-C
    assert tent < source - 0.15
    assert vida < source_vit - 0.15  # against its own (ViT) source model
    assert vida < source - 0.05  # and against the reference row


def test_cema_uploads_fewer_than_half_and_ends_below_source():
    # 10 classes: EATA's CIFAR-10 redundancy margin (0.4) and the authors' E_min (0.02 ln C), see conf/method/cema.yaml
    metrics, cost = run_method("cema", "method.d_margin=0.4", "method.ent_low_margin=0.02")
    source = run_method("source")[0]["mean_error"]
    assert cost["samples_seen"] == 5 * 539
    assert 0.05 < cost["upload_fraction"] < 0.5
    assert cost["uploads"] == pytest.approx(cost["upload_fraction"] * cost["samples_seen"])
    assert metrics["mean_error"] < source - 0.05


# -- Tent (tent.md section 6) ----------------------------------------------------------------------------------
def test_tent_trains_only_norm_affine_parameters_with_batch_statistics():
    method, stream = build(tta_config("method=tent"))
    source = {k: v.clone() for k, v in method.model.state_dict().items()}
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    bn_names = {f"{m}.{p}" for m, mod in method.model.named_modules() if isinstance(mod, nn.BatchNorm2d)
                for p in ("weight", "bias")}
    assert trainable == bn_names
    assert all(m.running_mean is None for m in method.model.modules() if isinstance(m, nn.BatchNorm2d))
    for x in first_batches(stream, 2):
        method.adapt(x)
    changed = {k for k, v in method.model.state_dict().items() if not torch.equal(v, source[k])}
    assert changed and changed <= bn_names


def test_tent_predicts_before_updating_and_entropy_falls():
    method, stream = build(tta_config("method=tent", "method.optimizer=sgd", "method.lr=0.01"))
    x = first_batches(stream, 1)[0]
    before = copy.deepcopy(method.model)
    logits = method.adapt(x)
    assert torch.allclose(logits, before(x), atol=1e-6)  # the returned logits come from before the step
    entropies = [entropy(logits).mean().item()] + [entropy(method.adapt(x)).mean().item() for _ in range(4)]
    assert all(b < a for a, b in zip(entropies, entropies[1:]))
    bn = next(m for m in method.model.modules() if isinstance(m, nn.BatchNorm2d))
    h = torch.randn(8, bn.num_features, 4, 4)
    bn.eval()  # batch statistics even in eval mode
    manual = (h - h.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps)
    manual = manual * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(bn(h), manual, atol=1e-5)


def test_tent_episodic_gives_the_same_prediction_for_the_same_batch():
    method, stream = build(tta_config("method=tent", "method.episodic=true"))
    x, other = first_batches(stream, 2)
    first = method.adapt(x)
    method.adapt(other)
    assert torch.equal(method.adapt(x), first)


# -- ViDA (vida.md section 8) ----------------------------------------------------------------------------------
def test_vida_injection_is_an_identity_on_every_attention_linear():
    method, stream = build(tta_config("method=vida", "method.warmup=none"))  # before any warm-up
    depth = len(method.student.backbone.model.blocks)
    assert len(method.low.modules) == len(method.high.modules) == 2 * depth  # qkv and proj of every block
    dims = [(m.pairs[next(iter(m.pairs))].A.shape[1], m.out_features) for m in method.low.modules.values()]
    expected = sum((i + o) * (method.hparams.rank_low + method.hparams.rank_high) for i, o in dims)
    assert method.low.num_parameters() + method.high.num_parameters() == expected
    x = first_batches(stream, 1)[0]
    source = method.source_model("vit").eval()
    use_batch_statistics(source)  # as ViDA configures the conv stem's BatchNorm
    with torch.no_grad(), method.t_low.disabled(), method.t_high.disabled():
        plain = method.teacher(x)
    with torch.no_grad():
        assert torch.allclose(method.teacher(x), plain, atol=1e-6)  # zero up-projections: nothing changes
        assert torch.allclose(source(x), plain, atol=1e-5)


def test_vida_hka_rule_and_the_code_quirk():
    assert hka_scales(0.3, 0.2) == (pytest.approx(0.7), pytest.approx(1.3))
    assert hka_scales(0.1, 0.2) == (pytest.approx(1.1), pytest.approx(0.9))
    for quirk, high in ((False, 0.9), (True, 1.0)):
        method, _ = build(tta_config("method=vida", f"method.scale_low_rank_only={str(quirk).lower()}"))
        method.set_scales(*hka_scales(0.1, 0.2))
        for handle, value in ((method.low, 1.1), (method.t_low, 1.1), (method.high, high), (method.t_high, high)):
            scales = [p.scale for m in handle.modules.values() for p in m.pairs.values()]
            assert len(scales) == 8 and scales == pytest.approx([value] * 8)


def test_vida_teacher_is_a_two_rate_ema_of_the_student():
    method, stream = build(tta_config("method=vida", "method.ema=0.9", "method.ema_vida=0.5",
                                      "method.restore_prob=0.0", "method.num_augment=2"))
    teacher_before = {n: p.clone() for n, p in method.teacher.named_parameters()}
    method.adapt(first_batches(stream, 1)[0])
    student = dict(method.student.named_parameters())
    moved = 0
    for name, param in method.teacher.named_parameters():
        alpha = 0.5 if name in method.adapter_names else 0.9
        expected = alpha * teacher_before[name] + (1 - alpha) * student[name]
        assert torch.allclose(param, expected, atol=1e-6), name
        moved += not torch.equal(param, teacher_before[name])
    assert moved > 0 and any("pairs" in n for n in method.adapter_names)


def test_vida_stochastic_restore_all_or_nothing():
    x = None
    for prob, equal in ((1.0, True), (0.0, False)):
        method, stream = build(tta_config("method=vida", f"method.restore_prob={prob}", "method.num_augment=2",
                                          "method.lr=0.001", "method.vida_lr=0.001"))
        x = first_batches(stream, 1)[0] if x is None else x
        method.adapt(x)
        restored = all(torch.equal(p, method.source_state[n]) for n, p in method.student.named_parameters())
        assert restored is equal


# -- CEMA (cema.md section 8) ----------------------------------------------------------------------------------
def cema(*overrides: str):
    return build(tta_config("method=cema", *overrides))


def test_cema_uploads_only_reliable_informative_non_redundant_samples():
    method, _ = cema("method.d_margin=0.4", "method.ent_low_margin=0.02")
    e_max, e_min = 0.4 * math.log(10), 0.02 * math.log(10)
    confident = torch.full((4, 10), -8.0)
    confident[torch.arange(4), torch.tensor([0, 1, 2, 3])] = 8.0  # entropy ~ 0: low-informative
    unsure = torch.zeros(4, 10)  # entropy ln 10: unreliable
    mild = torch.full((4, 10), -2.0)
    mild[torch.arange(4), torch.tensor([0, 1, 2, 3])] = 2.0  # entropy in between
    logits = torch.cat([confident, unsure, mild])
    first = method.select(logits)  # the first batch sets the mean prediction and keeps all it passes
    assert first.tolist() == [8, 9, 10, 11]
    ent = entropy(logits)
    assert ((ent[first] < e_max) & (ent[first] > e_min)).all()
    same_class = torch.full((2, 10), -2.0)
    same_class[:, 0] = 2.0
    other = torch.full((2, 10), -2.0)
    other[:, 7] = 2.0
    mean_before = method.mean_probs.clone()
    second = torch.cat([same_class, other])
    kept = method.select(second)
    assert kept.tolist() == [2, 3]  # class 0 is what the edge already predicts; class 7 is new information
    cos = torch.nn.functional.cosine_similarity(mean_before[None], second.softmax(1))
    assert (cos[kept] < 0.4).all() and (cos[:2] >= 0.4).all()


def test_cema_threshold_is_static_until_a_warm_up_then_follows_the_mean_entropy():
    static, _ = cema()
    dynamic, _ = cema("method.warm_up_samples=4", "method.ent_high_margin_coeff=1.0")
    mild = torch.full((4, 10), -1.0)
    mild[:, 0] = 1.0
    sure = torch.full((4, 10), -3.0)
    sure[:, 0] = 3.0
    for method in (static, dynamic):
        method.select(mild)
    assert static.e_max() == dynamic.e_max() == pytest.approx(0.4 * math.log(10))  # warm-up mean = current mean
    for method in (static, dynamic):
        method.select(sure)
    ratio = (entropy(mild).sum() + entropy(sure).sum()) / 8 / entropy(mild).mean()
    assert static.e_max() == pytest.approx(0.4 * math.log(10))
    assert dynamic.e_max() == pytest.approx(0.4 * math.log(10) * float(ratio)) and float(ratio) < 1


def test_cema_upload_fraction_shrinks_with_the_entropy_threshold():
    fractions = [run_method("cema", f"method.ent_high_margin={m}", "method.d_margin=null",
                            "benchmark.corruptions.names=[defocus_blur]")[1]["upload_fraction"] for m in (0.4, 0.2)]
    assert fractions[1] < fractions[0]


def test_cema_edge_is_forward_only_and_only_norm_parameters_change():
    method, stream = cema("method.d_margin=null", "method.cloud_batch_size=16", "method.replay_buffer_size=300")
    edge0, found0 = state(method.edge), state(method.foundation)
    served, replayed_from = [], []
    deployed, replay = method.deployed, method.replay

    def spy_deployed():
        served.append(deployed())
        return served[-1]

    def spy_replay(k):
        replayed_from.append(len(method.buffer))
        return replay(k)

    method.deployed, method.replay = spy_deployed, spy_replay
    for x in first_batches(stream, 3, 1) + first_batches(stream, 3, 2) + first_batches(stream, 6, 3):
        method.adapt(x)
        assert len(method.buffer) <= 300
    assert method.cloud_steps > 0 and len(served) == 12
    assert replayed_from and min(replayed_from) >= 256  # replay only from a buffer of 256 samples
    shadow = served[-1]
    assert shadow is not method.edge and all(p.grad is None for p in shadow.parameters())
    assert any(isinstance(m, TBRBatchNorm2d) for m in method.edge.modules())
    for before, model in ((edge0, method.edge), (found0, method.foundation)):
        after = state(model)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed, "the cloud step must update the norm parameters"
        assert all(k.rsplit(".", 1)[-1] in ("weight", "bias") for k in changed)
        assert all(isinstance(model.get_submodule(k.rsplit(".", 1)[0]), nn.BatchNorm2d) for k in changed)


def test_cema_distillation_loss_matches_the_formula():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    e_max = 0.4 * math.log(3)
    p_s, p_t = student.softmax(1), teacher.softmax(1)
    h_s, h_t = -(p_s * p_s.log()).sum(1), -(p_t * p_t.log()).sum(1)
    w_s, w_t = np.exp(-(h_s.numpy() - e_max)), np.exp(-(h_t.numpy() - e_max))
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).numpy()
    ce = -p_s.log()[torch.arange(2), teacher.argmax(1)].numpy()
    expected = 3 * np.mean(h_s.numpy() * w_s) + 3 * np.mean(kl * w_t) + 1 * np.mean(ce * w_t)
    got = distillation_loss(student, teacher, e_max, 3.0, 3.0, 1.0, 1.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_tta_methods_refuse_a_benchmark_without_source_models():
    cfg = tta_config("method=tent")
    cfg["benchmark"].pop("source_models")
    with pytest.raises(ConfigError, match="needs a trained source model"):
        build(cfg)


def test_timm_source_models_come_with_their_trained_head(tmp_path):
    import timm
    from safetensors.torch import save_file

    from fluxbench.backbones.source_models import build_source_model
    from fluxbench.errors import DataError

    model = timm.create_model("test_resnet", num_classes=10)
    full, headless = tmp_path / "full.safetensors", tmp_path / "headless.safetensors"
    save_file(model.state_dict(), str(full))
    save_file({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, str(headless))
    spec = {"kind": "timm", "model": "test_resnet", "num_classes": 10}
    source = build_source_model({"default": {**spec, "weights": str(full)}})
    x = torch.rand(2, 3, 160, 160)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(source(x), model((x - 0.5) / 0.5), atol=1e-5)  # timm's own normalisation
    assert source.recipe["kind"] == "timm" and len(source.recipe["recipe_hash"]) == 16
    with pytest.raises(DataError, match="no fc.\\* classifier"):
        build_source_model({"default": {**spec, "weights": str(headless)}})
    with pytest.raises(ConfigError, match="has no 'vit'; defined: default"):
        build_source_model({"default": spec}, "vit")


def test_a_freshly_trained_source_model_is_handed_over_without_gradients():
    """On a cold cache the source model was just trained: its last batch's .grad must not reach Tent's first step."""
    from fluxbench.backbones.source_models import _train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x, y = torch.rand(40, 3, 8, 8), torch.randint(0, 4, (40,))
    _train(model, x, y, {"epochs": 1, "batch_size": 16, "lr": 1e-2, "seed": 0}, "cpu")
    assert all(p.grad is None for p in model.parameters())


def test_tent_sgd_is_nesterov_as_the_official_code():
    method, _ = build(tta_config("method=tent", "method.optimizer=sgd", "method.lr=0.00025"))
    (group,) = method.optimizer.param_groups
    assert isinstance(method.optimizer, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.9
    assert group["dampening"] == 0


def test_bn_adapt_uses_test_batch_statistics_and_tent_gains_a_little_more():
    """BN adapt is most of Tent's gain on digits-C (0.127 vs 0.125 mean error); Tent must still be below it."""
    source = run_method("source")[0]["mean_error"]
    bn_adapt, cost = run_method("bn_adapt")
    tent = run_method("tent")[0]["mean_error"]
    assert bn_adapt["mean_error"] < source - 0.3  # the statistics alone undo most of the shift
    assert tent < bn_adapt["mean_error"]
    method, _ = build(tta_config("method=bn_adapt"))
    assert not any(p.requires_grad for p in method.parameters())  # nothing is trained
