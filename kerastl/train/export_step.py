"""The export step of a run: its best model exported, calibrated and validated on its data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerastl import data as kdata
from kerastl.train.context import image_size

log = logging.getLogger(__name__)

#: int8 calibration sample drawn from the training data (the converter's warning threshold).
CALIBRATION_SAMPLES = 300
#: Validation examples every exported file is compared on (stratified random sample).
EXPORT_VALIDATION_SAMPLES = 128


def sample_indices(ex: kdata.Examples, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` indices of ``ex``: a class-stratified random sample where there are classes.

    Folder data is ordered by class, so the first ``n`` would be one class; this
    keeps each class's share (sklearn's ``train_test_split(stratify=...)``).

    Example:
        >>> ex = kdata.from_numpy(np.zeros((40, 4, 4, 3), "uint8"), [0] * 30 + [1] * 10)
        >>> np.bincount(ex.y[sample_indices(ex, 8, seed=0)]).tolist()
        [6, 2]
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ex))
    if len(ex) <= n:
        return idx
    labels = None
    if ex.task in ("classification", "binary", "embedding") and ex.class_names:
        labels = np.asarray(ex.y).reshape(len(ex), -1)[:, 0].astype(int)
    try:
        chosen, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # a class with one example cannot be stratified
        chosen, _ = train_test_split(idx, train_size=n, random_state=seed)
    return np.sort(chosen)


def _materialise(ex: kdata.Examples, indices: np.ndarray, model: keras.Model, cfg: dict):
    """Inputs (decoded, resized as in training) and labels of ``ex[indices]``."""
    sample = ex.subset(indices)
    ds = kdata.make_dataset(
        sample, image_size(model), len(sample), cache=False, channels=cfg["model"]["channels"]
    )
    x, _ = next(iter(ds))
    return x.numpy(), sample


def _calibration(
    model: keras.Model, cfg: dict, train_ex: kdata.Examples, int8: bool
) -> tuple[Any, Any]:
    """The int8 calibration inputs and their description (both None without int8)."""
    if not int8:
        return None, None
    indices = sample_indices(train_ex, CALIBRATION_SAMPLES, cfg["seed"] + 1)
    x_cal, cal_sample = _materialise(train_ex, indices, model, cfg)
    counts = cal_sample.class_counts()
    info = {
        "source": "training data, "
        + ("class-stratified random sample" if counts else "random sample"),
        "samples": len(cal_sample),
        "class_counts": counts,
    }
    per_class = f", per class {counts}" if counts else ""  # none for regression
    log.info(f"int8 calibration: {len(cal_sample)} training examples{per_class}")
    return x_cal, info


def export_run(
    model_path: str,
    cfg: dict,
    out_dir: str,
    train_ex: kdata.Examples,
    val_ex: kdata.Examples | None,
) -> Any:
    """Export the run's best model; raises when the export fails (the run is kept).

    int8 files are calibrated on a class-stratified random sample of the training
    data (:data:`CALIBRATION_SAMPLES` where the data has them); every file is
    validated on a stratified sample of the validation data, with its labels, so the
    report gives the accuracy with and without quantisation.
    """
    formats = cfg["export"]["formats"]
    if not formats:
        return None
    import kerastl.core.heads  # noqa: F401 - registers the serializable loss
    import kerastl.core.layers  # noqa: F401 - registers ImagePreprocessing before loading
    from kerastl.builder import load_model
    from kerastl.export import export

    model = load_model(model_path)
    inputs = run_inputs(model, cfg, train_ex, val_ex, "int8" in cfg["export"]["quantize"])
    report = export(
        model,
        str(Path(out_dir) / "export"),
        formats=formats,
        quantize=cfg["export"]["quantize"],
        calibration_data=inputs.calibration,
        validation_data=inputs.validation,
        name=cfg["export"]["name"] or cfg["name"],
        version=cfg["export"]["version"],
        overwrite=True,  # a rerun's files replace the last run's once they pass validation
        max_validation_samples=EXPORT_VALIDATION_SAMPLES,
        max_calibration_samples=CALIBRATION_SAMPLES,
    )
    inputs.record(report, Path(out_dir) / "export")
    _print_export_summary(report, formats, out_dir, inputs.examples)
    return report


@dataclass
class RunInputs:
    """What a run's files are validated and calibrated on: ``validation`` (inputs, with
    labels for labelled tasks), ``calibration`` (raw inputs), and how each was drawn."""

    validation: Any
    calibration: Any
    calibration_info: dict
    examples: str

    def record(self, report: dict, export_dir: Path) -> None:
        """Name the examples and the calibration sample in ``report`` (and its files)."""
        report["calibration"] = self.calibration_info
        record_validation_source(report, export_dir, f"{self.examples}, {SAMPLE}")


def run_inputs(
    model: Any, cfg: dict, train_ex: kdata.Examples, val_ex: Any, int8: bool
) -> RunInputs:
    """The run's export inputs: a stratified sample of its validation examples (its
    training examples without validation data) and, with ``int8``, of its training
    examples to calibrate on."""
    val_source = val_ex if val_ex is not None else train_ex
    indices = sample_indices(val_source, EXPORT_VALIDATION_SAMPLES, cfg["seed"])
    x_val, val_sample = _materialise(val_source, indices, model, cfg)
    labelled = cfg["model"]["task"] in ("classification", "binary", "multilabel", "regression")
    calibration, calibration_info = _calibration(model, cfg, train_ex, int8)
    validation = (x_val, val_sample.y) if labelled else x_val
    return RunInputs(
        validation, calibration, calibration_info, validation_examples(val_ex is not None)
    )


def rerun_inputs(run_dir: str | Path, model: Any, int8: bool) -> RunInputs:
    """:func:`run_inputs` of a finished run, for exporting its ``model.keras`` again: the
    run's data loaded from its ``config.yaml`` and split as it was.

    Raises:
        KerastlError / OSError: the data cannot be loaded as the run saw it (moved,
            changed: :func:`kerastl.train.evaluate.check_same_split`).
    """
    from kerastl.train import runfolder
    from kerastl.train._config import validate_config
    from kerastl.train.context import load_examples
    from kerastl.train.evaluate import check_same_split

    where = str(runfolder.run_path(run_dir, "config"))
    cfg = validate_config(runfolder.read_config(run_dir) or {}, where)
    train_ex, val_ex = load_examples(cfg)
    check_same_split(run_dir, cfg, train_ex, val_ex)
    return run_inputs(model, cfg, train_ex, val_ex, int8)


#: How the examples the exported files are compared on were drawn.
SAMPLE = "stratified random sample"


def validation_examples(has_validation: bool) -> str:
    """What the exported files are validated on: the validation examples, or the training
    examples when the run has no validation data."""
    return "validation examples" if has_validation else "training examples (no validation data)"


def record_validation_source(report: dict, export_dir: Path, source: str | None) -> None:
    """Name the examples in the report and in ``export_report.{json,md}``, which
    :func:`kerastl.export.export` wrote saying only ``validation_data`` (``None``: keep
    that name; the report files are written again for the calibration's)."""
    if source is not None:
        report["validation"]["source"] = source
    if (export_dir / "export_report.json").is_file():
        from kerastl.export.report import write

        write(report, export_dir)


def _print_export_summary(report: dict, formats: list, out_dir: str, examples: str) -> None:
    log.info(f"exported {formats} to {Path(out_dir) / 'export'}")
    for art in report.get("artifacts", []):
        metric = (art.get("parity") or {}).get("metric")
        if metric:
            log.info(
                f"  {art['path']}: {metric['name']} {metric['artifact']:.4f} "
                f"(Keras float32 {metric['keras']:.4f}) on {report['validation']['samples']} "
                f"{examples}"
            )
