"""Which input normalisation the EfficientNet-Lite checkpoints expect, from evidence.

    python bench/lite_normalisation.py

Runs each Lite checkpoint's ImageNet classifier on real photos shipped by
scikit-image (a cat, a cup of espresso, a motorcycle) under each candidate
normalisation, and prints the probability the model gives the right class
(summed over the accepted ImageNet classes of each photo) and its top-1. The
registry records the winner as the entries' ``preprocessing``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

#: Candidate normalisations of 0-255 RGB.
CANDIDATES = {
    "tf: (x - 127.5) / 127.5": lambda x: (x - 127.5) / 127.5,
    "torch: ImageNet mean/std": lambda x: (
        (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    ),
    "unit: x / 255": lambda x: x / 255.0,
}
PHOTOS = {
    "chelsea.png": {"Egyptian_cat", "tabby", "tiger_cat", "Persian_cat", "Siamese_cat"},
    "coffee.png": {"espresso", "cup", "coffee_mug"},
    "motorcycle_left.png": {"moped", "motor_scooter"},
}


def main() -> None:
    import keras
    import skimage
    from PIL import Image

    from kerastl.zoo import get_spec
    from kerastl.zoo.checkpoint import read_state_dict
    from kerastl.zoo.sources.efficientnet_lite import efficientnet_lite, load_torch_state_dict
    from kerastl.zoo.sources.native import LITE_VARIANTS
    from kerastl.zoo.weights import imagenet_class_names, packaged_checkpoint

    names = imagenet_class_names()
    folder = Path(skimage.__file__).parent / "data"
    rows = [
        "| checkpoint | normalisation | mean p(right class) | top-1 right |",
        "|---|---|---|---|",
    ]
    for entry in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        spec = get_spec(entry)
        size = spec.input_size
        model = efficientnet_lite(LITE_VARIANTS[spec.constructor], (size, size, 3), True)
        load_torch_state_dict(model, read_state_dict(packaged_checkpoint(spec)))
        images = np.stack(
            [
                np.asarray(Image.open(folder / p).convert("RGB").resize((size, size), 3), "float32")
                for p in PHOTOS
            ]
        )
        for label, fn in CANDIDATES.items():
            logits = model.predict(np.asarray(fn(images), "float32"), verbose=0)
            probs = keras.ops.softmax(logits).numpy()
            right = [
                sum(probs[i, names.index(c)] for c in ok) for i, ok in enumerate(PHOTOS.values())
            ]
            top = sum(names[int(j)] in ok for j, ok in zip(probs.argmax(-1), PHOTOS.values()))
            rows.append(f"| {entry} | {label} | {np.mean(right):.3f} | {top}/{len(PHOTOS)} |")
    print("\n".join(rows))
    (Path(__file__).parent / "results_lite_normalisation.md").write_text(
        "## EfficientNet-Lite input normalisation, from evidence\n\n"
        "`python bench/lite_normalisation.py`: each checkpoint's ImageNet classifier on real "
        "scikit-image photos (cat, espresso, motorcycle) under each candidate normalisation; "
        "the registry records the winner as `preprocessing`.\n\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()
