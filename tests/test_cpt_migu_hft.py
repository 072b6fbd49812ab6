"""cpt_migu and cpt_hft in protocol=continual_pretraining on the embedded digits FiF (specs migu.md and hft.md,
sections 5): MIGU's masks on both towers from task 2 only; HFT's frozen half untouched, out of the optimiser,
re-drawn per task; both resume exactly."""

from __future__ import annotations

import torch
from test_continual_pretraining import config

from fluxbench.fomo.benchmark import open_benchmark
from fluxbench.methods import create_method
from fluxbench.methods.cpt_hft import ContinualHalfFineTuning
from fluxbench.methods.half_selection import split_in_projection
from fluxbench.protocols import continual_pretraining as cp
from fluxbench.protocols.cpt import step as cpt_step


def loop_and_method(name: str, *extra: str):
    cfg = config(name, *extra)
    opts, deviation = cp.options(cfg, bool(cfg["benchmark"].get("pretraining_pool")))
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    loop = cp.PretrainingLoop(cfg, bench, opts, cp.measure_budget(cfg, bench, opts), deviation)
    torch.manual_seed(0)
    stream = loop.stream(0)
    ctx = loop.context(stream)
    return loop, stream, create_method(cfg["method"], ctx), ctx


def test_migu_masks_both_towers_from_the_second_task_and_never_on_the_first():
    loop, stream, method, ctx = loop_and_method("cpt_migu")
    seen: dict[int, list[dict[str, torch.Tensor]]] = {}
    original = type(method).before_optimizer_step

    def spy():
        original(method)
        seen.setdefault(loop_task[0], []).append(dict(method.last_kept))

    method.before_optimizer_step = spy
    partial, loop_task = loop.begin(stream), [0]
    for i in range(loop.num_experiences()):
        loop_task[0] = i
        loop.experience(method, stream, i, partial, ctx.device)
    assert all(not kept for kept in seen[1])  # task 1: plain fine-tuning
    for kept in seen[2]:
        for tower in ("model.transformer.resblocks", "text.transformer.resblocks"):
            for part in ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"):
                keep = kept[f"{tower}.0.{part}"]
                assert 0 < keep.float().mean() < 0.4  # about the top 30 % rows keep their gradient
    in_proj = method.model.text.transformer.resblocks[0].attn.in_proj_weight
    assert in_proj.grad is not None
    assert torch.equal((in_proj.grad != 0).any(1), seen[2][-1]["text.transformer.resblocks.0.attn.in_proj"])


def test_hft_split_attention_is_the_same_function():
    loop, stream, method, ctx = loop_and_method("cpt_finetune")
    x = torch.randn(2, 5, 96)
    attn = method.model.model.transformer.resblocks[0].attn
    before = attn(x, x, x, need_weights=False)[0]
    assert torch.equal(split_in_projection(attn)(x, x, x, need_weights=False)[0], before)


def test_hft_frozen_half_is_bit_identical_after_its_task_and_absent_from_the_optimiser(monkeypatch):
    loop, stream, method, ctx = loop_and_method("cpt_hft")
    assert isinstance(method, ContinualHalfFineTuning)
    masks, opts = [], []
    real = cpt_step.optimizer_for
    monkeypatch.setattr(cpt_step, "optimizer_for", lambda m: opts.append(real(m)) or opts[-1])
    partial = loop.begin(stream)
    loop.experience(method, stream, 0, partial, ctx.device)
    for i in (1, 2):
        method.select(i - 1)  # the mask task i - 1 will draw, to snapshot its frozen tensors first
        frozen = [(p, p.detach().clone()) for p in method.frozen_parameters()]
        trainable = [(p, p.detach().clone()) for p in method.model.parameters() if p.requires_grad]
        out = loop.experience(method, stream, i, partial, ctx.device)
        masks.append(method.mask())
        assert 0.45 <= out["step.hft_trainable_fraction_blocks"] <= 0.55
        assert frozen and all(torch.equal(p, v) for p, v in frozen)
        assert any(not torch.equal(p, v) for p, v in trainable)
        in_opt = {id(p) for g in opts[-1].param_groups for p in g["params"]} | {id(p) for p in opts[-1].state}
        assert not in_opt & {id(p) for p, _ in frozen}
    assert masks[0] != masks[1]  # a seed per task
    assert set(masks[0]) == {c.name for c in method.categories}
