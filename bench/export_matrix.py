"""Full export matrix: every registry entry x SavedModel / TFLite / ONNX, float32 validation.

Each entry runs in its own subprocess (memory isolation), built at its minimum
input size with ``weights=None``; each format is a separate ``kerastl.export``
call so one format's failure does not hide the others. A child whose resident
memory passes ``--max-rss-gb`` or that runs past ``--timeout`` is killed and its
remaining formats are recorded as such. Results are appended to a JSONL file
(re-running skips what is done) and summarised as Markdown.

    python bench/export_matrix.py                       # everything, resumable
    python bench/export_matrix.py --entries resnet50,vgg16
    python bench/export_matrix.py --summarize           # only rewrite the Markdown
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMATS = ("saved_model", "tflite", "onnx")


#: BatchNorm scale of the random-init models (see :func:`informative`).
BN_GAMMA = 0.5
#: The parent hands ``--bn-gamma`` to its children in this variable.
GAMMA_ENV = "EXPORT_MATRIX_BN_GAMMA"
#: Recorded in each row: rows without it were calibrated with scale 1 and dropout on.
CALIBRATION = "bn scale {}, dropout off"


def informative(model, x, gamma: float = BN_GAMMA) -> None:
    """Set BatchNorm moving statistics from one batch of ``x``, dropout off, scale 0.5.

    With ``weights=None`` the default statistics (mean 0, variance 1) shrink activations
    to ~1e-11 and every output is the same constant: parity would be vacuous. Dropout and
    stochastic depth are off while the statistics are taken: statistics of thinned
    activations do not normalise the full ones at inference, and on a deep residual net
    (EfficientNet-B7) the mismatch grows the activations to ~5e4, where float32 rounding
    alone moves the output by 100%. The BatchNorm scale is ``gamma`` (0.5), so each
    residual branch adds half the size of its input: with the default scale 1, a deep
    random-init residual net amplifies float32 rounding from 1e-7 to 1e-1 over its depth
    (measured on EfficientNet-B7 at 32 px: TensorFlow's graph and eager results differ by
    0.11 with scale 1, by 5e-6 with scale 0.5), so no converter could match it.
    """
    import keras

    layers = list(model._flatten_layers(include_self=False, recursive=True))
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return
    drops = [
        layer
        for layer in layers
        if "Drop" in type(layer).__name__ and isinstance(getattr(layer, "rate", None), float)
    ]
    saved = [(b.trainable, b.momentum) for b in bns]
    rates = [d.rate for d in drops]
    for b in bns:
        b.trainable, b.momentum = True, 0.0
    for d in drops:
        d.rate = 0.0
    for b in bns:
        if b.gamma is not None:
            b.gamma.assign(b.gamma * gamma)
    model(x, training=True)
    for b, (trainable, momentum) in zip(bns, saved):
        b.trainable, b.momentum = trainable, momentum
    for d, rate in zip(drops, rates):
        d.rate = rate


#: Text entries run at this sequence length (their minimum is a few tokens).
TEXT_LENGTH = 16


def build_kwargs(spec) -> dict:
    """``kerastl.build`` options for one entry at its minimum input, nothing downloaded.

    Text entries get a tiny tokenizer of their tokenizer class (the full-size backbone
    only needs token ids below its vocabulary size; the real vocabulary is part of the
    preset download), from the same helpers the offline tests use.
    """
    if spec.modality == "image":
        side = spec.min_input_size
        return {"input_shape": (side, side, 3)}
    if spec.modality == "audio":
        return {"input_shape": (spec.min_input_size,)}
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_keras_hub import tiny_tokenizer

    return {"tokenizer": tiny_tokenizer(spec), "sequence_length": TEXT_LENGTH}


def input_size(spec) -> int:
    return TEXT_LENGTH if spec.modality == "text" else spec.min_input_size


def validation_inputs(spec, modality, n: int, seed: int):
    """Realistic raw inputs: the model's sample inputs, or in-vocabulary sentences (text)."""
    if spec.modality != "text":
        return modality.sample_inputs(n, seed=seed)
    import numpy as np
    from test_keras_hub import SENTENCES

    rng = np.random.default_rng(seed)
    return np.array([SENTENCES[i] for i in rng.choice(len(SENTENCES), n)], dtype=object)


def run_child(entry: str, formats: list[str], results: Path) -> None:
    """In the child: build ``entry`` and export it format by format."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    import numpy as np

    import kerastl
    from kerastl.zoo import get_spec

    warnings.simplefilter("ignore")
    spec = get_spec(entry)
    gamma = float(os.environ.get(GAMMA_ENV, BN_GAMMA))
    side = input_size(spec)
    start = time.perf_counter()
    from kerastl.export.modalities import get_modality

    try:
        import keras

        keras.utils.set_random_seed(0)  # reproducible random-init weights per entry
        model = kerastl.build(entry, num_classes=3, compile=False, **build_kwargs(spec))
        modality = get_modality(kerastl.metadata(model))
        samples = validation_inputs(spec, modality, 32, seed=1)
        informative(model, samples, gamma)  # BatchNorm statistics of the validation data
    except Exception as exc:  # noqa: BLE001 - a registry/build problem, not an export one
        with results.open("a") as fh:
            for fmt in formats:
                row = {
                    "entry": entry,
                    "family": spec.family,
                    "modality": spec.modality,
                    "format": fmt,
                    "input": side,
                    "status": "build_error",
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                }
                fh.write(json.dumps(row) + "\n")
        return
    build_s = time.perf_counter() - start
    # in batches of 4 through predict's graph: one eager call of the 8 inputs kept its
    # activations, and TensorFlow keeps that memory (Whisper large after build: 7.5 GB; 14.2 GB
    # after the eager call, 8.6 GB after predict)
    outputs = model.predict(validation_inputs(spec, modality, 8, seed=2), batch_size=4, verbose=0)
    spread = float(np.asarray(outputs).std(0).mean())
    for fmt in formats:
        row = {
            "entry": entry,
            "family": spec.family,
            "modality": spec.modality,
            "format": fmt,
            "input": side,
            "params": int(model.count_params()),
            "build_s": round(build_s, 1),
            "output_spread": round(spread, 4),
            "calibration": CALIBRATION.format(gamma),
        }
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            try:
                report = kerastl.export(
                    model,
                    tmp,
                    formats=[fmt],
                    validation_data=samples,
                    latency_runs=3,
                    max_validation_samples=8,
                )
                art = report["artifacts"][0]
                row.update(
                    status="pass",
                    max_rel_err=art["parity"]["max_rel_err"],
                    size_mb=round(art["size_bytes"] / 1e6, 1),
                    latency_ms=art.get("latency_ms"),
                    export_s=art.get("export_seconds"),
                    details=art.get("details"),
                )
            except Exception as exc:  # noqa: BLE001 - the matrix records every failure
                row.update(status="fail", error=f"{type(exc).__name__}: {str(exc)[:300]}")
            row["total_s"] = round(time.perf_counter() - t0, 1)
        # The child's own peak (Linux reports KiB; GB here are 1e9 bytes): one format per child,
        # this is the cell's peak resident memory, build and validation included.
        row["peak_rss_gb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2
        )
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def _done(results: Path, retry: bool = False) -> set[tuple[str, str]]:
    """Cells with a result (``retry``: only those whose latest result is a pass)."""
    if not results.exists():
        return set()
    latest = {}
    for r in map(json.loads, results.read_text().splitlines()):
        latest[(r["entry"], r["format"])] = r["status"]
    return {cell for cell, status in latest.items() if status == "pass" or not retry}


def architecture(name: str) -> str | None:
    """Identity of a KerasHub entry's graph: backbone class, config, tokenizer class.

    Presets that share it (``bge_base_en`` and ``bert_base_en_uncased``, the two MiT
    checkpoints of each size) differ only in their downloaded weights, so with
    ``weights=None`` they export the very same graph.
    """
    from kerastl.zoo import get_spec

    spec = get_spec(name)
    if spec.source != "keras_hub":
        return None
    key = [spec.extra["backbone_class"], spec.extra.get("config"), spec.extra.get("tokenizer")]
    return json.dumps(key, sort_keys=True, default=str)


def _settled(row: dict | None) -> bool:
    """A cell whose result a twin can share: passed, or killed at the memory limit."""
    if row is None:
        return False
    return row["status"] == "pass" or str(row.get("error", "")).startswith(
        "killed: resident memory"
    )


def _copy_twin(entry: str, todo: list[str], results: Path, since: int = 0) -> bool:
    """Record ``entry``'s cells as those of an entry with the same graph that settled them.

    Settled means passed or did not fit in memory: the same graph needs the same memory,
    so a twin of an entry that does not fit is not run again for the same answer. Only
    rows from line ``since`` on count: a retry (after a change to the export) must not
    copy a result measured before it.
    """
    key = architecture(entry)
    if key is None:
        return False
    latest = {}
    for r in map(json.loads, _lines(results, since)):
        if "same_as" not in r:
            latest[(r["entry"], r["format"])] = r
    for (other, _), _row in latest.items():
        if other != entry and architecture(other) == key:
            if all(_settled(latest.get((other, f))) for f in todo):
                with results.open("a") as fh:
                    for f in todo:
                        row = {**latest[(other, f)], "entry": entry, "same_as": other}
                        fh.write(json.dumps(row) + "\n")
                print(f"== {entry}: same architecture as {other}, cells copied", flush=True)
                return True
    return False


def _lines(results: Path, skip: int = 0) -> list[str]:
    return results.read_text().splitlines()[skip:] if results.exists() else []


def run_parent(
    entries: list[str],
    formats: list[str],
    results: Path,
    timeout: float,
    max_rss_gb: float,
    retry: bool = False,
    twins: bool = True,
    rerun: bool = False,
) -> None:
    """Run each entry's missing cells, one child process per format.

    One child per format gives each cell its own peak memory, and a format that is
    killed (memory or time) does not take the entry's other formats with it.
    ``rerun``: every cell again (after a change to what they export); the newest row of
    a cell is the one the summary shows.
    """
    # a retry or rerun copies only its own results
    since = len(_lines(results)) if retry or rerun else 0
    for entry in entries:
        done = set() if rerun else _done(results, retry)
        todo = [f for f in formats if (entry, f) not in done]
        if not todo:
            continue
        if twins and _copy_twin(entry, todo, results, since):
            continue
        for fmt in todo:
            _run_cell(entry, fmt, results, timeout, max_rss_gb)


def _run_cell(entry: str, fmt: str, results: Path, timeout: float, max_rss_gb: float) -> None:
    """One (entry, format) cell in a child, killed past ``max_rss_gb`` or ``timeout``."""
    sys.path.insert(0, str(HERE.parent))
    from bench._harness import run_child

    print(f"== {entry}: {fmt}", flush=True)
    seen = len(_lines(results))
    args = [__file__, "--child", entry, "--formats", fmt, "--results", str(results)]
    child = run_child(args, timeout, max_rss_gb, poll=1.0)
    peak = child["peak_rss_mb"] / 1000
    finished = {(r["entry"], r["format"]) for r in map(json.loads, _lines(results, seen))}
    if (entry, fmt) not in finished:
        reason = child["killed"] and f"killed: {child['killed']}"
        err = child["stderr"].strip()[-300:]
        row = {
            "entry": entry,
            "format": fmt,
            "status": "fail",
            "error": reason or f"child exited {child['returncode']}: {err}",
            "peak_rss_gb": round(peak, 1),
            "total_s": round(child["seconds"], 1),
        }
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    print(f"   done in {child['seconds']:.0f} s, peak RSS {peak:.1f} GB", flush=True)


def summarize(results: Path, md: Path) -> str:
    """Markdown table of the matrix (entries x formats) plus failures."""
    rows = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    )
    latest: dict[tuple[str, str], dict] = {}
    for r in rows:
        latest[(r["entry"], r["format"])] = r
    entries = sorted({e for e, _ in latest})
    own = {k: r for k, r in latest.items() if "same_as" not in r}
    # A twin: every cell of the entry repeats another entry's result. An entry with a cell
    # of its own (a rerun, say) is counted as exported, its own cells with the others.
    twins = sorted(set(entries) - {e for e, _ in own})
    built = {k: r for k, r in own.items() if r["status"] != "build_error"}
    broken = sorted({e for (e, _), r in own.items() if r["status"] == "build_error"})
    passed = sum(1 for r in built.values() if r["status"] == "pass")
    lines = [
        "## Export matrix (bench/export_matrix.py)",
        "",
        "Every registry entry at its minimum input, `weights=None`, 3 classes, exported by "
        "`kerastl.export` one format at a time and validated in the format's runtime "
        "(float32, rel err <= 1e-4 or, failing that, the float64 referee of "
        "kerastl.export.validate; batch sizes 1 and 4, determinism). BatchNorm statistics are "
        "set from one batch first so random-init outputs vary with the input (otherwise every "
        "output is a constant and parity is vacuous); rows run since 2026-11-30 take them "
        f"with dropout off and BatchNorm scale {BN_GAMMA} (`informative()`: a deep random-init "
        "residual net otherwise amplifies float32 rounding past any tolerance), earlier rows "
        "with scale 1 and dropout on. Each cell runs in its own process, killed past the "
        "memory limit. Machine: 2 CPU cores shared with other jobs, so times are inflated. "
        "Cell: max rel err / size MB / export s / peak resident memory GB of the cell's "
        "process (build and validation included; `-` for rows from before it was recorded).",
        "",
        f"**{passed} of {len(built)} entry x format cells pass** "
        f"({len(entries) - len(broken) - len(twins)} entries exported; {len(broken)} more could "
        "not be built by kerastl.build at their minimum input, listed below). "
        f"{len(twins)} more KerasHub entries have exactly the graph of an entry that was run "
        "(same backbone class, config and tokenizer class; only their downloadable weights "
        "differ), so their cells repeat that entry's result, marked `= entry`.",
        "",
        "What kerastl does where Keras 3.15 `model.export` falls short (see PRODUCT.md): traces "
        "with `training=False`; freezes every variable and captured tensor (EfficientNet's "
        "Normalization mean/variance no longer become ONNX inputs); drops the XLA attribute of "
        "Keras' grouped-convolution functions so no `StatefulPartitionedCall` is left "
        "(ConvNeXt); rewrites `Erfc` as `1 - Erf`; patches tf2onnx's transpose optimiser crash "
        "on MobileNetV3 (1 Transpose left instead of ~100); TFLite builtin ops only; "
        "mixed-precision models exported as a float32 clone; every file reloaded and compared "
        "in its runtime before it is published.",
        "",
        "Text entries run at sequence length 16 with a tiny tokenizer of their class (the "
        "backbone is full size; the real vocabulary comes with the preset download), "
        "validated on in-vocabulary sentences; audio entries at their minimum number of "
        "samples (0.1 s).",
        "",
        "| entry | modality | input | params | " + " | ".join(FORMATS) + " |",
        "|---|---|---|---|" + "---|" * len(FORMATS),
    ]
    for e in entries:
        cells = []
        first = next(r for (ee, _), r in latest.items() if ee == e)
        for f in FORMATS:
            r = latest.get((e, f))
            if r is None:
                cells.append("not run")
            elif "same_as" in r:
                twin = latest.get((r["same_as"], f), r)
                cells.append(f"= {r['same_as']} ({_twin_result(twin)})")
            elif r["status"] == "pass":
                peak = r.get("peak_rss_gb", "-")
                cells.append(
                    f"ok {r['max_rel_err']:.1g} / {r['size_mb']} / {r['export_s']} / {peak}"
                    + _calibration_mark(r)
                )
            elif r["status"] == "build_error":
                cells.append("not built")
            elif str(r.get("error", "")).startswith("killed: resident memory"):
                cells.append(f"does not fit ({r.get('peak_rss_gb')} GB)")
            else:
                cells.append("FAIL")
        params = f"{first['params'] / 1e6:.1f}M" if first.get("params") else "-"
        modality = first.get("modality", "image")
        lines.append(
            f"| {e} | {modality} | {first.get('input', '-')} | {params} | "
            + " | ".join(cells)
            + " |"
        )
    fails = [r for r in built.values() if r["status"] != "pass"]
    lines += _other_scale_notes(rows, latest)
    if fails:
        lines += ["", "Failures:", ""]
        lines += [f"- {r['entry']} / {r['format']}: {r.get('error')}" for r in fails]
    flat = sorted(
        e
        for e in entries
        if latest_spread(latest, e) is not None and latest_spread(latest, e) < 1e-3
    )
    if flat:
        lines += [
            "",
            "Outputs of these random-init entries hardly vary with the input (mean std "
            "< 1e-3 over 8 inputs), so their parity figures say less: " + ", ".join(flat),
        ]
    if broken:
        lines += ["", "Not built (registry/adapter problem, not export): " + ", ".join(broken)]
    lines += _not_run(entries)
    text = "\n".join(lines) + "\n"
    md.write_text(text)
    return text


def _twin_result(row: dict) -> str:
    """Short result of the cell a twin shares."""
    if row["status"] == "pass":
        return "ok"
    if str(row.get("error", "")).startswith("killed: resident memory"):
        return f"does not fit, {row.get('peak_rss_gb')} GB"
    return "FAIL"


def _not_run(entries: list[str]) -> list[str]:
    """The registry entries with no row yet: the matrix's true coverage."""
    from kerastl.zoo import get_spec, list_models

    every = list_models()
    missing = sorted(set(every) - set(entries), key=lambda n: get_spec(n).params)
    head = f"**Coverage: {len(every) - len(missing)} of {len(every)} registry entries have a row.**"
    if not missing:
        return ["", head]
    return [
        "",
        head,
        f"Not run yet ({len(missing)}; `python bench/export_matrix.py` resumes with them, "
        "smallest first): " + ", ".join(missing),
    ]


def _calibration_mark(row: dict) -> str:
    """`` (bn scale X)`` for a row run at another BatchNorm scale than the default."""
    cal = row.get("calibration")
    if cal is None or cal == CALIBRATION.format(BN_GAMMA):
        return ""
    return f" ({cal.split(',')[0]})"


def _other_scale_notes(rows: list[dict], latest: dict) -> list[str]:
    """What each cell shown at another BatchNorm scale did at the default one."""
    default = CALIBRATION.format(BN_GAMMA)
    notes = []
    for (entry, fmt), r in sorted(latest.items()):
        if not _calibration_mark(r):
            continue
        before = [x for x in rows if (x["entry"], x["format"]) == (entry, fmt)]
        before = [x for x in before if x.get("calibration") == default]
        if before:
            notes.append(f"- {entry} / {fmt} at {default}: {before[-1].get('error', 'pass')}")
    if not notes:
        return []
    head = (
        "Cells marked with another BatchNorm scale, and what they did at the default one "
        "(a deeper net amplifies float32 rounding more; see `informative()`):"
    )
    return ["", head, "", *notes]


def latest_spread(latest: dict, entry: str) -> float | None:
    spreads = [r.get("output_spread") for (e, _), r in latest.items() if e == entry]
    spreads = [v for v in spreads if v is not None]
    return spreads[-1] if spreads else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", help="comma-separated registry names (default: all)")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--results", default=str(HERE / "export_matrix.jsonl"))
    p.add_argument("--markdown", default=str(HERE / "results_export_matrix.md"))
    p.add_argument("--timeout", type=float, default=1500, help="seconds per cell")
    p.add_argument("--max-rss-gb", type=float, default=12.0)
    p.add_argument("--summarize", action="store_true", help="only rewrite the Markdown")
    p.add_argument("--retry", action="store_true", help="run failed cells again")
    p.add_argument(
        "--rerun", action="store_true", help="run the --entries' cells again, passed ones too"
    )
    p.add_argument(
        "--no-twins", action="store_true", help="also run entries whose graph was already run"
    )
    p.add_argument(
        "--bn-gamma",
        type=float,
        default=BN_GAMMA,
        help="BatchNorm scale of the random-init models (recorded in each row)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    results = Path(args.results)
    formats = [f for f in args.formats.split(",") if f]
    if args.rerun and not args.entries:
        p.error("--rerun measures named entries again: give --entries")
    os.environ.setdefault(GAMMA_ENV, str(args.bn_gamma))
    if args.child:
        run_child(args.child, formats, results)
        return
    if not args.summarize:
        from kerastl import list_models

        entries = args.entries.split(",") if args.entries else list_models()
        # Smallest first: quick signal, the giants last.
        from kerastl.zoo import get_spec

        entries.sort(key=lambda n: get_spec(n).params)
        run_parent(
            entries,
            formats,
            results,
            args.timeout,
            args.max_rss_gb,
            args.retry,
            not args.no_twins,
            args.rerun,
        )
    print(summarize(results, Path(args.markdown)))


if __name__ == "__main__":
    main()
