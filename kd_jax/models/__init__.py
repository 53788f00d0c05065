"""The model zoo of the reference code bases (mdistiller / RepDistiller / SDD), in Flax NNX.

Every model is an `nnx.Module` called as

    logits, features = model(images)        # images: (B, H, W, 3), NHWC

with `features` a dict:
  "stages":        list of stage outputs, as the reference's feats list (NHWC);
  "preact_stages": their pre-activation versions (None where the reference has none);
  "pooled":        (B, C) the vector fed to the classifier;
  "pre_pool":      (B, H, W, C) the map fed to the final global pool (SDD, MSDCRD).
`model.head` is the final nnx.Linear (kernel (C, K), bias (K,)), so that
`kd_jax.losses.local_logits(features["pre_pool"], model.head.kernel[...], model.head.bias[...], scales)`
uses the model's own classifier. `model.train()` / `model.eval()` switch BatchNorm between
batch statistics (updating the running ones) and running statistics.

Attribute paths mirror the PyTorch module tree, so that `".".join(path)` of every leaf of
`nnx.state(model)` is the reference state_dict key with the leaf renamed
(kernel/scale -> weight, mean -> running_mean, var -> running_var).
"""

from kd_jax.models.families import FAMILIES, arch_name, base_name, family_of
from kd_jax.models.layers import CPU_CONV_CHOICES, cpu_conv, set_cpu_conv
from kd_jax.models.registry import create, import_model_file, names, register
from kd_jax.models.shapes import pre_pool_shape

# Importing a family module registers its models.
from kd_jax.models import resnet_cifar  # noqa: F401,E402  resnet8..110, resnet8x4, resnet32x4
from kd_jax.models import wrn  # noqa: F401,E402
from kd_jax.models import vgg  # noqa: F401,E402
from kd_jax.models import resnet_cifar_large  # noqa: F401,E402  CIFAR ResNet18/34/50
from kd_jax.models import mobilenetv2  # noqa: F401,E402
from kd_jax.models import shufflenetv1  # noqa: F401,E402
from kd_jax.models import shufflenetv2  # noqa: F401,E402
from kd_jax.models import resnet_imagenet  # noqa: F401,E402
from kd_jax.models import mobilenetv1  # noqa: F401,E402
from kd_jax.models import cub  # noqa: F401,E402

__all__ = ["CPU_CONV_CHOICES", "FAMILIES", "arch_name", "base_name", "cpu_conv", "create",
           "family_of", "import_model_file", "names", "pre_pool_shape", "register",
           "set_cpu_conv"]
