"""The classification backbones the encoder U-Nets start from: ResNet18, ResNet34 and VGG11.

Each is written out here (torchvision cannot be installed beside the pinned torch) with torchvision's
own module names, so that its ImageNet checkpoint loads key for key (`carvana.models.pretrained`):
ResNet's `conv1`, `bn1`, `layer1`..`layer4` of BasicBlocks (`conv1`, `bn1`, `conv2`, `bn2`,
`downsample.0`, `downsample.1`), VGG11's `features.N` at torchvision's indices (no batch norm). The
classifiers (`fc.`, `classifier.`) are left out: a U-Net has no use for them.

An encoder's forward gives its feature maps shallow to deep, each half the size of the one before,
the deepest at 1/32 of the input; `channels` lists theirs.
"""
from __future__ import annotations

import torch
from torch import nn

RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}  # BasicBlocks in layer1..layer4
RESNET_WIDTHS = (64, 128, 256, 512)
# torchvision's vgg11 `features`: 3x3 convs (channels) and 2x2 max-pools ("M"), indices counted with
# each conv's ReLU.
VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm around a shortcut: identity, or a strided 1x1 conv + batch norm
    (`downsample`) where the block halves the map or changes its channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        reshapes = stride != 1 or in_channels != out_channels
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels),
        ) if reshapes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNetEncoder(nn.Module):
    """ResNet18 or ResNet34 without its classifier: the stem (7x7 conv, stride 2) at 1/2, then
    layer1..layer4 at 1/4..1/32 (the stem's max-pool before layer1)."""

    classifier_prefix = "fc."

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, channels) in enumerate(zip(RESNET_BLOCKS[arch], RESNET_WIDTHS)):
            stride = 1 if index == 0 else 2
            layer = nn.Sequential(*(BasicBlock(in_channels if b == 0 else channels, channels, stride if b == 0 else 1)
                                    for b in range(blocks)))
            self.add_module(f"layer{index + 1}", layer)
            in_channels = channels
        self.channels = (64, *RESNET_WIDTHS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.relu(self.bn1(self.conv1(x)))]
        x = self.maxpool(features[0])
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


class VGG11Encoder(nn.Module):
    """VGG11's five conv stages (at 1/1..1/16, each map taken before its max-pool) and the last pool's
    output at 1/32: the encoder of TernausNet11."""

    classifier_prefix = "classifier."
    arch = "vgg11"

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = int(item)
        self.features = nn.Sequential(*layers)
        self.channels = (64, 128, 256, 512, 512, 512)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                features.append(x)  # a stage's map, before its pool halves it
            x = layer(x)
        return [*features, x]
