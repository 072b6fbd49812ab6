"""PEFT modules on timm ViTs and open_clip towers: zero init, merge, counts, prefix maths, the handle API."""

from __future__ import annotations

import copy

import open_clip
import pytest
import timm
import torch
from torch import nn

from fluxbench.errors import ConfigError
from fluxbench.peft import attach, average, ema_
from fluxbench.peft.prefix import Prefix, prefix_attention

SMALL_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=16),
    text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2),
)
ALL_LINEARS = ["q", "k", "v", "proj", "fc1", "fc2"]


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                              depth=3, num_heads=4, num_classes=0, qkv_bias=True)
    return model.eval()


def small_clip() -> nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", **SMALL_CLIP).eval()


@pytest.fixture(scope="module")
def vit_b() -> nn.Module:
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)


class Runner:
    """Calls one tower of one model on a fixed input, so tests run alike on every tower."""

    def __init__(self, family: str, tower: str) -> None:
        self.tower = tower
        self.model = small_vit() if family == "timm" else small_clip()
        gen = torch.Generator().manual_seed(1)
        self.images = torch.rand(2, 3, 32, 32, generator=gen)
        self.tokens = torch.randint(1, 400, (2, 16), generator=gen)

    def __call__(self) -> torch.Tensor:
        with torch.no_grad():
            if self.tower == "text":
                return self.model.encode_text(self.tokens)
            return self.model.encode_image(self.images) if hasattr(self.model, "encode_image") else self.model(
                self.images)


TOWERS = [("timm", "visual"), ("open_clip", "visual"), ("open_clip", "text")]
ZERO_START = [
    ("adapter", {}),
    ("adapter", dict(position="attn", input="normed", act="gelu", scale=None, bottleneck=5)),
    ("adapter", dict(position="attn", input="residual")),
    ("lora", dict(targets=ALL_LINEARS, rank=4)),
    ("lora", dict(targets=["k", "v"], rank=5, scale=None)),
]


@pytest.mark.parametrize("family,tower", TOWERS)
@pytest.mark.parametrize("kind,cfg", ZERO_START)
def test_fresh_adapter_or_lora_leaves_outputs_unchanged(family, tower, kind, cfg):
    run = Runner(family, tower)
    before = run()
    handle = attach(run.model, kind, tower=tower, **cfg)
    assert handle.num_parameters() > 0
    # 1e-5: open_clip's attention rebuilt with explicit projections sums in another order (float32 rounding)
    torch.testing.assert_close(run(), before, rtol=0, atol=1e-5)
    handle.detach()
    torch.testing.assert_close(run(), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family,tower", TOWERS)
def test_merged_lora_matches_unmerged_and_detach_restores(family, tower):
    run = Runner(family, tower)
    base = run()
    handle = attach(run.model, "lora", tower=tower, targets=ALL_LINEARS, rank=4, gate="normal")
    with torch.no_grad():
        for param in handle.parameters():
            param.normal_(std=0.2)
    unmerged = run()
    assert (unmerged - base).abs().max() > 1e-2  # the update does something
    handle.merge()
    torch.testing.assert_close(run(), unmerged, rtol=1e-4, atol=1e-5)
    handle.unmerge()
    torch.testing.assert_close(run(), unmerged, rtol=1e-4, atol=1e-5)
    handle.detach()
    torch.testing.assert_close(run(), base, rtol=1e-4, atol=1e-5)


def test_merge_then_detach_keeps_the_update_in_the_weights():
    """CoDyRA's step: fold a task's LoRA into the backbone, then start a fresh one."""
    run = Runner("timm", "visual")
    handle = attach(run.model, "lora", targets=["q", "v"], rank=2)
    with torch.no_grad():
        for param in handle.parameters():
            param.normal_(std=0.2)
    adapted = run()
    handle.merge()
    with pytest.raises(ConfigError, match="unmerge"):
        handle.load_state(handle.state())
    handle.detach()
    assert type(run.model.blocks[0].attn.qkv) is nn.Linear
    torch.testing.assert_close(run(), adapted, rtol=1e-4, atol=1e-5)
    attach(run.model, "lora", targets=["q", "v"], rank=2)
    torch.testing.assert_close(run(), adapted, rtol=1e-4, atol=1e-5)


def test_lora_targets_single_thirds_of_fused_qkv():
    run = Runner("timm", "visual")
    handle = attach(run.model, "lora", blocks=[0], targets=["k"], rank=2)
    with torch.no_grad():
        for param in handle.parameters():
            param.normal_()
    x = torch.randn(1, 5, 64)
    qkv = run.model.blocks[0].attn.qkv
    with torch.no_grad():
        delta = qkv(x) - qkv.wrapped(x)
    assert delta[..., :64].abs().max() == 0 and delta[..., 128:].abs().max() == 0
    assert delta[..., 64:128].abs().max() > 0


def test_vit_b_trainable_counts_equal_the_analytic_ones(vit_b):
    base = sum(p.numel() for p in vit_b.parameters())
    cases = [
        # MOS: 16-dim adapter beside the MLP, all 12 blocks: 768*16+16 + 16*768+768 = 25,360 per block
        (dict(kind="adapter", bottleneck=16), 12 * 25_360),
        # LAE adapter: 5 hidden units beside attention, learnable scale, first 5 blocks
        (dict(kind="adapter", bottleneck=5, position="attn", input="normed", act="gelu", scale=None, blocks=5),
         42_270),
        # LAE LoRA: rank 5 on the K and V thirds of qkv, one learnable scalar each, first 5 blocks
        (dict(kind="lora", targets=["k", "v"], rank=5, scale=None, blocks=5), 76_810),
        # LAE prefix: 10 key + 10 value tokens, two learnable scalars, first 5 blocks
        (dict(kind="prefix", length=10, key_scale=None, value_scale=None, compensatory=True, blocks=5), 76_810),
        # plain LoRA r=8 on q and v of every block: 12 * 2 * 8 * (768 + 768)
        (dict(kind="lora", targets=["q", "v"], rank=8), 294_912),
        # VPT-deep, 10 tokens per block
        (dict(kind="prompt", length=10), 12 * 10 * 768),
    ]
    for cfg, expected in cases:
        cfg = dict(cfg)
        handle = attach(vit_b, cfg.pop("kind"), **cfg)
        assert handle.num_parameters() == expected, cfg
        assert sum(p.numel() for p in vit_b.parameters()) == base + expected
        handle.detach()
        assert sum(p.numel() for p in vit_b.parameters()) == base


def test_vit_b_adapter_forward_backward_trains_only_the_adapter(vit_b):
    vit_b.requires_grad_(False)
    handle = attach(vit_b, "adapter", blocks=[10, 11], bottleneck=16)
    out = vit_b(torch.rand(1, 3, 224, 224))
    out.pow(2).mean().backward()
    grads = {name: p.grad for name, p in handle.named_parameters()}
    assert grads["visual.11.mlp.up.weight"].abs().sum() > 0
    assert all(p.grad is None for p in vit_b.parameters() if not any(p is q for q in handle.parameters()))
    handle.detach()
    vit_b.requires_grad_(True)


def test_codyra_lora_count_on_clip_vit_b16():
    """LoRA r=16 with gates on q, k, v, out, fc1, fc2 of both CLIP ViT-B/16 towers: about 4.43M parameters."""
    clip = open_clip.create_model("ViT-B-16")
    visual = attach(clip, "lora", tower="visual", targets=ALL_LINEARS, rank=16, gate="normal")
    text = attach(clip, "lora", tower="text", targets=ALL_LINEARS, rank=16, gate="normal")
    per_visual_block = 4 * (16 * (768 + 768) + 16) + 2 * (16 * (768 + 3072) + 16)
    per_text_block = 4 * (16 * (512 + 512) + 16) + 2 * (16 * (512 + 2048) + 16)
    assert visual.num_parameters() == 12 * per_visual_block == 2_655_360
    assert text.num_parameters() == 12 * per_text_block == 1_770_624
    assert visual.num_parameters() + text.num_parameters() == 4_425_984


def test_timm_prefix_equals_attention_over_extra_tokens():
    """Prefix keys/values projected from tokens z give the same rows as attention over [z; x]."""
    block = small_vit().blocks[0]
    z, x = torch.randn(1, 3, 64), torch.randn(2, 5, 64)
    handle = attach(_single_block_vit(block), "prefix", length=3)
    prefix = next(iter(handle.modules.values()))
    with torch.no_grad():
        kv = block.attn.qkv(z)[0]
        prefix.keys.copy_(kv[:, 64:128])
        prefix.values.copy_(kv[:, 128:])
        got = block.attn(x)
        want = block.attn.wrapped(torch.cat([z.expand(2, -1, -1), x], 1))[:, 3:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_open_clip_prefix_equals_attention_over_extra_tokens_with_causal_mask():
    clip = small_clip()
    block = clip.transformer.resblocks[0]
    mha = block.attn
    z, x = torch.randn(1, 3, 32), torch.randn(2, 5, 32)
    handle = attach(clip, "prefix", tower="text", blocks=[0], length=3)
    prefix = next(iter(handle.modules.values()))
    causal = torch.full((5, 5), float("-inf")).triu(1)
    with torch.no_grad():
        w, b = mha.in_proj_weight, mha.in_proj_bias
        prefix.keys.copy_(z[0] @ w[32:64].t() + b[32:64])
        prefix.values.copy_(z[0] @ w[64:].t() + b[64:])
        got = block.attn(x, x, x, need_weights=False, attn_mask=causal)[0]
        full = torch.zeros(8, 8)
        full[3:, 3:] = causal
        full[:3, 3:] = float("-inf")
        zx = torch.cat([z.expand(2, -1, -1), x], 1)
        want = mha(zx, zx, zx, need_weights=False, attn_mask=full)[0][:, 3:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compensatory_prefix_normalises_the_prefix_block():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    v = torch.zeros(2, 4, 6, 8)
    for compensatory in (True, False):
        prefix = Prefix(32, length=3, compensatory=compensatory)
        with torch.no_grad():
            prefix.values.fill_(1.0)
        out = prefix_attention(q, k, v, prefix, 8 ** -0.5)
        if compensatory:  # prefix weights sum to 1 per query, original keys keep their raw softmax weights
            torch.testing.assert_close(out, torch.ones_like(out))
        else:
            assert 0 < out.min() and out.max() < 1


@pytest.mark.parametrize("mode,sites", [("deep", 3), ("shallow", 1)])
def test_prompts_change_features_and_keep_token_count(mode, sites):
    run = Runner("timm", "visual")
    base = run()
    tokens = run.model.forward_features(run.images).shape
    handle = attach(run.model, "prompt", mode=mode, length=4)
    assert len(handle.modules) == sites
    assert run.model.forward_features(run.images).shape == tokens
    assert (run() - base).abs().max() > 1e-3
    with handle.disabled():
        torch.testing.assert_close(run(), base, rtol=0, atol=0)
    handle.detach()
    assert all(type(b).__name__ == "Block" for b in run.model.blocks)


def test_prompts_refuse_a_masked_text_tower():
    run = Runner("open_clip", "text")
    attach(run.model, "prompt", tower="text", blocks=[0])
    with pytest.raises(ConfigError, match="attention mask"):
        run()


def test_state_snapshots_using_average_and_ema():
    run = Runner("timm", "visual")
    handle = attach(run.model, "adapter", bottleneck=4)
    snaps = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in handle.parameters():
                param.normal_()
        snaps.append(handle.state())
    out_b = run()
    handle.load_state(snaps[0])
    out_a = run()
    assert (out_a - out_b).abs().max() > 1e-3
    with handle.using(snaps[1]):
        torch.testing.assert_close(run(), out_b)
    torch.testing.assert_close(run(), out_a)  # the current values came back
    mean = average(snaps)
    name = "visual.0.mlp.up.weight"
    torch.testing.assert_close(mean[name], (snaps[0][name] + snaps[1][name]) / 2)
    # MOS merge: theta <- 0.9 theta + 0.1 mean(snapshots)
    before = handle.state()
    ema_(handle, mean, decay=0.9)
    torch.testing.assert_close(handle.state()[name], 0.9 * before[name] + 0.1 * mean[name], rtol=0, atol=1e-6)
    # LAE offline expert: an EMA of a snapshot towards the live handle
    offline = copy.deepcopy(snaps[0])
    ema_(offline, handle, decay=0.9999)
    torch.testing.assert_close(offline[name], 0.9999 * snaps[0][name] + 0.0001 * handle.state()[name])
    with pytest.raises(ConfigError, match="does not match"):
        handle.load_state({name: mean[name]})


def test_stacked_modules_detach_in_any_order():
    run = Runner("timm", "visual")
    base = run()
    first = attach(run.model, "adapter", bottleneck=4)
    second = attach(run.model, "adapter", bottleneck=4)
    lora = attach(run.model, "lora", targets=["q", "v", "fc1"], rank=2)
    prefix = attach(run.model, "prefix", length=2)
    for handle in (first, second, lora):
        with torch.no_grad():
            for param in handle.parameters():
                param.normal_(std=0.1)
    with prefix.disabled():
        combined = run()
    first.detach()
    with torch.no_grad():
        for param in second.parameters():
            param.zero_()
        for param in lora.parameters():
            param.zero_()
    with prefix.disabled():
        torch.testing.assert_close(run(), base, rtol=0, atol=1e-6)
    assert (combined - base).abs().max() > 1e-3
    prefix.detach()
    lora.detach()
    second.detach()
    torch.testing.assert_close(run(), base, rtol=0, atol=1e-6)
    block = run.model.blocks[0]
    assert type(block.mlp).__name__ == "Mlp" and isinstance(block.norm2, nn.LayerNorm)
    assert type(block.attn).__name__ == "Attention" and type(block.attn.qkv) is nn.Linear


def test_set_scale_and_learnable_scales():
    run = Runner("timm", "visual")
    handle = attach(run.model, "lora", targets=["v"], rank=2, scale=1.0)
    with torch.no_grad():
        for param in handle.parameters():
            param.normal_(std=0.1)
    base_scaled = run()
    handle.set_scale(0.0)
    with handle.disabled():
        off = run()
    torch.testing.assert_close(run(), off)
    handle.set_scale(1.0)
    torch.testing.assert_close(run(), base_scaled)
    learnable = attach(run.model, "adapter", scale=None)
    with pytest.raises(ConfigError, match="learnable"):
        learnable.set_scale(0.5)


def test_attach_errors_are_config_errors():
    run = Runner("timm", "visual")
    with pytest.raises(ConfigError, match="unknown PEFT kind"):
        attach(run.model, "ia3")
    with pytest.raises(ConfigError, match="unknown adapter option"):
        attach(run.model, "adapter", bottlenek=4)
    with pytest.raises(ConfigError, match="out of range"):
        attach(run.model, "adapter", blocks=[7])
    with pytest.raises(ConfigError, match="LoRA targets"):
        attach(run.model, "lora", targets=["qq"])
    with pytest.raises(ConfigError, match="only LoRA"):
        attach(run.model, "adapter").merge()
    with pytest.raises(ConfigError, match="no text tower"):
        attach(run.model, "adapter", tower="text")
    with pytest.raises(ConfigError, match="no transformer blocks"):
        attach(nn.Sequential(nn.Linear(2, 2)), "adapter")
    with pytest.raises(ConfigError, match="cannot attach"):
        attach(_single_block_vit(nn.Linear(2, 2)), "adapter")


def test_attach_to_a_feature_backbone_and_deepcopy():
    from fluxbench.backbones.base import FeatureBackbone

    model = small_vit()
    backbone = FeatureBackbone(model, model.num_features, None, None).eval()
    handle = attach(backbone, "lora", targets=["q", "v"], rank=2)
    assert set(handle.modules) == {f"visual.{i}.attn.qkv" for i in range(3)}
    with torch.no_grad():
        for param in handle.parameters():
            param.normal_(std=0.1)
    x = torch.rand(2, 3, 32, 32)
    teacher = copy.deepcopy(backbone)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), backbone(x))


def _single_block_vit(block: nn.Module) -> nn.Module:
    holder = nn.Module()
    holder.blocks = nn.Sequential(block)
    holder.num_prefix_tokens = 1
    return holder



@pytest.mark.parametrize("family", ["timm", "open_clip"])
def test_clone_with_gives_a_teacher_with_its_own_handle(family):
    """ViDA-style: low- and high-rank LoRA on qkv and proj, a mean-teacher copy, scales set per model."""
    run = Runner(family, "visual")
    low = attach(run.model, "lora", targets=["qkv", "proj"], rank=1, init_std=1.0)
    high = attach(run.model, "lora", targets=["qkv", "proj"], rank=4, init_std=1 / 16)
    with torch.no_grad():
        for param in [*low.parameters(), *high.parameters()]:
            param.normal_(std=0.1)
    student = run()
    teacher = Runner(family, "visual")
    teacher.model, teacher_low = low.clone_with(run.model)
    torch.testing.assert_close(teacher(), student)
    teacher_low.set_scale(0.0)  # the teacher's low-rank branch off, the student's on
    assert (teacher() - student).abs().max() > 1e-4
    torch.testing.assert_close(run(), student)
    old = teacher_low.state()
    with torch.no_grad():
        for param in low.parameters():
            param.add_(1.0)
    ema_(teacher_low, low, decay=0.75)
    for name, value in teacher_low.state().items():
        torch.testing.assert_close(value, 0.75 * old[name] + 0.25 * low.state()[name])
    teacher_low.detach()
    with torch.no_grad():
        for param in low.parameters():
            param.sub_(1.0)
    torch.testing.assert_close(run(), student)  # detaching the teacher's set left the student's in place
