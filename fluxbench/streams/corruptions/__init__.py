"""The corruption engine: the 15 ImageNet-C corruptions and the 4 held-out ones, batched, in PyTorch, on CPU or GPU.

Ported from the generators of the released data, hendrycks/robustness
``ImageNet-C/create_c/make_imagenet_c.py`` and ``make_cifar_c.py`` (Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR
2019), with ``imagecorruptions`` 1.1.2 (bethgelab) where it removed ImageMagick. Both
parameter tables are here (``params="imagenet"`` / ``"cifar"``). No OpenCV, scikit-image,
ImageMagick or per-image PIL calls: every corruption is a function of a batch tensor and a
``torch.Generator``. What differs from the originals is listed in each family's module
(motion/snow kernels, glass-blur shuffling, JPEG in torch, frost textures, spatter's OpenCV steps).

``CORRUPTIONS`` is the standard 15 (the default stream); ``HELD_OUT_CORRUPTIONS`` the four released
beside them for hyperparameter selection (speckle_noise, gaussian_blur, spatter, saturate), which no
default stream uses.

Use::

    from fluxbench.streams.corruptions import corrupt, corrupt_dataset, list_corruptions
    y = corrupt(x, "fog", severity=3, seed=0, params="cifar")     # (B, C, H, W) in [0, 1]
    shifted = corrupt_dataset(digits_test, "snow", 5, seed=1, params="cifar")  # uint8 ImageDataset

A new corruption is one function registered with ``@register_corruption("name")``.
"""

from fluxbench.streams.corruptions import blur, digital, frost, jpeg, noise, spatter, weather  # noqa: F401  (register)
from fluxbench.streams.corruptions.apply import (
    chunk_seed,
    corrupt,
    corrupt_dataset,
    corrupt_pixels,
    to_float,
    to_uint8,
)
from fluxbench.streams.corruptions.frost import FROST_FILES, FROST_SOURCE
from fluxbench.streams.corruptions.params import PARAM_SETS
from fluxbench.streams.corruptions.registry import (
    CORRUPTIONS,
    HELD_OUT_CORRUPTIONS,
    get_corruption,
    list_corruptions,
    register_corruption,
    register_pixel_path,
)

__all__ = [
    "CORRUPTIONS", "FROST_FILES", "FROST_SOURCE", "HELD_OUT_CORRUPTIONS", "PARAM_SETS", "chunk_seed", "corrupt",
    "corrupt_dataset", "corrupt_pixels", "get_corruption", "list_corruptions", "register_corruption",
    "register_pixel_path", "to_float", "to_uint8",
]
