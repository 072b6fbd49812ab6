"""CEMA: cloud-edge elastic model adaptation by selective entropy distillation.

Provenance: Chen, Niu, Wang, Xu, Song, Tan, "Towards Robust and Efficient Cloud-Edge Elastic Model
Adaptation via Selective Entropy Distillation", ICLR 2024 (arXiv 2402.17316); code
github.com/chenyaofo/CEMA (``codebase/core/tta/cema.py``, ``tbr.py``, ``criterion/distillation.py``,
``conf/cema.conf``). As there: the edge runs forward only (a shadow copy refreshed from the cloud
every ``sync_every`` batches from batch 10 on) and returns its logits as the prediction; it uploads
only samples with entropy below ``ent_high_margin * ln C`` (dynamic after ``warm_up_samples``),
above ``ent_low_margin * ln C`` (if set) and whose prediction has ``|cos(p, p_mean)| < d_margin``;
the cloud adapts the foundation model's norm affine parameters by weighted entropy, then distils it
into the edge model's norm affine parameters (weighted entropy + KL + pseudo-label CE) on each
uploaded batch of ``cloud_batch_size`` mixed with 3x as many replayed samples (once the buffer holds
256), or on 4x replayed samples when no batch was ready; BatchNorm uses TBR renormalisation.
What differs: samples are drawn from the replay buffer with torch's generator (the protocol seeds
it) instead of Python's ``random``; the buffer keeps inputs on the CPU in their own dtype.
``cost()`` reports the uploads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.methods.base import check_finite, check_range
from fluxbench.methods.registry import register_method
from fluxbench.methods.tbr import forget_statistics, set_bn_training, swap_in_tbr
from fluxbench.methods.tta_common import TestTimeMethod, configure_norm_adaptation, entropy

REPLAY_START = 256  # the buffer must hold this many samples before replay is used
SHADOW_START = 10  # the edge serves a shadow copy from this batch on


@dataclass
class CemaHparams:
    edge_lr: float  # s_tta_lr (SGD, momentum 0.9)
    foundation_lr: float  # t_tta_lr (SGD, momentum 0.9)
    ent_high_margin: float  # E_max0 / ln C
    ent_high_margin_coeff: float  # lambda of the dynamic threshold
    warm_up_samples: int | None  # samples before the dynamic threshold starts; null = static
    ent_low_margin: float | None  # E_min / ln C; null = off
    d_margin: float | None  # redundancy: cosine threshold to the mean prediction; null = off
    alpha: float  # weighted entropy
    beta: float  # weighted KL
    gamma: float  # weighted pseudo-label CE
    temperature: float
    cloud_batch_size: int
    replay_buffer_size: int
    sync_every: int  # K: the edge downloads the cloud's edge model every K batches
    tbr: bool
    teacher_outputs: bool  # predict with the foundation model instead of the edge (code option, off)
    edge_model: str  # which of the benchmark's source_models
    foundation_model: str

    def __post_init__(self) -> None:
        check_range("edge_lr", self.edge_lr, 0, 10)
        check_range("foundation_lr", self.foundation_lr, 0, 10)
        check_range("ent_high_margin", self.ent_high_margin, 0, low_open=True)
        check_range("ent_high_margin_coeff", self.ent_high_margin_coeff, 0, low_open=True)
        for name in ("alpha", "beta", "gamma"):
            check_range(name, getattr(self, name), 0)
        check_range("temperature", self.temperature, 0, low_open=True)
        check_range("cloud_batch_size", self.cloud_batch_size, 1)
        check_range("replay_buffer_size", self.replay_buffer_size, 0)
        check_range("sync_every", self.sync_every, 1)
        if self.ent_low_margin is not None:
            check_range("ent_low_margin", self.ent_low_margin, 0, self.ent_high_margin)
        if self.d_margin is not None:
            check_range("d_margin", self.d_margin, 0, low_open=True)
        if self.warm_up_samples is not None:
            check_range("warm_up_samples", self.warm_up_samples, 1)


def weights(ent: torch.Tensor, e_max: float) -> torch.Tensor:
    """EATA's sample weights ``1 / exp(H - E_max)`` (no gradient through them)."""
    return torch.exp(-(ent.detach() - e_max))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, e_max: float, alpha: float, beta: float,
                      gamma: float, temperature: float = 1.0) -> torch.Tensor:
    """``alpha * weighted entropy(student) + beta * w_t T^2 KL(teacher_T || student_T) + gamma * w_t CE(student,
    argmax teacher)``, with ``w_t`` from the teacher's entropy (``TTADistillationLoss``)."""
    ent = entropy(student)
    ent_loss = (ent * weights(ent, e_max)).mean()
    w_t = weights(entropy(teacher), e_max)
    kl = F.kl_div(F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1),
                  reduction="none").sum(1) * temperature**2
    ce = F.cross_entropy(student, teacher.argmax(1), reduction="none")
    return alpha * ent_loss + beta * (kl * w_t).mean() + gamma * (ce * w_t).mean()


@register_method("cema")
class CEMA(TestTimeMethod):
    Hparams = CemaHparams

    def __init__(self, hparams: CemaHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.e_max0 = hparams.ent_high_margin * math.log(ctx.num_classes)
        self.e_min = None if hparams.ent_low_margin is None else hparams.ent_low_margin * math.log(ctx.num_classes)
        self.edge = self.source_model(hparams.edge_model)
        self.foundation = self.source_model(hparams.foundation_model)
        edge_params = configure_norm_adaptation(self.edge)
        foundation_params = configure_norm_adaptation(self.foundation)
        if hparams.tbr:
            swap_in_tbr(self.edge)
            swap_in_tbr(self.foundation)
        self.edge_opt = torch.optim.SGD(edge_params, lr=hparams.edge_lr, momentum=0.9)
        self.foundation_opt = torch.optim.SGD(foundation_params, lr=hparams.foundation_lr, momentum=0.9)
        self.snapshot(self.edge, self.foundation, self.edge_opt, self.foundation_opt)
        self.uploads = self.seen = self.cloud_steps = self.replay_steps = 0
        self._clear_episode()

    def _clear_episode(self) -> None:
        """Everything besides the models that an episode accumulates."""
        self.iters = 0
        self.shadow: nn.Module | None = None
        self.queue: list[torch.Tensor] = []
        self.buffer: list[torch.Tensor] = []
        self.mean_probs: torch.Tensor | None = None
        self.ent_sum, self.ent_count, self.ent_warm = 0.0, 0, None

    def reset(self) -> None:
        """Back to the source models (upload counts keep adding up over the whole stream)."""
        forget_statistics(self.edge)
        forget_statistics(self.foundation)
        super().reset()
        self._clear_episode()

    # -- edge ---------------------------------------------------------------------------------
    def e_max(self) -> float:
        """The unreliable-sample threshold: static, or scaled by the running mean entropy after the warm-up."""
        if self.ent_warm is None:
            return self.e_max0
        return self.e_max0 * (self.ent_sum / self.ent_count / self.ent_warm) * self.hparams.ent_high_margin_coeff

    def deployed(self) -> nn.Module:
        """The model the edge runs: the cloud's edge model itself for the first batches, then the synced copy."""
        self.iters += 1
        if self.iters < SHADOW_START:
            return self.edge
        if self.iters == SHADOW_START or self.iters % self.hparams.sync_every == 0:
            self.shadow = copy.deepcopy(self.edge)
        return self.shadow

    @torch.no_grad()
    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """Indices of the samples worth uploading: reliable, informative, not redundant."""
        ent = entropy(logits.float())
        self.ent_sum += float(ent.sum())  # the running mean includes this batch, as the code's does
        self.ent_count += len(ent)
        if self.ent_warm is None and self.hparams.warm_up_samples is not None \
                and self.ent_count >= self.hparams.warm_up_samples:
            self.ent_warm = self.ent_sum / self.ent_count
        keep = ent < self.e_max()
        if self.e_min is not None:
            keep &= ent > self.e_min
        index = torch.nonzero(keep).flatten()
        if self.hparams.d_margin is None:
            return index
        probs = logits[index].float().softmax(1)
        if self.mean_probs is None:
            if len(index):
                self.mean_probs = probs.mean(0)
            return index
        similar = F.cosine_similarity(self.mean_probs[None], probs, dim=1).abs()
        index = index[similar < self.hparams.d_margin]
        if len(index):
            self.mean_probs = 0.9 * self.mean_probs + 0.1 * logits[index].float().softmax(1).mean(0)
        return index

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            model = self.deployed()
            set_bn_training(model, False)
            logits = model(x).float()
            index = self.select(logits)
        uploaded = x[index]
        self.seen += len(x)
        self.uploads += len(uploaded)
        self.queue.extend(uploaded.unbind(0))
        if self.hparams.replay_buffer_size:
            self.buffer.extend(s.cpu() for s in uploaded.unbind(0))
            del self.buffer[:-self.hparams.replay_buffer_size]
        self.cloud()
        if self.hparams.teacher_outputs:
            set_bn_training(self.foundation, False)
            with torch.no_grad():
                return self.foundation(x).float()
        return logits

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The deployed model's logits, as ``adapt`` returns them, without selecting or uploading anything."""
        if self.hparams.teacher_outputs:
            set_bn_training(self.foundation, False)
            return self.foundation(x).float()
        model = self.deployed()
        set_bn_training(model, False)
        return model(x).float()

    # -- cloud --------------------------------------------------------------------------------
    def cloud(self) -> None:
        bc = self.hparams.cloud_batch_size
        ran = False
        while len(self.queue) >= bc:
            ran = True
            batch = torch.stack(self.queue[:bc])
            del self.queue[:bc]
            self.adapt_foundation(batch)
            if len(self.buffer) >= REPLAY_START and self.hparams.replay_buffer_size:
                batch = torch.cat([batch, self.replay(3 * bc)])
            self.distil(batch)
        if not ran and len(self.buffer) > REPLAY_START and self.hparams.replay_buffer_size:
            self.replay_steps += 1
            self.distil(self.replay(4 * bc))

    def replay(self, k: int) -> torch.Tensor:
        pick = torch.randperm(len(self.buffer))[:k].tolist()
        return torch.stack([self.buffer[i] for i in pick]).to(self.device)

    @torch.enable_grad()
    def adapt_foundation(self, batch: torch.Tensor) -> None:
        set_bn_training(self.foundation, True)
        ent = entropy(self.foundation(batch).float())
        loss = (ent * weights(ent, self.e_max0)).mean()
        check_finite(loss, "CEMA foundation entropy")
        self.foundation_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.foundation_opt.step()

    @torch.enable_grad()
    def distil(self, batch: torch.Tensor) -> None:
        self.cloud_steps += 1
        set_bn_training(self.foundation, False)
        set_bn_training(self.edge, True)
        with torch.no_grad():
            teacher = self.foundation(batch).float()
        hp = self.hparams
        loss = distillation_loss(self.edge(batch).float(), teacher, self.e_max0, hp.alpha, hp.beta, hp.gamma,
                                 hp.temperature)
        check_finite(loss, "CEMA distillation")
        self.edge_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.edge_opt.step()

    def cost(self) -> dict[str, float]:
        return {"uploads": float(self.uploads), "upload_fraction": self.uploads / max(self.seen, 1),
                "samples_seen": float(self.seen), "cloud_steps": float(self.cloud_steps)}
