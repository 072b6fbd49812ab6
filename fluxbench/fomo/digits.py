"""The embedded FoMo-in-Flux default: scikit-learn's digits as a multimodal stream, offline.

FoMo-in-Flux streams concepts from many visually distinct sub-domains and measures retention on
domains never trained on (spec ``fomo_in_flux.md`` sections 1-3). This is that structure at toy
scale, written in the released layout (through :mod:`fluxbench.fomo.mini`), so the reader and
streams that read the real FiF read it too:

- adaptation sub-domains: the digits re-rendered (inverted, tinted) and corrupted by the batched
  corruption engine (Gaussian noise, defocus blur);
- evaluation-only sub-domains: the clean digits and two corruptions never trained on (pixelate,
  contrast);
- classes are the digit words, the PRIMER ``A photo of the number: "{}".`` is MNIST's in the
  release, and captions are templated (the manifest says so).

Images come from one digits pool (``evaluation`` by default), upsampled 8 -> 32 px (nearest) so
that the corruptions have room to act, and are the same digits in every sub-domain: what changes
between sub-domains is only the rendering. The tree is built once under the user cache, keyed by
a hash of this recipe.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.benchmarks.digits import read_digits
from fluxbench.cache import cache_dir, recipe_hash
from fluxbench.fomo.mini import MiniFif, MiniSource, build_mini_fif

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PRIMER = 'A photo of the number: "{}".'
SIZE = 32
SEVERITY = 3
RECIPE_VERSION = 1
# name -> (role, rendering, template): renderings are "clean", "inverted", "tinted" or a corruption name
SUBDOMAINS: dict[str, tuple[str, str, str]] = {
    "DIGITS_INVERTED": ("adapt", "inverted", "A white-on-black handwritten {}."),
    "DIGITS_TINTED": ("adapt", "tinted", "A handwritten {} in colour."),
    "DIGITS_NOISE": ("adapt", "gaussian_noise", "A noisy photo of a handwritten {}."),
    "DIGITS_BLUR": ("adapt", "defocus_blur", "A blurry photo of a handwritten {}."),
    "DIGITS_CLEAN": ("eval", "clean", "A handwritten {}."),
    "DIGITS_PIXELATE": ("eval", "pixelate", "A pixelated handwritten {}."),
    "DIGITS_CONTRAST": ("eval", "contrast", "A low-contrast handwritten {}."),
}


def _upsample(data: ImageDataset) -> ImageDataset:
    images = np.stack([np.asarray(Image.fromarray(x).resize((SIZE, SIZE), Image.Resampling.NEAREST))
                       for x in data.images])
    return ImageDataset(images, data.labels, data.ids, data.name, data.class_names)


def _tint(images: np.ndarray) -> np.ndarray:
    # a fixed warm colour per stroke: RGB planes scaled differently, background stays black
    return np.clip(images.astype(np.float32) * np.array([1.0, 0.55, 0.2]), 0, 255).astype(np.uint8)


def render(data: ImageDataset, rendering: str, seed: int) -> np.ndarray:
    """``(N, SIZE, SIZE, 3)`` uint8 images of ``data`` (already at SIZE) in one sub-domain's rendering."""
    if rendering == "clean":
        return np.asarray(data.images)
    if rendering == "inverted":
        return 255 - np.asarray(data.images)
    if rendering == "tinted":
        return _tint(np.asarray(data.images))
    from fluxbench.streams.corruptions import corrupt_dataset  # torch: only when a corruption is asked for

    return np.asarray(corrupt_dataset(data, rendering, SEVERITY, seed=seed, params="cifar").images)


def _write_folder(root: Path, parts: dict[str, ImageDataset], draw: Callable[[ImageDataset], np.ndarray]) -> None:
    for part, data in parts.items():
        for i, (image, label) in enumerate(zip(draw(data), data.labels)):
            path = root / part / DIGIT_WORDS[int(label)] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)


def recipe(pool: str, num_tasks: int, seed: int) -> dict:
    return {"version": RECIPE_VERSION, "pool": pool, "size": SIZE, "severity": SEVERITY, "tasks": num_tasks,
            "seed": seed, "subdomains": SUBDOMAINS}


def write_digits_fif(out_root: str | Path, pool: str = "evaluation", num_tasks: int = 4, seed: int = 0) -> MiniFif:
    """Write the digits FiF tree at ``out_root`` (new or empty); sub-domain images first go to a scratch folder."""
    out_root = Path(out_root)
    split = read_digits(Path("."), pool)
    parts = {"train": _upsample(split.train), "test": _upsample(split.test)}
    scratch = out_root.with_name(f".{out_root.name}.src.{uuid.uuid4().hex[:8]}")
    try:
        sources = []
        for index, (name, (role, rendering, template)) in enumerate(SUBDOMAINS.items()):
            _write_folder(scratch / name, parts, lambda data, r=rendering, k=index: render(data, r, seed + k))
            sources.append(MiniSource(name, scratch / name, role=role, primer=PRIMER, templates=(template,)))
        return build_mini_fif(sources, out_root, num_tasks=num_tasks, seed=seed, copy_images=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def digits_fif(pool: str = "evaluation", num_tasks: int = 4, seed: int = 0) -> MiniFif:
    """The digits FiF tree under the user cache, built on first use (offline) and reused after."""
    root = cache_dir("fomo") / f"digits-{recipe_hash(recipe(pool, num_tasks, seed))}"
    stream = root / "stream_construction" / f"mini_random_{seed}.json"
    if not (root / "manifest.json").is_file():
        staged = root.with_name(f".{root.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        write_digits_fif(staged, pool, num_tasks, seed)
        try:
            os.replace(staged, root)  # another process may have won the race: its tree is the same
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    return MiniFif(root, stream, root / "manifest.json")
