"""The config layer: typed schemas, the shared training keys, per-benchmark method values."""

from __future__ import annotations

import pytest
from conftest import compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from fluxbench.methods.base import CONF_DIR
from fluxbench.methods.registry import method_config

SHARED = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "training" / "default.yaml"))


@pytest.mark.parametrize("name", ["finetune", "joint", "ewc", "lwf", "replay", "migu", "hft"])
def test_the_shared_training_keys_come_from_one_partial_config(name):
    text = (CONF_DIR / "method" / f"{name}.yaml").read_text()
    assert "training@_here_: default" in text
    composed = method_config(name)
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"))
    for key, value in SHARED.items():
        assert composed[key] == own.get(key, value)  # the method's own value where it has one, else the shared one
    assert composed == compose_config(f"method={name}")["method"]  # what `fluxbench methods` shows is what runs


def test_avalanche_baselines_keep_their_own_schedule_over_the_shared_one():
    assert method_config("ewc")["scheduler"] == "constant" and SHARED["scheduler"] == "cosine"


def test_per_benchmark_method_values_come_from_config_files_and_overrides_still_win():
    assert compose_config("method=mos")["method"]["lr"] == 0.03  # the paper's CIFAR-100 value
    on_imagenet_r = compose_config("method=mos", "benchmark=imagenet_r")["method"]
    assert (on_imagenet_r["lr"], on_imagenet_r["epochs"], on_imagenet_r["batch_size"]) == (0.05, 10, 16)
    assert compose_config("method=mos", "benchmark=imagenet_r", "method.lr=0.2")["method"]["lr"] == 0.2
    assert compose_config("method=lae", "benchmark=imagenet_r")["method"]["num_freeze_epochs"] == 30


@pytest.mark.parametrize(("override", "message"), [
    ("seed=1.5", "could not be converted to Integer"),
    ("stream.classes_per_exp=two", "could not be converted to Integer"),
    ("stream.scenarioo=B0-Inc2", "scenarioo"),
    ("tracking.experimnt=x", "experimnt"),
    ("protocol.num_seedz=2", "num_seedz"),
    ("protocol=two_phase protocol.n_trials=1.5", "could not be converted to Integer"),
])
def test_a_wrong_key_or_type_fails_when_the_config_is_composed(override, message):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(*override.split())
    assert message in str(err.value) + str(err.value.__cause__)


def test_steplr_decays_by_lr_decay_at_the_papers_milestone_fractions():
    import torch

    from fluxbench.methods.registry import validate_hyperparameters
    from fluxbench.methods.training import make_scheduler, steplr_milestones

    assert steplr_milestones(35, 2) == [14, 28] and steplr_milestones(35, 3) == [10, 20, 30]  # 2/5, 4/5; 2/7..6/7
    assert steplr_milestones(90, 4) == [20, 40, 60, 80]  # 2/9 .. 8/9
    hp = validate_hyperparameters(compose_config("method=finetune", "method.epochs=7", "method.scheduler=steplr",
                                                 "method.lr_decay=0.5", "method.milestones=3")["method"])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=hp.lr)
    sched, lrs = make_scheduler(opt, hp), []
    for _ in range(hp.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025, 0.00125])  # milestones at 2, 4, 6


def test_the_papers_search_budget_is_a_named_preset_and_its_grid_has_the_decay_and_milestones():
    cfg = compose_config("protocol=two_phase_gtep", "method=mos")
    assert cfg["protocol"]["name"] == "two_phase"
    assert (cfg["protocol"]["n_trials"], cfg["protocol"]["tuning_seeds"], cfg["protocol"]["num_seeds"]) == (30, 5, 5)
    space = cfg["method"]["search_space"]
    assert space["lr_decay"] == {"choices": [0.1, 0.3, 0.5]} and space["milestones"] == {"choices": [2, 3, 4]}


def test_a_decay_out_of_range_is_one_line():
    from fluxbench.errors import ConfigError
    from fluxbench.methods.registry import validate_hyperparameters

    with pytest.raises(ConfigError, match=r"^method.lr_decay must be in \(0, 1\]; got 1.5$"):
        validate_hyperparameters(compose_config("method=finetune", "method.lr_decay=1.5")["method"])


def test_mos_and_lae_get_raw_pixels_on_vit_b16_by_default_and_other_methods_keep_the_normalisation():
    for method in ("mos", "lae"):
        for backbone in ("vit_b16_in21k", "vit_b16_in21k_orig"):
            node = compose_config(f"method={method}", f"backbone={backbone}")["backbone"]
            assert node["mean"] is None and node["std"] is None
    assert compose_config("method=finetune", "backbone=vit_b16_in21k")["backbone"]["mean"] == [0.5, 0.5, 0.5]
    kept = compose_config("method=mos", "backbone=vit_b16_in21k", "backbone.mean=[0.5,0.5,0.5]")["backbone"]
    assert kept["mean"] == [0.5, 0.5, 0.5]  # the command line still wins
    assert compose_config("backbone=vit_b16_in21k_orig")["backbone"]["model"] == "vit_base_patch16_224.orig_in21k"


def test_imagenet_c_uses_every_released_image_unless_a_subset_is_asked_for():
    node = compose_config("protocol=online_tta", "benchmark=imagenet_c", "method=tent")["benchmark"]["evaluation"]
    assert node["max_per_class"] is None and node["ids_file"] is None  # all 50,000 images per domain


def test_plain_method_names_resolve_to_the_image_text_protocols_own_methods():
    from fluxbench.protocols import with_protocol_defaults

    cpt = with_protocol_defaults(["-m", "protocol=continual_pretraining", "method=finetune,lora,ema_merge"])
    assert "method=cpt_finetune,cpt_lora,ema_merge" in cpt and "backbone=tiny_clip" in cpt
    assert "method=clip_lora" in with_protocol_defaults(["protocol=mtil", "method=lora"])
    # the class-incremental protocols keep the names as typed
    assert with_protocol_defaults(["protocol=conventional", "method=finetune"]) == [
        "protocol=conventional", "method=finetune"]
