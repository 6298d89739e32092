"""The two LeNet networks of Deep Compression's MNIST experiments (Han et al., ICLR 2016, Table 2-3).

* :class:`LeNet300100` -- fully connected 784-300-100-10 (LeCun et al. 1998), 266,610 parameters.
* :class:`LeNet5` -- the Caffe variant the paper used (``examples/mnist/lenet_train_test.prototxt``):
  conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500, ReLU, fc 10; 431,080 parameters.  As in
  Caffe there is no non-linearity after the convolutions, only after ``fc1`` (Caffe's ``ip1``).

Both are plain ``nn.Module`` s without data-dependent control flow, so ``torch.fx.symbolic_trace``
works on them.  Submodule names follow the paper's layer naming (``fc1`` = ip1, ...).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import nn

__all__ = ["LeNet300100", "LeNet5", "MODELS", "build_model"]


class LeNet300100(nn.Module):
    """Fully connected LeNet-300-100.

    Layers: ``flatten`` -> ``fc1`` Linear(in_features, 300) -> ReLU -> ``fc2`` Linear(300, 100) -> ReLU
    -> ``fc3`` Linear(100, num_classes).  266,610 parameters for the defaults (784 inputs, 10 classes).

    Input: float tensor ``(N, *)`` whose trailing dimensions multiply to ``in_features`` (e.g.
    ``(N, 1, 28, 28)``; ``(N, 1, 8, 8)`` with ``in_features=64``).  Output: logits ``(N, num_classes)``.
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 variant used by Deep Compression (431,080 parameters for 28x28 input).

    Layers: ``conv1`` Conv2d(in_channels, 20, 5) -> ``pool1`` MaxPool 2 -> ``conv2`` Conv2d(20, 50, 5)
    -> ``pool2`` MaxPool 2 -> ``flatten`` -> ``fc1`` Linear(800, 500) -> ReLU -> ``fc2``
    Linear(500, num_classes).  No padding, no ReLU after the convolutions (as in Caffe).

    Input: float tensor ``(N, in_channels, 28, 28)``; the 800 = 50*4*4 features of ``fc1`` fix the
    input size at 28x28 (smaller inputs fail: 8x8 gives an empty feature map after ``conv2``).
    Output: logits ``(N, num_classes)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.flatten(x)
        x = self.relu1(self.fc1(x))
        return self.fc2(x)


def _build_lenet300100(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    n = 1
    for d in input_shape:
        n *= int(d)
    return LeNet300100(in_features=n, num_classes=num_classes)


def _build_lenet5(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"lenet-5 expects input_shape (C, H, W), got {tuple(input_shape)}")
    c, h, w = (int(d) for d in input_shape)
    if (h, w) != (28, 28):
        raise ValueError(
            f"lenet-5 (Caffe variant, fc1 = Linear(800, 500)) needs 28x28 input, got {h}x{w}; "
            "use lenet-300-100 for other sizes (e.g. the 8x8 digits dataset)"
        )
    return LeNet5(in_channels=c, num_classes=num_classes)


#: Model builders by name: ``MODELS[name](input_shape, num_classes) -> nn.Module``.
MODELS: Dict[str, Callable[[Sequence[int], int], nn.Module]] = {
    "lenet-300-100": _build_lenet300100,
    "lenet-5": _build_lenet5,
}


def build_model(name: str, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """Instantiate a registered model for per-example ``input_shape`` ``(C, H, W)``.

    Raises
    ------
    ValueError
        unknown ``name`` (message lists :data:`MODELS`), ``num_classes < 1``, or an input shape the
        architecture cannot take (``lenet-5`` needs ``(C, 28, 28)``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return MODELS[name](tuple(input_shape), num_classes)
