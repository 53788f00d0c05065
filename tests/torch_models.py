"""PyTorch implementations of every family of the reference zoo (the test oracle), NCHW.

Written from the reference code's semantics (mdistiller @ a08d46f, SDD's CUB
module replacements), not from kd_jax: module names and nesting give state_dict keys exactly
as in tests/data/torch_state_dicts/<name>.txt (test_convert.py asserts it), and `forward`
returns `(logits, feats)` with feats = {"feats": [...], "preact_feats": [...] (where the
reference has them), "pooled_feat": (B, C)}, as the reference models do.

Reference behaviour reproduced on purpose, because it changes the returned features:
  * ImageNet ResNet: the stem keeps `stem = x` and then runs nn.ReLU(inplace=True) on x,
    so the stored stem feature is overwritten by its activation (preact_feats[0] >= 0).
    Written here with the same aliasing (`torch.relu_` on the stored tensor).
  * ImageNet ResNet blocks apply the previous block's ReLU at their start (F.relu, not in
    place) and return the residual sum un-activated.
  * WRN: block2.layer.0.bn1, block3.layer.0.bn1 and the head bn1 are called a second time
    to build preact_feats (in train mode their running statistics update twice).
  * VGG: preact_feats[0] is the activated block0 output.
Head pools are `avgpool` module attributes with the reference's windows (AvgPool(8),
AvgPool(4), AvgPool(2, ceil_mode), AvgPool(7, stride 1), adaptive where the reference is),
so that the CUB builder can replace them as SDD does.

Families: CIFAR ResNet (resnet8 ... resnet110, x4), CIFAR ResNet18/34/50 (resnetv2,
"shortcut" keys), WRN, VGG-BN, ShuffleV1, ShuffleV2, MobileNetV2 (width 0.5), ImageNet
ResNet18/34/50 (torchvision keys), ImageNet MobileNetV1, and the CUB-200 variants
(`create_cub`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from flax import nnx
import torch.nn.functional as F


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1,
             groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout)


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle: (N, g*c, H, W) -> view (N, g, c, H, W) -> swap g, c -> flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def run_stages(stages, x):
    """Runs stages of blocks returning (out, preact): (out, [x, stage outs], [x, stage preacts])."""
    feats, preacts = [x], [x]
    for stage in stages:
        for block in stage:
            x, pre = block(x)
        feats.append(x)
        preacts.append(pre)
    return x, feats, preacts


# --- CIFAR ResNet (resnet8 ... resnet110, resnet8x4, resnet32x4; mdistiller cifar/resnet.py) ---

class CifarBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = _conv_bn(3, widths[0], 3)
        cin = widths[0]
        for i, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [CifarBasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                      for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preacts = run_stages((self.layer1, self.layer2, self.layer3), x)
        pooled = self.avgpool(x).flatten(1)
        return self.fc(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


# --- CIFAR ResNet18/34/50 (mdistiller cifar/resnetv2.py: "shortcut" keys, head "linear") ---

class V2BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        # An empty Sequential is the identity and has no state_dict keys, as in the reference.
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(*_conv_bn(cin, planes, 1, stride))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        preact = out + self.shortcut(x)
        return F.relu(preact), preact


class V2Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = 4 * planes
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)  # stride on the 3x3
        self.conv3, self.bn3 = _conv_bn(planes, cout, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class CifarResNetV2(nn.Module):
    def __init__(self, block, counts: tuple[int, int, int, int], num_classes: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 64, 3)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride if j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preacts = run_stages((self.layer1, self.layer2, self.layer3, self.layer4), x)
        pooled = self.avgpool(x).flatten(1)
        return self.linear(pooled), {"feats": feats, "preact_feats": preacts,
                                     "pooled_feat": pooled}


# --- Wide ResNet (pre-activation blocks) ---

class WRNBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        if not self.equal:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return (x if self.equal else self.convShortcut(a)) + y


class _WRNStage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[WRNBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, num_classes: int):
        super().__init__()
        n = (depth - 4) // 6
        w = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = _WRNStage(n, w[0], w[1], 1)
        self.block2 = _WRNStage(n, w[1], w[2], 2)
        self.block3 = _WRNStage(n, w[2], w[3], 2)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x):
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = F.avg_pool2d(F.relu(self.bn1(f3)), 8).flatten(1)
        # The reference's pre-activation features: the next BN applied to each stage output.
        pre = [f0, self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)]
        feats = {"feats": [f0, f1, f2, f3], "preact_feats": pre, "pooled_feat": pooled}
        return self.fc(pooled), feats


# --- VGG with BatchNorm (blocks end with BN; the ReLU is applied outside) ---

VGG_CFG = {"vgg8": (1, 1, 1, 1, 1), "vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2),
           "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


class VGG(nn.Module):
    def __init__(self, counts: tuple[int, ...], num_classes: int):
        super().__init__()
        cin = 3
        for b, (count, width) in enumerate(zip(counts, (64, 128, 256, 512, 512))):
            layers: list[nn.Module] = []
            for _ in range(count):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                cin = width
            setattr(self, f"block{b}", nn.Sequential(*layers[:-1]))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        h = x.shape[2]
        feats, preacts = [], []
        for b in range(5):
            x = getattr(self, f"block{b}")(x)
            preacts.append(F.relu(x) if b == 0 else x)  # the reference's f0 is post-ReLU
            x = F.relu(x)
            feats.append(x)
            if b < 3 or (b == 3 and h == 64):
                x = F.max_pool2d(x, 2, 2)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(pooled), {"feats": feats, "preact_feats": preacts,
                                         "pooled_feat": pooled}


# --- ShuffleNetV1 (groups 3) ---

class ShuffleV1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        g1 = 1 if cin == 24 else groups
        self.g1, self.stride = g1, stride
        self.conv1, self.bn1 = _conv_bn(cin, mid, 1, groups=g1)
        self.conv2, self.bn2 = _conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3, self.bn3 = _conv_bn(mid, cout, 1, groups=groups)

    def forward(self, x):
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            pre = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)  # count_include_pad=True
        else:
            pre = out + x
        return F.relu(pre), pre


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 24, 1)
        cin = 24
        for i, (w, n) in enumerate(zip(widths, units)):
            blocks = []
            for j in range(n):
                # The first unit's branch is concatenated with the pooled input: w - cin wide.
                blocks.append(ShuffleV1Unit(cin, w - cin if j == 0 else w, 2 if j == 0 else 1,
                                            groups))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(4)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preacts = run_stages((self.layer1, self.layer2, self.layer3), x)
        pooled = self.avgpool(x).flatten(1)
        return self.linear(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


# --- ShuffleNetV2 (net size 1) ---

class ShuffleV2Basic(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.conv1, self.bn1 = _conv_bn(h, h, 1)
        self.conv2, self.bn2 = _conv_bn(h, h, 3, groups=h)
        self.conv3, self.bn3 = _conv_bn(h, h, 1)

    def forward(self, x):
        h = x.shape[1] // 2
        x1, x2 = x[:, :h], x[:, h:]
        z = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
        return _shuffle(torch.cat([x1, F.relu(z)], 1), 2), torch.cat([x1, z], 1)


class ShuffleV2Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _conv_bn(cin, cin, 3, 2, groups=cin)
        self.conv2, self.bn2 = _conv_bn(cin, mid, 1)
        self.conv3, self.bn3 = _conv_bn(cin, mid, 1)
        self.conv4, self.bn4 = _conv_bn(mid, mid, 3, 2, groups=mid)
        self.conv5, self.bn5 = _conv_bn(mid, mid, 1)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        out = _shuffle(torch.cat([left, right], 1), 2)
        return out, out


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, widths=(116, 232, 464, 1024), units=(3, 7, 3)):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 24, 1)
        cin = 24
        for i, (w, n) in enumerate(zip(widths[:3], units)):
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(ShuffleV2Down(cin, w), *[ShuffleV2Basic(w) for _ in range(n)]))
            cin = w
        self.conv2, self.bn2 = _conv_bn(widths[2], widths[3], 1)
        self.avgpool = nn.AvgPool2d(4)  # the reference's F.avg_pool2d(out, 4)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preacts = run_stages((self.layer1, self.layer2, self.layer3), x)
        x = F.relu(self.bn2(self.conv2(x)))
        pooled = self.avgpool(x).flatten(1)
        return self.linear(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


# --- MobileNetV2 ("mobile_half": expansion 6, width 0.5) ---

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hid = cin * t
        self.use_res = stride == 1 and cin == cout
        # Indices 0..7: conv, BN, ReLU, dwconv, BN, ReLU, conv, BN (keys conv.{0,1,3,4,6,7}).
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU(),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
            nn.ReLU(),
            nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int, width: float = 0.5, t_expand: int = 6):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin),
                                   nn.ReLU())
        blocks = []
        for t, c, n, s in self.SETTING:
            t = t_expand if t != 1 else 1
            cout = int(c * width)
            units = []
            for j in range(n):
                units.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
            blocks.append(nn.Sequential(*units))
        self.blocks = nn.ModuleList(blocks)
        self.conv2 = nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280),
                                   nn.ReLU())
        self.avgpool = nn.AvgPool2d(32 // 16, ceil_mode=True)  # input_size // (32 // 2), 32x32
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.conv1(x)
        feats = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in (1, 2, 4, 6):
                feats.append(x)
        x = self.conv2(x)
        pooled = self.avgpool(x).flatten(1)
        return self.classifier(pooled), {"feats": feats, "pooled_feat": pooled}


# --- ImageNet ResNet18/34/50 (mdistiller imagenet/resnet.py; torchvision keys) ---

class ImageNetBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(*_conv_bn(cin, planes, 1, stride))

    def forward(self, x):
        # The previous block's ReLU runs here (out of place: the caller's tensor, a stored
        # feature, stays a pre-activation), and the block returns its sum un-activated.
        x = F.relu(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return out + (x if self.downsample is None else self.downsample(x))


class ImageNetBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = 4 * planes
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)  # v1.5: stride on the 3x3
        self.conv3, self.bn3 = _conv_bn(planes, cout, 1)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        x = F.relu(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + (x if self.downsample is None else self.downsample(x))


class ImageNetResNet(nn.Module):
    def __init__(self, block, counts: tuple[int, int, int, int], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride if j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(7, stride=1)  # the 7x7 map of a 224x224 input
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        stem = x                # an alias, as in the reference ...
        x = torch.relu_(x)      # ... whose in-place ReLU therefore activates `stem` as well
        x = F.max_pool2d(x, 3, 2, 1)
        pre = [stem]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            pre.append(x)
        pooled = self.avgpool(F.relu(x)).flatten(1)
        return self.fc(pooled), {"feats": [F.relu(p) for p in pre], "preact_feats": pre,
                                 "pooled_feat": pooled}


# --- ImageNet MobileNetV1 (mdistiller imagenet/mobilenetv1.py) ---

def _mbv1_conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _mbv1_conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                         nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    # (output width, stride) of the depthwise-separable units model.1 .. model.13.
    UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + (
        (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        units, cin = [_mbv1_conv_bn(3, 32, 2)], 32
        for cout, stride in self.UNITS:
            units.append(_mbv1_conv_dw(cin, cout, stride))
            cin = cout
        units.append(nn.AvgPool2d(7))  # model.14, on the 7x7 map of a 224x224 input
        self.model = nn.Sequential(*units)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        # Features are the outputs of units 3, 5, 11, 13 without their final (in-place) ReLU;
        # the next unit gets an out-of-place ReLU of them, so the features stay pre-activation.
        m = self.model
        feat1 = m[3][:-1](m[0:3](x))
        feat2 = m[5][:-1](m[4:5](F.relu(feat1)))
        feat3 = m[11][:-1](m[6:11](F.relu(feat2)))
        feat4 = m[13][:-1](m[12:13](F.relu(feat3)))
        pooled = m[14](F.relu(feat4)).flatten(1)
        pre = [feat1, feat2, feat3, feat4]
        return self.fc(pooled), {"feats": [F.relu(p) for p in pre], "preact_feats": pre,
                                 "pooled_feat": pooled}


# --- Registry of the test oracles, by kd_jax.models name ---

CIFAR_RESNETS = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44,
                 "resnet56": 56, "resnet110": 110}


def create(name: str, num_classes: int = 100, image_size: int | None = None) -> nn.Module:
    """The PyTorch model `name` (a kd_jax.models registry name) with num_classes outputs.

    image_size: for the ImageNet models, an input size other than 224 (a multiple of 32):
    their fixed head pools (AvgPool(7) on the 7x7 map) become the same global pool on the
    (image_size / 32)^2 map. CUB names go to `create_cub`.
    """
    if name.startswith("cub_"):
        return create_cub(name, num_classes, image_size or 224)
    if name in CIFAR_RESNETS:
        return CifarResNet(CIFAR_RESNETS[name], (16, 16, 32, 64), num_classes)
    if name in ("resnet8x4", "resnet32x4"):
        return CifarResNet(8 if name == "resnet8x4" else 32, (32, 64, 128, 256), num_classes)
    if name == "ResNet18":
        return CifarResNetV2(V2BasicBlock, (2, 2, 2, 2), num_classes)
    if name == "ResNet34":
        return CifarResNetV2(V2BasicBlock, (3, 4, 6, 3), num_classes)
    if name == "ResNet50":
        return CifarResNetV2(V2Bottleneck, (3, 4, 6, 3), num_classes)
    if name.startswith("wrn_"):
        _, depth, k = name.split("_")
        return WideResNet(int(depth), int(k), num_classes)
    if name in VGG_CFG:
        return VGG(VGG_CFG[name], num_classes)
    if name == "ShuffleV1":
        return ShuffleNetV1(num_classes)
    if name == "ShuffleV2":
        return ShuffleNetV2(num_classes)
    if name == "MobileNetV2":
        return MobileNetV2(num_classes)
    imagenet = {"imagenet_ResNet18": (ImageNetBasicBlock, (2, 2, 2, 2)),
                "imagenet_ResNet34": (ImageNetBasicBlock, (3, 4, 6, 3)),
                "imagenet_ResNet50": (ImageNetBottleneck, (3, 4, 6, 3))}
    if name in imagenet or name == "imagenet_MobileNetV1":
        model = (MobileNetV1(num_classes) if name == "imagenet_MobileNetV1"
                 else ImageNetResNet(*imagenet[name], num_classes))
        if image_size not in (None, 224):
            window = image_size // 32
            pool = nn.AvgPool2d(window) if name == "imagenet_MobileNetV1" else nn.AvgPool2d(
                window, stride=1)
            if name == "imagenet_MobileNetV1":
                model.model[14] = pool
            else:
                model.avgpool = pool
        return model
    raise ValueError(f"no PyTorch test model for {name!r}")


# --- CUB-200 variants: SDD's modify_{teacher,student}_model_for_cub200, applied in place ---

CUB_NAMES = ("cub_resnet8x4", "cub_resnet32x4", "cub_ResNet50", "cub_ShuffleV1", "cub_ShuffleV2",
             "cub_MobileNetV2", "cub_vgg8", "cub_vgg13")


def create_cub(name: str, num_classes: int = 200, image_size: int = 224) -> nn.Module:
    """The CIFAR model built with num_classes, then modified as SDD does for CUB-200.

    resnet x4: conv1 -> 7x7/2 (3 -> 32), avgpool -> AvgPool(28), new fc. ResNet50: conv1 ->
    7x7/2 (3 -> 64), new linear (the pool is adaptive). ShuffleV1/V2: conv1 -> 7x7/2 (3 ->
    24), avgpool -> AvgPool(14). MobileNetV2: conv1 -> [7x7/2 (3 -> 16), BN, ReLU, MaxPool 2],
    avgpool -> AvgPool(8, ceil_mode). VGG: new classifier only. The windows are SDD's for
    224x224 inputs, where each covers the whole final map; for a smaller `image_size` they
    scale with it (28 -> image_size / 8, 14 -> image_size / 16) so that they still do.
    (ShuffleV2: SDD's forward ignores the AvgPool(14) it sets; the intended pool is used.)
    """
    base = create(name[len("cub_"):], num_classes)

    def stem(cout: int) -> nn.Conv2d:
        return nn.Conv2d(3, cout, kernel_size=7, stride=2, padding=3, bias=False)

    if name in ("cub_resnet8x4", "cub_resnet32x4"):
        base.conv1 = stem(32)
        base.avgpool = nn.AvgPool2d(28 * image_size // 224)
        base.fc = nn.Linear(256, num_classes)
    elif name == "cub_ResNet50":
        base.conv1 = stem(64)
        base.linear = nn.Linear(2048, num_classes)
    elif name in ("cub_ShuffleV1", "cub_ShuffleV2"):
        base.conv1 = stem(24)
        base.avgpool = nn.AvgPool2d(14 * image_size // 224)
    elif name == "cub_MobileNetV2":
        base.conv1 = nn.Sequential(stem(16), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                   nn.MaxPool2d((2, 2)))
        base.avgpool = nn.AvgPool2d(8, ceil_mode=True)
    elif name in ("cub_vgg8", "cub_vgg13"):
        base.classifier = nn.Linear(512, num_classes)
    else:
        raise ValueError(f"no PyTorch CUB test model for {name!r}")
    return base


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (a trained-looking network, not an init).

    Conv/linear weights ~ N(0, 1/fan_in) so activations keep their scale; BN weight ~ U(0.5, 1.5),
    bias ~ N(0, 0.1), running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5). Returns the model
    in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.num_batches_tracked.fill_(1000)
    return model.eval()


# --- helpers of the parity tests (test_convert.py, test_model_parity.py) ------------------------

PARITY_TOL = 1e-5


def nhwc(t) -> np.ndarray:
    """A torch NCHW tensor as a numpy NHWC array."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(actual, expected, what: str, tol: float = PARITY_TOL):
    """max |actual - expected| <= tol * max(1, max |expected|), shapes equal."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= tol * scale, f"{what}: max |diff| {err:.3g} > {tol} * {scale:.3g}"


@nnx.jit
def forward(model, x):
    """The Flax model on NHWC x."""
    return model(x)
