"""Top-1 ImageNet class of real photos: each Lite checkpoint, in Keras and each exported file.

    python bench/lite_photos.py

Builds each EfficientNet-Lite entry with its pretrained ImageNet classifier
(``pretrained_head=True``), exports it to SavedModel, TFLite and ONNX (validated
against Keras as usual), and names the class of three real photos shipped by
scikit-image (written as JPEG) through ``kerastl.load_artifact`` in every format.
Writes ``bench/results_lite_photos.md``. ``tests/test_pretrained.py`` asserts the same.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = ("chelsea.png", "coffee.png", "motorcycle_left.png")
FORMATS = ["saved_model", "tflite", "onnx"]


def _photos(folder: Path) -> list[str]:
    import skimage
    from PIL import Image

    out = []
    for name in PHOTOS:
        img = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
        path = folder / name.replace(".png", ".jpg")
        img.save(path, quality=95)
        out.append(str(path))
    return out


def main() -> None:
    import kerastl
    from kerastl.export.artifact import load_artifact

    rows = [
        "| checkpoint | runtime | " + " | ".join(PHOTOS) + " |",
        "|---|---|" + "---|" * len(PHOTOS),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = _photos(tmp)
        for entry in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
            model = kerastl.build(entry, weights="imagenet", pretrained_head=True, compile=False)
            model.save(tmp / f"{entry}.keras")
            paths = {"keras": tmp / f"{entry}.keras"}
            report = kerastl.export(
                model, tmp / entry, formats=FORMATS, validation_data=photos, latency_runs=1
            )
            for a in report["artifacts"]:
                kind = "mediapipe tflite" if "mediapipe" in a["path"] else a["format"]
                paths[kind] = tmp / entry / a["path"]
            for runtime, path in paths.items():
                out = load_artifact(path).predict(photos)
                cells = [
                    f"{lab} ({p.max():.2f})" for lab, p in zip(out["labels"], out["probabilities"])
                ]
                rows.append(f"| {entry} | {runtime} | " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    (Path(__file__).parent / "results_lite_photos.md").write_text(
        "## Real photos through each Lite checkpoint, in Keras and every exported file\n\n"
        "`python bench/lite_photos.py`: top-1 ImageNet class (probability) of scikit-image's "
        "photos written as JPEG, through `kerastl.load_artifact(...).predict(paths)`.\n\n"
        + "\n".join(rows)
        + "\n"
    )


if __name__ == "__main__":
    main()
