"""Developer tool: write kerastl/zoo/keras_apps/<family>.py from introspection.

Usage: python tools/write_keras_apps_families.py RECORDS_DIR

RECORDS_DIR holds the JSON records of tools/introspect_keras_apps.py. The hand
facts (registry names, default sizes, preprocessing, published top-1, licence)
live in FAMILIES below; the measured facts come from the records.
"""

import json
import sys
from pathlib import Path

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


def main() -> None:
    records = Path(sys.argv[1])
    out = Path(__file__).resolve().parents[1] / "kerastl" / "zoo" / "keras_apps"
    out.mkdir(parents=True, exist_ok=True)
    for family, (doc, prep, lic, variants) in FAMILIES.items():
        lines = [
            f'"""{doc}, from keras.applications. Data only: see kerastl/zoo/_keras_apps_family.py.',
            "",
            "Generated by tools/write_keras_apps_families.py from the built models; the",
            "registry tests check every number below against a freshly built backbone.",
            '"""',
            "",
            "from kerastl.zoo._keras_apps_family import declare_family",
            "",
            "declare_family(",
            f"    family={family!r},",
            f"    license={lic!r},",
            "    variants={",
        ]
        for name, (cls, size, top1) in variants.items():
            r = json.loads((records / f"{cls}.json").read_text())
            r["groups"] = GROUP_OVERRIDES.get(cls, r["groups"])
            p = prep or PER_VARIANT_PREPROCESSING[cls]
            lines += [
                f"        {name!r}: dict(",
                f"            constructor={cls!r},",
                f"            input_size={size},",
                f"            min_input_size={r['min_size']},",
                f"            preprocessing={p!r},",
                f"            feature_dim={r['feature_dim']},",
                f"            params={r['params']},",
                f"            top1={top1},",
                "            taps=[",
                *[f"                ({t[0]!r}, {t[1]}, {t[2]})," for t in r["taps"]],
                "            ],",
                "            groups=[",
                *[f"                ({g[0]!r}, {g[1]!r})," for g in r["groups"]],
                "            ],",
                "        ),",
            ]
        lines += ["    },", ")", ""]
        (out / f"{family}.py").write_text("\n".join(lines))
    init = [
        '"""keras.applications families: importing this package registers all 40 entries."""',
        "",
        "from kerastl.zoo.keras_apps import (  # noqa: F401",
        *[f"    {f}," for f in FAMILIES],
        ")",
        "",
    ]
    (out / "__init__.py").write_text("\n".join(init))


if __name__ == "__main__":
    main()
