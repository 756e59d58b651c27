"""Train from an image folder with the Python API, then evaluate (runnable example).

python examples/train_folder.py --make-data     # writes data/shapes (3 classes of PNGs)
python examples/train_folder.py                 # trains with examples/run.yaml
kerastl train examples/run.yaml --epochs 2      # the same from the command line
kerastl evaluate runs/shapes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def make_data(root: Path, per_class: int = 24, size: int = 72, seed: int = 0) -> None:
    """Three classes of synthetic pictures: horizontal stripes, vertical stripes, dots."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("hstripes", "vstripes", "dots"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            period = int(rng.integers(6, 12))
            if name == "hstripes":
                img[(np.arange(size) % period) < period // 2, :] += 150
            elif name == "vstripes":
                img[:, (np.arange(size) % period) < period // 2] += 150
            else:
                ys, xs = rng.integers(0, size, (2, 40))
                img[ys, xs] = 250
            Image.fromarray(img).save(root / name / f"{i}.png")
    print(f"wrote {3 * per_class} images to {root}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-data", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    data = HERE / "data" / "shapes"
    if args.make_data or not data.exists():
        make_data(data)
        if args.make_data:
            return
    from kerastl.train import evaluate_run, train

    overrides = {"export.formats": []}
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    result = train(HERE / "run.yaml", overrides)
    print("run folder:", result.run_dir)
    print("accuracy:", result.metrics.get("accuracy"))
    print("re-evaluated:", evaluate_run(result.run_dir)["accuracy"])


if __name__ == "__main__":
    main()
