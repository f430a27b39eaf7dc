"""Model zoo: `create_model(name, num_classes, image_size, channels)` and named feature layers.

Names: `convnet-d1` … `convnet-d6` (instance norm; `-bn` / `-nn` suffixes for batch / no norm;
aliases `ConvNet-3`, `conv3`, `ConvNet-3-BN`, `conv3_bn`, …), `resnet18_modified`,
`resnet50_modified`, `resnet101_modified` (small-input stems), `mobilenet_v2_cifar` (torchvision MobileNetV2
with stride 1 in the stem and features[2], for 32/64 px), `ResNet-18-BN` / `ResNet-50-BN`
(DD-Ranking), `mlp`, any torchvision classification model, and `timm:<name>`.
"""
from ddkit.models.factory import (MODELS, adapt_input_channels, create_model, list_models, register_model,
                                  resolve_model_name)
from ddkit.models import convnet as _convnet  # noqa: F401  (registers ConvNet-D and MLP)
from ddkit.models import resnet_small as _resnet_small  # noqa: F401  (registers small-input ResNets)
from ddkit.models import mobilenet_small as _mobilenet_small  # noqa: F401  (registers mobilenet_v2_cifar)
from ddkit.models.convnet import MLP, ConvNet
from ddkit.models.features import default_feature_layer, feature_extractor, feature_layers

__all__ = [
    "MODELS", "ConvNet", "MLP", "adapt_input_channels", "create_model", "default_feature_layer",
    "feature_extractor", "feature_layers", "list_models", "register_model", "resolve_model_name",
]
