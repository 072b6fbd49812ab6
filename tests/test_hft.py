"""HFT: mask statistics per block, freeze integrity, per-task masks, the trainable fraction, behaviour
(specs/hft.md section 8)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import compose_config
from method_helpers import retention_on_two_tasks

from fluxbench.errors import ConfigError
from fluxbench.methods import create_method, training
from fluxbench.methods.half_selection import SplitQKV
from fluxbench.protocols.setup import build_stream, load_split, method_context, seed_everything


def hft_on_digits(*overrides: str):
    cfg = compose_config("method=hft", "method.epochs=1", *overrides)
    split = load_split(cfg, "evaluation")
    seed_everything(0)
    stream = build_stream(cfg, split, seed=0)
    return create_method(cfg["method"], method_context(cfg, num_classes=10)), stream


def frozen_per_block(method) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for cat, frozen in zip(method.categories, method.frozen.tolist()):
        block, group = cat.group.split(".")
        counts.setdefault(block, Counter())[group] += frozen
    return counts


@pytest.mark.parametrize("task", [0, 1, 2, 3, 4])
def test_every_block_freezes_2_of_4_attention_1_of_2_mlp_1_of_2_norm(task):
    method, _ = hft_on_digits()
    method.select(task)
    counts = frozen_per_block(method)
    assert len(counts) == 4
    assert all(c == Counter(attn=2, mlp=1, norm=1) for c in counts.values())
    assert 0.45 <= method.trainable_fraction() <= 0.55
    assert 0.45 <= method.trainable_fraction(blocks_only=True) <= 0.55
    assert set(method.cost()) == {"hft_trainable_fraction", "hft_trainable_fraction_blocks"}
    # head and embeddings stay trainable; the mask is inspectable by name
    assert method.model.head.weight.requires_grad and method.model.backbone.model.pos_embed.requires_grad
    assert sum(method.mask().values()) == 4 * 4


def test_the_split_qkv_computes_the_fused_output():
    method, stream = hft_on_digits()
    qkv = method.model.backbone.model.blocks[0].attn.qkv
    assert isinstance(qkv, SplitQKV)
    fused = torch.nn.Linear(64, 192)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([qkv.q.weight, qkv.k.weight, qkv.v.weight]))
        fused.bias.copy_(torch.cat([qkv.q.bias, qkv.k.bias, qkv.v.bias]))
    x = torch.randn(2, 17, 64)
    assert torch.allclose(qkv(x), fused(x), atol=1e-6)


def test_different_tasks_draw_different_masks_and_a_task_always_the_same():
    method, _ = hft_on_digits()
    masks = []
    for task in range(5):
        method.select(task)
        masks.append(method.frozen.clone())
    assert len({tuple(m.tolist()) for m in masks}) == 5
    method.select(2)
    assert torch.equal(method.frozen, masks[2])

    static, _ = hft_on_digits("method.reselect=static")
    static.select(0)
    first = static.frozen.clone()
    static.select(3)
    assert torch.equal(static.frozen, first)


def capture_optimizers(monkeypatch) -> list[torch.optim.Optimizer]:
    made, original = [], training.make_optimizer

    def spy(params, hp):
        made.append(original(params, hp))
        return made[-1]

    monkeypatch.setattr(training, "make_optimizer", spy)
    return made


def test_frozen_tensors_are_bit_identical_after_their_task_and_absent_from_the_optimiser(monkeypatch):
    method, stream = hft_on_digits()
    optimizers = capture_optimizers(monkeypatch)
    method.train_experience(stream[0])
    before = {id(p): p.detach().clone() for p in method.model.parameters()}
    method.train_experience(stream[1])
    opt = optimizers[-1]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    frozen = method.frozen_parameters()
    assert frozen
    for p in frozen:
        assert torch.equal(p, before[id(p)])
        assert id(p) not in in_opt and p not in opt.state
    trainable = [p for p in method.model.parameters() if id(p) not in {id(f) for f in frozen}]
    assert all(id(p) in in_opt for p in trainable)
    assert any(not torch.equal(p, before[id(p)]) for p in trainable)
    # fewer parameters in the optimiser: half the momentum buffers of full fine-tuning
    n_state = sum(s["momentum_buffer"].numel() for s in opt.state.values())
    assert n_state / sum(p.numel() for p in method.model.parameters()) == pytest.approx(
        method.trainable_fraction(), abs=1e-9)


def test_per_epoch_reselection_changes_the_mask_inside_a_task_and_frozen_tensors_stay_put(monkeypatch):
    method, stream = hft_on_digits("method.reselect=epoch", "method.epochs=2")
    masks, original = [], method.before_epoch

    def spy(exp, epoch):
        original(exp, epoch)
        masks.append((method.frozen.clone(), {id(p): p.detach().clone() for p in method.frozen_parameters()}))

    method.before_epoch = spy
    method.train_experience(stream[0])
    assert not torch.equal(masks[0][0], masks[1][0])
    frozen_now = {id(p): p for p in method.frozen_parameters()}
    assert all(torch.equal(frozen_now[k], v) for k, v in masks[1][1].items())  # frozen through epoch 2


def test_hyperparameters_are_validated_in_one_line():
    with pytest.raises(ConfigError, match=r"^method\.reselect must") as err:
        create_method(compose_config("method=hft", "method.reselect=daily")["method"], None)
    assert "\n" not in str(err.value)


def test_hft_forgets_less_of_the_first_task_than_finetune_at_the_same_steps():
    """Two tasks of 5 digits, the same steps, lr and optimiser: averaged over three seeds, HFT's backbone keeps
    task 1's features closer and classifies them better by nearest class mean (specs/hft.md 8.4).

    Measured past the head: in class-incremental accuracy both collapse on old classes (head bias), and
    task-aware accuracy through the head is not better for HFT at this scale.
    """
    seeds = (0, 1, 2)
    hft = [retention_on_two_tasks("hft", s) for s in seeds]
    finetune = [retention_on_two_tasks("finetune", s) for s in seeds]
    for key in ("cosine", "ncm"):
        assert mean_of(hft, key) > mean_of(finetune, key) + 0.02, key


def mean_of(runs: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)
