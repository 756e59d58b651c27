"""Write the ``.keras`` files that tests/test_legacy_files.py loads.

They were saved by kerastl 0.1.0 *before* the package was restructured (issue 15),
so the test proves that files users saved with an earlier release still load and
give the same outputs. Rerunning this script on a later release would defeat that
purpose: it is kept to show how the files were made, not to refresh them.

    PYTHONPATH=. python tools/make_legacy_models.py tests/data/legacy
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_keras_hub import tiny_kwargs  # noqa: E402

import kerastl  # noqa: E402

SENTENCES = ["a good film", "bad and boring", "great acting", "awful plot"]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    outputs = {"images": images, "sentences": np.array(SENTENCES)}

    image = kerastl.build(
        "mobilenet_v3_small", num_classes=3, input_shape=(32, 32, 3), freeze="last:2"
    )
    # A random-init MobileNetV3 gives the same output for every image; jitter the
    # weights so the reference outputs depend on the input (and on every weight).
    for v in image.weights:
        v.assign(v + rng.normal(0, 0.05, v.shape).astype(v.dtype))
    image.save(out / "image_classifier.keras")
    outputs["image_classifier"] = image.predict(images, verbose=0)

    text = kerastl.build(
        "bert_tiny_en_uncased", num_classes=2, pooling="avg", **tiny_kwargs("bert_tiny_en_uncased")
    )
    text.save(out / "text_classifier.keras")
    outputs["text_classifier"] = text.predict(np.array(SENTENCES, dtype=object), verbose=0)

    hub = "mobilenet_v3_small_050_imagenet"
    proto = kerastl.build(
        hub, task="prototypes", support=(images[:3], np.arange(3)), **tiny_kwargs(hub)
    )
    proto.save(out / "prototypes.keras")
    outputs["prototypes"] = proto.predict(images, verbose=0)

    np.savez(out / "outputs.npz", **outputs)
    print(f"kerastl {kerastl.__version__}: wrote {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
