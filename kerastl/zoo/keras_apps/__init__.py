"""keras.applications families: importing this package registers all 43 entries."""

from kerastl.zoo.keras_apps import (  # noqa: F401
    convnext,
    densenet,
    efficientnet,
    efficientnet_lite,
    efficientnet_v2,
    inception,
    mobilenet,
    nasnet,
    resnet,
    vgg,
    xception,
)
