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
