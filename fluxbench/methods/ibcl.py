"""IBCL: Imprecise Bayesian Continual Learning, zero-shot models for any trade-off between tasks.

Paper: Lu, Caprio, Eaton, Lee, "IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning"
(arXiv 2305.14782; TMLR version "...under Stability-Plasticity Trade-offs"). Upstream code: ``ibcl-anon/ibcl``
@ fe7787b (``fgcs_update.py``, ``zero_shot_model_locate.py``, ``models/models.py``). Spec: ``specs/ibcl.md``.

Per binary task, ``m = len(prior_stds)`` Bayesian heads (``model_size`` small / normal / large) on the frozen
backbone's features are fitted by variational inference, chain ``j``'s prior being its posterior of the previous
task (:mod:`.bayesian_head`: mean-field Gaussian VI in plain torch, the same objective and optimiser as Pyro's
``SVI`` with a mean-field guide and ``Trace_ELBO``). The posteriors enter a credal set with the sub-linear buffer
(:mod:`.credal_set`); a model for a preference is built from it without training.

Harness conventions (what differs from upstream):

- Features are extracted once per experience and cached in memory (not in checkpoints: they are recomputed,
  identically, after a resume). The backbone's own normalisation is used (upstream: ResNet-18 at 32x32).
- Every task must be binary (two classes per experience); label 1 is the task's second class in stream order
  (Split CIFAR-10's ``class - 2i``).
- ``predict`` (the class-incremental contract, with no task identity and no preference) uses the equal-weight
  preference over the tasks seen, at the HDR's centre (the combined mean, so ``predict`` draws no random numbers).
  IBCL itself needs the task: the task is guessed by the nearest class mean of the features (cosine, SimpleCIL's
  rule), which is not part of IBCL; the paper's task-aware numbers come from ``protocol=preference``, which calls
  :meth:`IBCL.preference_models` and :meth:`IBCL.task_accuracy` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fluxbench.errors import ConfigError
from fluxbench.methods.base import Method, check_choice, check_range, over_all_classes
from fluxbench.methods.bayesian_head import (
    HEAD_SIZES,
    GaussianPosterior,
    Params,
    fit_posterior,
    head_logits,
    head_shapes,
)
from fluxbench.methods.credal_set import HDR_MODES, SAMPLINGS, CredalSet, check_alpha, hdr, sample_models
from fluxbench.methods.registry import register_method
from fluxbench.streams.experience import Experience, iterate_batches

FEATURE_BATCH = 512  # batch size of the one-off feature extraction


@dataclass
class IBCLHparams:
    model_size: str
    prior_stds: list[float]
    lr: float
    epochs: int
    batch_size: int
    discard_threshold: float
    alpha: float
    hdr_mode: str
    sampling: str
    num_models_per_pref: int

    def __post_init__(self) -> None:
        check_choice("model_size", self.model_size, HEAD_SIZES)
        if not isinstance(self.prior_stds, Sequence) or isinstance(self.prior_stds, str) or not self.prior_stds:
            raise ConfigError(f"method.prior_stds must be a non-empty list of numbers > 0; got {self.prior_stds!r}")
        for std in self.prior_stds:
            check_range("prior_stds", std, 0, low_open=True)
        self.prior_stds = [float(s) for s in self.prior_stds]
        check_range("lr", self.lr, 0, 10, low_open=True)
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("discard_threshold", self.discard_threshold, 0)
        try:
            check_alpha(self.alpha)
        except ConfigError as err:
            raise ConfigError(f"method.{err}") from None
        check_choice("hdr_mode", self.hdr_mode, HDR_MODES)
        check_choice("sampling", self.sampling, SAMPLINGS)
        check_range("num_models_per_pref", self.num_models_per_pref, 1)


@register_method("ibcl")
class IBCL(Method):
    """See the module docstring. ``predict`` without a preference: the equal-weight preference over tasks seen."""

    Hparams = IBCLHparams

    def __init__(self, hparams: IBCLHparams, ctx) -> None:
        super().__init__(hparams, ctx)
        self.backbone = ctx.build_backbone().to(ctx.device).eval().requires_grad_(False)
        self.shapes = head_shapes(hparams.model_size, self.backbone.num_features)
        self.credal = CredalSet()
        self.first_class: list[int] = []  # stream label of each task's label-0 class
        self.register_buffer("class_means", torch.zeros(ctx.num_classes, self.backbone.num_features, device=ctx.device))
        self.models_trained = 0
        self.batch_updates = 0
        self._features: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # in memory only

    # -- features ------------------------------------------------------------------------------
    def task_features(self, exp: Experience, part: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        return binary_task_features(self.backbone, self._features, exp, part, self.device)

    # -- training: Algorithm 1 -------------------------------------------------------------------
    def priors(self) -> list[GaussianPosterior]:
        if self.credal.num_tasks == 0:
            return [GaussianPosterior.isotropic(self.shapes, s, self.device) for s in self.hparams.prior_stds]
        return [self.credal.buffer[k] for k in self.credal.slots[-1]]

    def train_experience(self, exp: Experience) -> None:
        feats, labels = self.task_features(exp, "train")
        hp = self.hparams
        posteriors = []
        for prior in self.priors():  # independent chains, each with its own optimiser, on the same data
            post, steps = fit_posterior(prior, lambda: iterate_batches(feats, labels, hp.batch_size), hp.epochs, hp.lr)
            posteriors.append(post)
            self.models_trained += 1
            self.batch_updates += steps
        self.credal.add_task(posteriors, hp.discard_threshold)
        self.first_class.append(exp.new_class_range.start)
        for c in (0, 1):
            self.class_means[exp.new_class_range.start + c] = feats[labels == c].mean(0)

    # -- zero-shot models: Algorithm 2 ---------------------------------------------------------
    def preference_models(self, pref: Sequence[float], num_models: int | None = None,
                          generator: torch.Generator | None = None) -> list[Params]:
        """Heads for preference ``pref`` over the tasks seen, sampled from the HDR of the combined posterior;
        no gradient step is taken."""
        lower, upper = hdr(self.credal.combine(pref), self.hparams.alpha, self.hparams.hdr_mode)
        return sample_models(lower, upper, num_models or self.hparams.num_models_per_pref, self.hparams.sampling,
                             generator)

    @torch.no_grad()
    def task_accuracy(self, model: Params, exp: Experience) -> float:
        """Accuracy of one head on ``exp``'s binary test task (prediction = round(sigmoid), as upstream)."""
        feats, labels = self.task_features(exp, "test")
        return float(((head_logits(model, feats) > 0).long() == labels).float().mean())

    def equal_weight_mean(self) -> Params:
        k = self.credal.num_tasks
        return self.credal.combine([1.0 / k] * k).mu

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x).float()
        k = self.credal.num_tasks
        if k == 0:
            return feats.new_zeros(len(x), self.ctx.num_classes)
        return task_guessed_scores(feats, head_logits(self.equal_weight_mean(), feats), self.class_means[: 2 * k],
                                   self.ctx.num_classes)

    def cost(self) -> dict[str, float]:
        return {"models_trained": float(self.models_trained), "batch_updates": float(self.batch_updates),
                "buffered_models": float(len(self.credal.buffer)), "reused_models": float(len(self.credal.reuse))}

    # -- resume: plain state as tensors / lists / numbers -----------------------------------------------
    def get_extra_state(self) -> dict:
        return {"credal": self.credal.state(), "first_class": list(self.first_class),
                "counts": [self.models_trained, self.batch_updates]}

    def set_extra_state(self, state: dict) -> None:
        self.credal = CredalSet.from_state(state["credal"], self.device)
        self.first_class = list(state["first_class"])
        self.models_trained, self.batch_updates = (int(v) for v in state["counts"])


def task_guessed_scores(feats: torch.Tensor, logits: torch.Tensor, class_means: torch.Tensor, num_classes: int
                        ) -> torch.Tensor:
    """Scores over all classes from one binary head: the task is guessed by the nearest class mean (cosine,
    SimpleCIL's rule; not part of IBCL), and only that task's two classes get the head's log-probabilities."""
    k = len(class_means) // 2
    within = torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], 1).repeat(1, k)  # task t: columns 2t, 2t+1
    cos = F.normalize(feats, dim=1) @ F.normalize(class_means, dim=1).T
    task = cos.view(len(feats), k, 2).amax(2).argmax(1)
    other = torch.arange(k, device=feats.device).repeat_interleave(2)[None] != task[:, None]
    return over_all_classes(within.masked_fill(other, float("-inf")), num_classes)


@torch.no_grad()
def binary_task_features(backbone: torch.nn.Module, cache: dict, exp: Experience, part: str,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of a part of ``exp`` and its 0/1 task labels, computed once per experience (in ``cache``,
    memory only) for IBCL and the preference-trained baselines alike."""
    key = (exp.index, part, exp.classes)
    if key not in cache:
        check_binary(exp)
        x, y = exp.uint8_tensors(part, device)
        feats = torch.cat([backbone(b) for b, _ in iterate_batches(x, y, FEATURE_BATCH, shuffle=False)])
        cache[key] = (feats.float(), y - exp.new_class_range.start)
    return cache[key]


def check_binary(exp: Experience) -> None:
    if len(exp.classes) != 2:
        raise ConfigError(f"method=ibcl needs binary tasks, but experience {exp.index} has {len(exp.classes)} classes; "
                          "use a stream of class pairs (benchmark=digits_pairs, or stream.classes_per_exp=2)")
