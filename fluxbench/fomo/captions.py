"""Which text goes with an image (spec ``fomo_in_flux.md`` sections 2 and 9).

Training: the dataset's own caption (``default_caption``) when it exists, else a synthetic
merged caption (BLIP caption merged with the class name by an LLM), else the primed class
name. Where a record holds several candidates, training draws one at random and test takes
the first, as the release's ``DatasetScaffold.__getitem__`` does. The release draws with
numpy's global generator on every access; here the draw is a seeded generator passed in, so
a (seed, task, epoch) fixes every caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fluxbench.fomo.datasets_table import FifDataset
from fluxbench.fomo.info import InfoRecord


def candidates(record: InfoRecord, dataset: FifDataset) -> tuple[str, ...]:
    """The texts a record may be trained with, by the caption rule's order of preference."""
    if record.default_caption:
        return record.default_caption
    if record.synthetic_merged_caption:
        return record.synthetic_merged_caption
    if record.primer_caption:
        return (record.primer_caption,)
    if record.classname is None:
        return ()
    return (dataset.prime(record.classname),)


def training_caption(record: InfoRecord, dataset: FifDataset, rng: np.random.Generator) -> str:
    texts = candidates(record, dataset)
    if not texts:
        return ""
    return texts[0] if len(texts) == 1 else texts[int(rng.integers(len(texts)))]


def eval_caption(record: InfoRecord, dataset: FifDataset) -> str:
    texts = candidates(record, dataset)
    return texts[0] if texts else ""


def training_captions(records: Sequence[InfoRecord], dataset: FifDataset, seed: int | Sequence[int]) -> list[str]:
    """One training caption per record, drawn by ``np.random.default_rng(seed)`` in record order."""
    rng = np.random.default_rng(seed)
    return [training_caption(r, dataset, rng) for r in records]


def class_prompts(classnames: Sequence[str], dataset: FifDataset) -> list[str]:
    """The zero-shot classifier's texts: the PRIMER around each class name (one prompt per class)."""
    return [dataset.prime(c) for c in classnames]
