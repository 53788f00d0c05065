"""CUB-200-2011 variants of the CIFAR models, as SDD builds them (224x224 inputs, 200 classes).

Source of the design: SDD's `train_origin.py` (shicaiwei123/SDD-CVPR2024), whose
`modify_teacher_model_for_cub200` / `modify_student_model_for_cub200` take the CIFAR model
built with num_classes=200 and replace modules in place. Reproduced here the same way, by
replacing attributes of the CIFAR model after construction (one implementation per family,
no near-copies); a replaced module has PyTorch's default initialisation, as in SDD:

  cub_resnet32x4, cub_resnet8x4  conv1 -> conv7x7 stride 2 pad 3 (3 -> 32); SDD re-makes fc,
                                 whose init is the default already; AvgPool(28) = global.
                                 224 -> 112 -> layer2 56 -> layer3 28: pre_pool (B, 28, 28, 256)
  cub_ResNet50                   conv1 -> conv7x7 stride 2 pad 3 (3 -> 64), no max-pool;
                                 SDD re-makes linear (default init already); adaptive pool.
                                 pre_pool (B, 14, 14, 2048)
  cub_ShuffleV1, cub_ShuffleV2   conv1 -> conv7x7 stride 2 pad 3 (3 -> 24); pool AvgPool(14)
                                 = global. pre_pool (B, 14, 14, 960) / (B, 14, 14, 1024).
                                 (SDD's released ShuffleV2 forward keeps avg_pool2d(4) and
                                 ignores the AvgPool(14) it sets, so it cannot run at 224;
                                 the intended global pool is used here. No published pair
                                 uses it.)
  cub_MobileNetV2                conv1 -> [conv7x7 stride 2 pad 3 (3 -> 16), BN, ReLU,
                                 MaxPool 2x2] (MobileNetV2(stem="cub")); AvgPool(8,
                                 ceil_mode) on the 7x7 map = global. pre_pool (B, 7, 7, 1280)
  cub_vgg13, cub_vgg8            architecture unchanged (its blocks 3-4 run at 28x28, the
                                 head is an adaptive average pool); classifier re-made with
                                 PyTorch's default init. pre_pool (B, 28, 28, 512)

State_dict keys equal the CIFAR model's; only the stem kernel shapes change (7x7), so SDD's
CUB teacher checkpoints convert with the usual rules. The CIFAR classes need no CUB option:
their forwards already end in a global average pool and apply `self.conv1` whatever its
kernel; only MobileNetV2 takes `stem="cub"`, because its new stem adds a max-pool.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from kd_jax.models import layers
from kd_jax.models import mobilenetv2, resnet_cifar, resnet_cifar_large, shufflenetv1, shufflenetv2
from kd_jax.models import vgg
from kd_jax.models.registry import register


def _stem_7x7(out_channels: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    """nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False), default init."""
    return layers.conv(3, out_channels, 7, stride=2, padding=3,
                       kernel_init=layers.torch_default_kernel_init, dtype=dtype, rngs=rngs)


def _default_linear(old: nnx.Linear, *, rngs: nnx.Rngs) -> nnx.Linear:
    """nn.Linear(in, out) with PyTorch's default init, shaped like `old`."""
    cin, cout = old.kernel.shape
    return layers.linear(cin, cout, rngs=rngs)


def _with_stem_7x7(model: nnx.Module, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    model.conv1 = _stem_7x7(model.conv1.out_features, dtype=dtype, rngs=rngs)
    return model


def _register_cifar_resnet(name: str) -> None:
    depth, widths = resnet_cifar.CONFIGS[name]

    @register(f"cub_{name}")
    def build(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
        model = resnet_cifar.CifarResNet(depth, widths, num_classes, dtype=dtype, rngs=rngs)
        return _with_stem_7x7(model, dtype=dtype, rngs=rngs)

    build.__name__ = f"cub_{name}"


def _register_vgg(name: str) -> None:
    config = vgg.CONFIGS[name]

    @register(f"cub_{name}")
    def build(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
        model = vgg.VGG(config, num_classes, dtype=dtype, rngs=rngs)
        model.classifier = _default_linear(model.classifier, rngs=rngs)
        return model

    build.__name__ = f"cub_{name}"


for _name in ("resnet8x4", "resnet32x4"):
    _register_cifar_resnet(_name)
for _name in ("vgg8", "vgg13"):
    _register_vgg(_name)


@register("cub_ResNet50")
def cub_resnet50(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    block, num_blocks = resnet_cifar_large.CONFIGS["ResNet50"]
    model = resnet_cifar_large.CifarResNetLarge(block, num_blocks, num_classes, dtype=dtype,
                                                rngs=rngs)
    return _with_stem_7x7(model, dtype=dtype, rngs=rngs)


@register("cub_ShuffleV1")
def cub_shufflev1(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    model = shufflenetv1.ShuffleNetV1(num_classes, dtype=dtype, rngs=rngs)
    return _with_stem_7x7(model, dtype=dtype, rngs=rngs)


@register("cub_ShuffleV2")
def cub_shufflev2(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    model = shufflenetv2.ShuffleNetV2(num_classes, dtype=dtype, rngs=rngs)
    return _with_stem_7x7(model, dtype=dtype, rngs=rngs)


@register("cub_MobileNetV2")
def cub_mobilenetv2(num_classes: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    return mobilenetv2.MobileNetV2(num_classes, stem="cub", dtype=dtype, rngs=rngs)
