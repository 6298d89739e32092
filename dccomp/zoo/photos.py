"""Offline ImageNet-style evaluation data: real photos shipped inside the scikit-image and scikit-learn wheels.

Nothing is downloaded. Each photo gives many views: a random square crop (side 35-100% of the short side,
random position, random horizontal flip), resized to ``size`` x ``size`` (bilinear, antialiased) and normalized
with the ImageNet mean/std (torchvision's constants). The photos are split by *photo*, not by view: views for
distillation (``split="train"``) never come from a photo used for evaluation (``split="eval"``).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["photo_views", "load_photos", "IMAGENET_MEAN", "IMAGENET_STD", "PHOTOS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: photo name -> split. scikit-image names are ``skimage.data`` functions; ``china``/``flower`` are scikit-learn's.
PHOTOS: dict[str, str] = {
    "chelsea": "eval", "coffee": "eval", "rocket": "eval", "china": "eval", "camera": "eval", "coins": "eval",
    "grass": "eval", "astronaut": "eval",
    "hubble_deep_field": "train", "immunohistochemistry": "train", "retina": "train", "flower": "train",
    "moon": "train", "gravel": "train", "brick": "train", "motorcycle_left": "train", "motorcycle_right": "train",
}


def _read(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    try:
        import skimage.data as skd
    except ImportError as e:
        raise ImportError("the offline photo set needs scikit-image: pip install scikit-image "
                          "(or pip install 'dccomp[zoo]')") from e
    if name.startswith("motorcycle_"):
        import os

        from skimage.io import imread

        return imread(os.path.join(os.path.dirname(skd.__file__), f"{name}.png"))
    return getattr(skd, name)()


def load_photos(split: str = "eval") -> dict[str, torch.Tensor]:
    """The photos of ``split`` (``"train"``, ``"eval"`` or ``"all"``) as float32 ``(3, H, W)`` tensors in [0, 1]
    (grayscale photos repeated over 3 channels, alpha dropped).

    Raises:
        ValueError: unknown split. ImportError: scikit-image is not installed.
    """
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
    out = {}
    for name, s in PHOTOS.items():
        if split != "all" and s != split:
            continue
        a = np.asarray(_read(name))
        a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else float(max(a.max(), 1)))
        t = torch.from_numpy(np.ascontiguousarray(a))
        t = t.unsqueeze(0).repeat(3, 1, 1) if t.dim() == 2 else t[..., :3].permute(2, 0, 1)
        out[name] = t.contiguous()
    return out


def photo_views(n: int, *, split: str = "eval", size: int = 224, seed: int = 0,
                min_scale: float = 0.35) -> torch.Tensor:
    """``n`` random views of the ``split`` photos, round-robin over photos.

    Args:
        n: number of views. size: output side in pixels. seed: the views depend only on it (and n, split).
        min_scale: smallest crop side as a fraction of the photo's short side.

    Returns:
        float32 tensor ``(n, 3, size, size)``, ImageNet-normalized.

    Raises:
        ValueError: ``n < 1``, ``size < 8`` or ``min_scale`` outside (0, 1].
    """
    if n < 1 or size < 8 or not 0 < min_scale <= 1:
        raise ValueError(f"need n >= 1, size >= 8, 0 < min_scale <= 1; got n={n}, size={size}, "
                         f"min_scale={min_scale}")
    photos = list(load_photos(split).values())
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[1:]
        side = int(min(h, w) * (min_scale + (1 - min_scale) * float(torch.rand((), generator=g))))
        y0 = int(torch.randint(0, h - side + 1, (), generator=g))
        x0 = int(torch.randint(0, w - side + 1, (), generator=g))
        crop = img[:, y0:y0 + side, x0:x0 + side]
        if bool(torch.rand((), generator=g) < 0.5):
            crop = crop.flip(-1)
        crop = torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False)[0]
        out[i] = (crop.clamp(0, 1) - mean) / std
    return out
