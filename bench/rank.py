"""Does ``kerastl rank`` order backbones the way fine-tuning does, and is ``advise`` right?

    python bench/rank.py [--quick] [--out bench/results_rank.md]

Tasks (real data shipped in PyPI wheels, nothing downloaded):

* ``digits10``: scikit-learn digits, 10 classes, 10 labels per class;
* ``digits5-9``: the same scans, digits 5-9 only, 20 labels per class;
* ``faces``: scikit-image's LFW subset, face or not, 40 labels per class.

Candidates: EfficientNet-Lite0/1/2 with their ImageNet weights, Lite0 cut early
(taps 2 and 3, average-pooled) and Lite0/Lite2 from random init. For every
task and candidate the two-phase recipe is run (a head on cached frozen
features, 40 epochs at 1e-2; then the top half of the groups present, BatchNorm
frozen, 8 epochs at 3e-4) and scored on held-out images. Kendall's tau relates
each rank score to that accuracy. The ranking (feature pass + scores) and the
fine-tuning are timed in the same process. ``advise`` is checked against
feature extraction, top-half and full fine-tuning of Lite0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

CANDIDATES = [
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite0:tap3",
    "efficientnet_lite0:tap2",
    "efficientnet_lite0@random",
    "efficientnet_lite2@random",
]
SIZE = 64
ADVISED = "efficientnet_lite0"


def tasks(quick: bool) -> dict:
    """``name -> (x uint8, y, labels per class, held-out per class, what)``."""
    from kerastl.train.demo import load_digits_uint8, load_faces_uint8

    x, y = load_digits_uint8()
    hi = y >= 5
    out = {
        "digits10": (x, y, 10, 30, "scikit-learn digits, 10 classes"),
        "digits5-9": (x[hi], y[hi] - 5, 20, 40, "scikit-learn digits 5-9"),
        "faces": (*load_faces_uint8(), 40, 60, "scikit-image LFW subset, face / not face"),
    }
    return dict(list(out.items())[:1]) if quick else out


def _arrays(ex, size: int) -> tuple[np.ndarray, np.ndarray]:
    from kerastl import data as kdata

    xs, ys = zip(*[(np.asarray(a), np.asarray(b)) for a, b in kdata.make_dataset(ex, size, 256)])
    return np.concatenate(xs), np.concatenate(ys)


def _leaves(layer) -> list:
    if hasattr(layer, "layers") and layer.layers:
        return [leaf for sub in layer.layers for leaf in _leaves(sub)]
    return [layer]


def unfreeze_top(feature_model, backbone: str, groups: int) -> int:
    """Train the last ``groups`` layer groups present in ``feature_model`` (BatchNorm frozen)."""
    import keras

    import kerastl

    anchors = [last for _, last in kerastl.get_spec(backbone).groups]
    leaves, index, gi = _leaves(feature_model), [], 0
    for layer in leaves:
        index.append(gi)
        gi += layer.name in anchors
    present = max(g for layer, g in zip(leaves, index) if layer.weights) + 1
    feature_model.trainable = True
    for layer, g in zip(leaves, index):
        bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (g >= present - groups) and not bn
    return present


def two_phase(c, tr, te, groups: int, lr: float, e_head: int, e_ft: int) -> dict:
    """Head on cached frozen features, then ``groups`` top groups at ``lr``; held-out accuracy."""
    import keras

    from kerastl.decide._rank import candidate_model

    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)  # the weights the rank saw (random-init candidates too)
    n_cls = len(tr[2])
    _, fm = candidate_model(c, n_cls, SIZE)
    fm.trainable = False
    (xtr, ytr), (xte, yte) = tr[:2], te[:2]
    ftr, fte = fm.predict(xtr, batch_size=128, verbose=0), fm.predict(xte, 128, verbose=0)
    head = keras.layers.Dense(n_cls, activation="softmax", name="head")
    hm = keras.Sequential([keras.Input(ftr.shape[1:]), head])
    hm.compile(keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    hm.fit(ftr, ytr, batch_size=16, epochs=e_head, verbose=0)
    out = {"fe": float(np.mean(hm.predict(fte, verbose=0).argmax(1) == yte))}
    if groups > 0:
        unfreeze_top(fm, c.name, groups)
        full = keras.Model(fm.inputs, head(fm.outputs[0]))
        full.compile(keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
        full.fit(xtr, ytr, batch_size=16, epochs=e_ft, verbose=0, shuffle=True)
        out["ft"] = float(np.mean(full.predict(xte, 128, verbose=0).argmax(1) == yte))
    out["seconds"] = time.perf_counter() - t0
    keras.backend.clear_session()
    return out


def run_task(name: str, spec: tuple, quick: bool, runtime: str) -> dict:
    """Rank, fine-tune every candidate, and check the advice, on one task."""
    from scipy.stats import kendalltau

    from kerastl import data as kdata
    from kerastl.decide import parse_candidates, rank
    from kerastl.train._cache import FeatureCache
    from kerastl.train.demo import _split

    x, y, shots, held, about = spec
    tri, tei = _split(y, shots, held, seed=0)
    names = [str(c) for c in np.unique(y)]
    ex = kdata.from_numpy(x, y, class_names=names, source=about)
    tr_ex, te_ex = ex.subset(tri), ex.subset(tei)
    cands = parse_candidates(CANDIDATES[:3] + CANDIDATES[5:6] if quick else CANDIDATES)
    FeatureCache.clear_memory()
    t0 = time.perf_counter()
    table = rank(tr_ex, cands, input_size=SIZE, runtime=runtime, progress=True)
    t_rank = time.perf_counter() - t0
    FeatureCache.clear_memory()  # fine-tuning pays for its own feature pass
    tr, te = (*_arrays(tr_ex, SIZE), names), (*_arrays(te_ex, SIZE), names)
    e_head, e_ft = (10, 2) if quick else (40, 8)
    acc, t_ft = {}, 0.0
    for c in cands:
        r = two_phase(c, tr, te, 2, 3e-4, e_head, e_ft)
        acc[c.label], t_ft = r, t_ft + r["seconds"]
        print(f"[{name}] {c.label}: fe {r['fe']:.3f} two-phase {r['ft']:.3f} ({r['seconds']:.0f}s)")
    rows = {r["candidate"]: r for r in table.rows}
    labels = [c.label for c in cands]
    target = [acc[k]["ft"] for k in labels]
    taus = {
        e: float(kendalltau([rows[k][e] for k in labels], target)[0])
        for e in rows[labels[0]]
        if e in ("logme", "knn", "probe")
    }
    advice = check_advice(tr_ex, tr, te, acc, e_head, e_ft)
    return {
        "task": name, "about": about, "train": len(tri), "held_out": len(tei),
        "rank_rows": table.rows, "rank_seconds": table.seconds, "rank_wall": t_rank,
        "finetune_seconds": t_ft, "accuracy": acc, "tau": taus, "advice": advice,
    }  # fmt: skip


def check_advice(tr_ex, tr, te, acc: dict, e_head: int, e_ft: int) -> dict:
    """The advised strategy's held-out accuracy vs feature extraction / top half / full."""
    from kerastl.decide import Candidate, advise

    c = Candidate(ADVISED)
    t0 = time.perf_counter()
    a = advise(tr_ex, ADVISED, input_size=SIZE)
    t_adv = time.perf_counter() - t0
    full = two_phase(c, tr, te, a.measurements["groups"], 1e-4, e_head, e_ft)
    measured = {
        "feature_extraction": acc[ADVISED]["fe"],
        "top_half": acc[ADVISED]["ft"],
        "full_finetune": full["ft"],
    }
    if a.strategy == "feature_extraction":
        got = measured["feature_extraction"]
    elif a.strategy == "full_finetune":
        got = measured["full_finetune"]
    elif a.groups == 2 and a.finetune_learning_rate == 3e-4:
        got = measured["top_half"]
    else:
        got = two_phase(c, tr, te, a.groups, a.finetune_learning_rate, e_head, e_ft)["ft"]
    return {
        "strategy": a.strategy, "groups": a.groups, "lr": a.finetune_learning_rate,
        "reasons": a.reasons, "measurements": a.measurements, "advised_accuracy": got,
        "measured": measured, "best": max(measured.values()), "seconds": t_adv,
    }  # fmt: skip


def rescore(results: list[dict], quick: bool) -> list[dict]:
    """Recompute every score (new feature pass) against the stored accuracies and costs."""
    from scipy.stats import kendalltau

    from kerastl import data as kdata
    from kerastl.decide import pareto_flags, rank
    from kerastl.train.demo import _split

    chosen = tasks(quick)
    for r in results:
        x, y, shots, held, about = chosen[r["task"]]
        tri, _ = _split(y, shots, held, seed=0)
        ex = kdata.from_numpy(x, y, class_names=[str(c) for c in np.unique(y)], source=about)
        t0 = time.perf_counter()
        new = rank(ex.subset(tri), list(r["accuracy"]), input_size=SIZE, runtime="none")
        r["rank_seconds"]["features_and_scores"] = time.perf_counter() - t0
        old = {row["candidate"]: row for row in r["rank_rows"]}
        for row in new.rows:
            row["size_mb"], row["latency_ms"] = (
                old[row["candidate"]][k] for k in ("size_mb", "latency_ms")
            )
        flags = pareto_flags([q["logme"] for q in new.rows], [q["latency_ms"] for q in new.rows])
        for row, f in zip(new.rows, flags):
            row["pareto"] = f and not row["collapsed"]
        r["rank_rows"] = new.rows
        labels = list(r["accuracy"])
        target = [r["accuracy"][k]["ft"] for k in labels]
        rows = {q["candidate"]: q for q in new.rows}
        guard = [-np.inf if rows[k]["collapsed"] else rows[k]["logme"] for k in labels]
        r["tau_guarded"] = float(kendalltau(guard, target)[0])
        r["tau"] = {
            e: float(kendalltau([rows[k][e] for k in labels], target)[0])
            for e in ("logme", "knn", "probe")
        }
    return results


def markdown(results: list[dict], command: str, runtime: str) -> str:
    """The RESULTS.md section: tau table, cost ratio, advice table."""
    lines = ["## Rank and advise: transferability vs two-phase accuracy", "", f"`{command}`", ""]
    lines += ["Kendall's tau between each score and the two-phase held-out accuracy:", ""]
    lines += ["| task | train / held-out | candidates | tau LogME | tau kNN | tau probe | "
              "tau LogME, collapsed last |"]  # fmt: skip
    lines += ["|---|---|---|---|---|---|---|"]
    for r in results:
        t, g = r["tau"], r.get("tau_guarded")
        lines.append(
            f"| {r['task']} | {r['train']} / {r['held_out']} | {len(r['accuracy'])} | "
            f"{t['logme']:.2f} | {t['knn']:.2f} | {t['probe']:.2f} | "
            + ("-" if g is None else f"{g:.2f}")
            + " |"
        )
    for r in results:
        lines += ["", f"{r['task']} ({r['about']}):", ""]
        lines += ["| candidate | LogME | kNN | probe | feature RMS | MB | ms | Pareto | "
                  "feat. extr. | two-phase |"]  # fmt: skip
        lines += ["|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["rank_rows"]:
            a = r["accuracy"][row["candidate"]]
            mb = "-" if row["size_mb"] is None else f"{row['size_mb']:.1f}"
            ms = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.2f}"
            lines.append(
                f"| {row['candidate']} | {row['logme']:.3f} | {row['knn']:.3f} | "
                f"{row['probe']:.3f} | {row.get('feature_rms', float('nan')):.2g} | {mb} | {ms} | {'yes' if row['pareto'] else ''} | "
                f"{a['fe']:.3f} | {a['ft']:.3f} |"
            )
    lines += ["", f"Cost (same process; cost column = {runtime} export + batch-1 latency):", ""]
    lines += ["| task | rank: features+scores (s) | rank: export cost (s) | fine-tune all (s) |"]
    lines += ["|---|---|---|---|"]
    tot = [0.0, 0.0, 0.0]
    for r in results:
        s = r["rank_seconds"]
        vals = [s["features_and_scores"], s["cost"], r["finetune_seconds"]]
        tot = [a + b for a, b in zip(tot, vals)]
        lines.append(f"| {r['task']} | {vals[0]:.0f} | {vals[1]:.0f} | {vals[2]:.0f} |")
    lines.append(f"| all | {tot[0]:.0f} | {tot[1]:.0f} | {tot[2]:.0f} |")
    lines += ["", f"Ranking / fine-tuning time: {tot[0] / tot[2]:.3f} (scores only), "
              f"{(tot[0] + tot[1]) / tot[2]:.3f} (with the export cost)."]  # fmt: skip
    lines += ["", f"Advice for {ADVISED} (held-out accuracy):", ""]
    lines += ["| task | advice | advised acc | feat. extr. | top half | full | within 2 pts |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in results:
        a, m = r["advice"], r["advice"]["measured"]
        ok = a["advised_accuracy"] >= a["best"] - 0.02
        lines.append(
            f"| {r['task']} | {a['strategy']} ({a['groups']} groups, lr {a['lr']}) | "
            f"{a['advised_accuracy']:.3f} | {m['feature_extraction']:.3f} | {m['top_half']:.3f} | "
            f"{m['full_finetune']:.3f} | {'yes' if ok else 'NO'} |"
        )
    for r in results:
        lines += ["", f"{r['task']} advice reasons: " + "; ".join(r["advice"]["reasons"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the benchmark; write JSON beside it and its section (bench/results_rank.md)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one task, four candidates")
    p.add_argument("--runtime", default="tflite", choices=["tflite", "onnx", "none"])
    p.add_argument(
        "--out",
        default=str(Path(__file__).with_name("results_rank.md")),
        help="the section RESULTS.md includes (rewritten)",
    )
    p.add_argument("--json", default=str(Path(__file__).with_name("rank_results.json")))
    p.add_argument("--tasks", default="", help="comma-separated subset of the tasks")
    p.add_argument(
        "--rescore",
        default="",
        help="a results JSON: redo the feature pass and scores, keep its accuracies and costs",
    )
    args = p.parse_args()
    results, t0 = [], time.perf_counter()
    if args.rescore:
        results = rescore(json.loads(Path(args.rescore).read_text()), args.quick)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        md = markdown(results, "python bench/rank.py " + " ".join(sys.argv[1:]), args.runtime)
        print(md)
        Path(args.out).write_text(md)
        return 0
    chosen = tasks(args.quick)
    keep = [t for t in args.tasks.split(",") if t] or list(chosen)
    for name in keep:
        results.append(run_task(name, chosen[name], args.quick, args.runtime))
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    cmd = "python bench/rank.py " + " ".join(sys.argv[1:])
    md = markdown(results, cmd.strip(), args.runtime)
    md += f"\nTotal wall time {time.perf_counter() - t0:.0f} s.\n"
    print(md)
    Path(args.out).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
