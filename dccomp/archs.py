"""Real architectures (random initialisation) for tests and benchmarks of whole-model lowering.

* :func:`resnet18` -- ResNet-18 (He et al., CVPR 2016), torchvision's module and parameter names (``conv1``,
  ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``), so torchvision state dicts load into it;
  ``width`` scales the channel counts (64 = the real network, 11.7 M parameters).
* :class:`TransformerClassifier` -- a BERT-style encoder (Devlin et al., 2019): token + position embeddings,
  pre-LayerNorm blocks of multi-head self-attention (separate ``q``/``k``/``v``/``o`` Linear layers) and a
  GELU MLP, mean pooling, a linear classifier.

Both are plain modules ``torch.fx`` and ``torch.export`` capture.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet18", "TransformerClassifier"]


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, residual add (1x1 conv-BN ``downsample`` when the
    shape changes), ReLU. Input/output ``(N, C, H, W)`` float32."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with :class:`BasicBlock` stages. Input ``(N, 3, H, W)`` float32, output logits ``(N, num_classes)``."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for i, (n, c) in enumerate(zip(layers, chans)):
            blocks = [BasicBlock(cin, c, 1 if i == 0 else 2)] + [BasicBlock(c, c) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: int = 64) -> ResNet:
    """ResNet-18 (stages of 2 basic blocks); ``width=64`` is the published network."""
    return ResNet((2, 2, 2, 2), num_classes, width)


class _EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class TransformerClassifier(nn.Module):
    """Encoder classifier. Input token ids ``(N, T)`` int64 (``T <= max_len``), output logits ``(N, num_classes)``."""

    def __init__(self, vocab: int = 1000, d: int = 64, heads: int = 4, layers: int = 2, ff: int = 128,
                 max_len: int = 64, num_classes: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.Sequential(*(_EncoderBlock(d, heads, ff) for _ in range(layers)))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.blocks(self.tok(ids) + self.pos(pos))
        return self.head(self.ln(x).mean(dim=1))
