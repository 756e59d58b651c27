"""The context of one training run: resolved config, strategy, data, folder, model, datasets.

:func:`open_run` makes it (config -> session -> strategy -> data -> run folder);
:func:`build_model` and :func:`make_datasets` fill in the model and the input
pipelines. Every later step of :func:`kerastl.train.train` reads and updates it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerastl import data as kdata
from kerastl.core.meta import ModelMeta
from kerastl.errors import ConfigError, DataError
from kerastl.train import runfolder
from kerastl.train._callbacks import BestCheckpoint
from kerastl.train._config import check_data_paths, check_export_name, load_config, validate_config
from kerastl.train._strategy import get_strategy, set_precision, strategy_name
from kerastl.train.runfolder import RunFolder

log = logging.getLogger(__name__)

#: Keys that do not change what a run trains (a resumed run may differ in them).
_NOT_TRAINING = {"name", "output_dir", "exist_ok", "export", "evaluate"}
_NOT_TRAINING_TRAIN = {"resume", "verbose", "tensorboard", "cache_dir"}


@dataclass
class RunContext:
    """What the steps of one :func:`kerastl.train.train` call share."""

    cfg: dict
    strategy: Any
    verbose: int
    train_ex: kdata.Examples
    val_ex: kdata.Examples | None
    callbacks: list
    folder: RunFolder
    state: dict = field(default_factory=dict)
    resuming: bool = False
    skipped: list = field(default_factory=list)
    model: Any = None
    best: Any = None
    train_ds: Any = None
    val_ds: Any = None
    monitor: str = ""
    data_report: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def global_batch(self) -> int:
        return self.cfg["train"]["batch_size"] * self.replicas

    @property
    def steps(self) -> int:
        """Training steps per epoch."""
        return max(1, math.ceil(len(self.train_ex) / self.global_batch))

    @property
    def chief(self) -> bool:
        return self.folder.chief

    @property
    def image_size(self) -> tuple[int, int] | None:
        return image_size(self.model)

    def dataset(self, ex: kdata.Examples, batch: int, **options: Any) -> Any:
        """``ex`` as a dataset at the model's input size and the config's channels."""
        channels = self.cfg["model"]["channels"]
        return kdata.make_dataset(ex, self.image_size, batch, channels=channels, **options)

    def drops_last(self, n: int) -> bool:
        """Whether training batches of ``n`` examples drop their last partial batch: only
        when it is too small to give every replica an example (a replica with none fails)."""
        return 0 < n % self.global_batch < self.strategy.num_replicas_in_sync

    def eval_batch(self, n: int) -> int:
        """A batch size for ``n`` validation examples whose last batch gives every replica
        an example (:func:`replica_batch`); the global batch on one replica."""
        return replica_batch(n, self.global_batch, self.strategy.num_replicas_in_sync)


def replica_batch(n: int, batch: int, replicas: int) -> int:
    """The largest batch size up to ``batch`` that splits evenly over ``replicas`` and whose
    last batch of ``n`` examples is empty or holds at least ``replicas`` examples: a replica
    given no example fails, and so does a first batch split unevenly (MirroredStrategy on
    two CPU devices: 9 validation examples failed at batch 8, and at 7). Validation is
    never dropped, and its metrics do not depend on the batch size.

    Example:
        >>> replica_batch(9, 8, 2), replica_batch(16, 8, 2), replica_batch(9, 8, 1)
        (6, 8, 8)
    """
    if replicas <= 1:
        return batch
    for b in range(batch - batch % replicas, replicas - 1, -replicas):
        if n % b == 0 or n % b >= replicas:
            return b
    return batch


def open_run(
    config: Any, overrides: dict | None, examples: Any, callbacks: list | None
) -> RunContext:
    """Resolve the config, start a fresh session and strategy, read the data, prepare the folder.

    Data comes before the folder: nothing is written for a run whose data cannot be read.
    """
    cfg = resolve_config(config, overrides, examples)
    if examples is None:
        check_data_paths(cfg)
    check_input_shape(cfg["model"])  # before the data is read: it needs only the config
    t = cfg["train"]
    # A fresh Keras session per run: layer-name counters restart (layer groups of some
    # backbones are declared by auto-generated names) and earlier runs' graphs are freed.
    keras.utils.clear_session()
    keras.utils.set_random_seed(cfg["seed"])
    precision = set_precision(t["precision"])
    strategy = get_strategy(t["strategy"])
    train_ex, val_ex = examples if examples is not None else load_examples(cfg)
    check_modality(cfg, train_ex, val_ex)
    check_task(cfg, train_ex, val_ex)
    warn_missing_classes(train_ex, val_ex)
    warn_duplicates(train_ex, val_ex)
    fingerprint = run_fingerprint(cfg, train_ex, val_ex)
    folder = RunFolder.for_config(cfg, fingerprint, strategy)
    ctx = RunContext(
        cfg, strategy, verbose_level(t["verbose"]), train_ex, val_ex, list(callbacks or []), folder
    )
    # Decided before prepare() rewrites the marker: every worker reads the chief's marker.
    ctx.resuming = folder.resume_refusal(fingerprint, t["resume"]) is None
    ctx.state = folder.prepare(cfg, fingerprint)
    agree_on_resume(ctx)
    ctx.skipped = report_skipped(train_ex, val_ex)
    ctx.timings.update(
        {
            "strategy": strategy_name(strategy),
            "replicas": ctx.replicas,
            "precision": precision,
            "feature_cache": "no",
        }
    )
    return ctx


def resume_point(ctx: RunContext) -> int:
    """Where this worker's saved state resumes the run, as one number (0: from the start):
    phase 1 done, then the epochs each phase's backup holds."""
    if not ctx.resuming:
        return 0
    f = ctx.folder
    done = 1 if ctx.state.get("phase1_done") else 0
    return done * 10**6 + f.backed_up_epochs("phase1") * 1000 + f.backed_up_epochs("phase2")


def agree_on_resume(ctx: RunContext) -> None:
    """Every worker of a multi-worker job resumes where the chief does.

    Each worker keeps its own backup; one killed between the chief's save of an epoch and
    its own resumed an epoch behind the chief, whose collectives then paired with the wrong
    steps (the chief reported success, the worker died). The weights after an epoch are the
    same on every worker, so a worker behind takes a copy of the chief's backup; if they
    still differ the run stops, on every worker, saying how to start over.
    """
    from kerastl.train._strategy import chiefs_value, cluster_sum, spans_workers

    if not spans_workers(ctx.strategy):
        return
    mine = resume_point(ctx)
    chief = chiefs_value(ctx.strategy, mine)
    if mine != chief and not ctx.chief:
        ours, theirs = ctx.folder.backup_root, ctx.folder.backup_root.parent / "chief"
        shutil.rmtree(ours, ignore_errors=True)
        if theirs.is_dir():
            shutil.copytree(theirs, ours)
        log.info(f"{ours}: resuming from the chief's backup (this worker's was behind)")
        mine = resume_point(ctx)
    if cluster_sum(ctx.strategy, float(mine != chief)):
        raise ConfigError(
            f"{ctx.folder.run_dir}: the workers' saved states disagree (the chief resumes at "
            f"{chief}, this worker at {mine}); start over with train.resume: false "
            "(--set train.resume=false), with the run folder shared by every worker."
        )


def resolve_config(config: Any, overrides: dict | None, examples: Any) -> dict:
    """The validated config: a YAML path loaded, or a dict with ``overrides`` applied."""
    if isinstance(config, dict):
        cfg = _with_overrides(copy.deepcopy(config), overrides, examples)
    else:
        cfg = load_config(config, overrides)
    if cfg["strategy_from"] is not None:
        raise ConfigError(
            f"strategy_from: {cfg['strategy_from']!r} is applied before training, by "
            "`kerastl train` or by kerastl.decide.resolve_strategy_from(config); pass the "
            "config it returns to kerastl.train."
        )
    return cfg


def _with_overrides(cfg: dict, overrides: dict | None, examples: Any) -> dict:
    """Apply ``overrides`` to ``cfg`` (the caller's copy, changed in place) and validate it."""
    if overrides:
        from kerastl.train._config import set_key

        for k, v in overrides.items():
            set_key(cfg, k, v)
    if examples is not None:
        cfg["data"] = {
            **(cfg.get("data") or {}),
            "path": (cfg.get("data") or {}).get("path") or "<in-memory examples>",
        }
    cfg = validate_config(cfg)
    if cfg["name"] is None:
        cfg["name"] = "run"
    check_export_name(cfg)
    return cfg


def verbose_level(value: Any) -> int:
    """``train.verbose`` as Keras' ``verbose`` (``"auto"``: a progress bar on a terminal)."""
    if value == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(value)


def image_size(model: keras.Model) -> tuple[int, int] | None:
    """The ``(height, width)`` of an image model's input, else None."""
    spec = ModelMeta.of(model).input
    shape = spec.get("shape")
    if spec.get("name") == "image" and shape and len(shape) == 3:
        return (int(shape[0]), int(shape[1]))
    return None


def load_examples(cfg: dict) -> tuple[kdata.Examples, kdata.Examples | None]:
    """Read the config's data into ``(train, validation)`` examples (validation may be None)."""
    d, m = cfg["data"], cfg["model"]
    keys = ("path_column", "label_column", "text_column", "root", "name", "data_dir", "split")
    opts = {k: d[k] for k in keys}

    def read(path: str, class_names: Any) -> kdata.Examples:
        return kdata.load(
            d["source"], path, m["task"], class_names, m["channels"], d["verify"], **opts
        )

    ex = read(d["path"], d["class_names"])
    check_modality(cfg, ex, None)  # before a split of text for an image model can fail
    if d["val_path"]:
        with kdata.held_out():  # the training classes; one absent is not scored
            return ex, read(d["val_path"], ex.class_names)
    if d["source"] == "tfds" and d["val_tfds_split"]:
        val = kdata.from_tfds(d["name"], d["data_dir"], d["val_tfds_split"], m["task"])
        return ex, val
    if d["val_split"] > 0:
        train, val = ex.split(d["val_split"], seed=cfg["seed"])
        train.skipped = ex.skipped
        return train, val
    return ex, None


#: What a backbone of each modality trains on, for :func:`check_modality`'s message.
_DATA_OF = {
    "image": "image data (a folder with one sub-folder of images per class, a CSV of image "
    "paths and labels, or an .npz of images)",
    "text": "text data (a CSV/TSV or JSONL file with 'text' and 'label' columns, or a folder "
    "with one sub-folder of .txt files per class)",
}


def check_modality(cfg: dict, train_ex: kdata.Examples, val_ex: kdata.Examples | None) -> None:
    """Raise when the data is not of the backbone's modality (text data for an image backbone,
    images for a text one), before a model is built: TensorFlow's own error is a long
    traceback ending in 'Cast string to float is not supported'."""
    from kerastl.zoo import get_spec

    backbone = cfg["model"]["backbone"]
    want = get_spec(backbone).modality
    for key, part in (("data.path", train_ex), ("data.val_path", val_ex)):
        if part is None or part.modality == want:
            continue
        path = cfg["data"].get("path" if key == "data.path" else "val_path") or part.source
        got = part.modality
        raise ConfigError(
            f"model.backbone: {backbone!r} is {_a(want)} {want} model, but {key} {path!r} "
            f"holds {'images' if got == 'image' else got} ({part.source}). Give "
            f"{_DATA_OF.get(want, want + ' data')} for this backbone, or {_a(got)} {got} "
            f"backbone for this data (kerastl models --modality {got})."
        )


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def check_task(cfg: dict, train_ex: kdata.Examples, val_ex: kdata.Examples | None) -> None:
    """Raise when the examples' labels were encoded for another task than ``model.task``."""
    from kerastl.core.heads import resolve_task

    want = resolve_task(cfg["model"]["task"]).name
    for part in (train_ex, val_ex):
        if part is not None and part.task != want:
            raise DataError(
                f"{part.source}: the labels were encoded for task={part.task!r} but "
                f"model.task is {want!r}; load the data with task={want!r}."
            )


def warn_missing_classes(train_ex: kdata.Examples, val_ex: kdata.Examples | None) -> list[str]:
    """Warn about classes with no validation example; returns their names.

    An unbalanced folder split by ``data.val_split`` can leave a rare class out of the
    validation set: its recall and F1 are then not measured.
    """
    if val_ex is None:
        return []
    train_counts = train_ex.class_counts()
    empty = [c for c, n in val_ex.class_counts().items() if n == 0]
    if empty:
        listed = ", ".join(f"{c!r} ({train_counts.get(c, 0)} training)" for c in empty)
        log.warning(
            f"no validation example of class(es) {listed}: their recall and F1 are not "
            "measured. Add examples of them, or give data.val_path a validation set "
            "with every class."
        )
    return empty


def warn_duplicates(train_ex: kdata.Examples, val_ex: kdata.Examples | None) -> int:
    """Warn when validation examples are also training examples (the same file, or rows
    and texts of the same content: duplicates in the data, which a split puts on both
    sides); returns how many. The validation scores would overstate the model.

    Example:
        >>> import numpy as np
        >>> ex = kdata.Examples("text", np.array(["a", "b", "a", "c"]), np.array([0, 1, 0, 1]),
        ...                     class_names=["x", "y"])
        >>> warn_duplicates(ex.subset([0, 1]), ex.subset([2, 3]))
        1
    """
    if val_ex is None:
        return 0
    shared, total = kdata.count_shared(train_ex, val_ex) or (0, 0)
    if shared:
        log.warning(
            f"{shared} of the {total} validation examples are also training examples "
            "(duplicates in the data): the validation scores overstate the model on new "
            "data. Remove the duplicates, or give data.val_path a separate validation set."
        )
    return shared


def run_fingerprint(cfg: dict, train_ex: kdata.Examples, val_ex: kdata.Examples | None) -> str:
    """A hash of what the run trains: the training keys of the config and both data sets."""
    relevant = {k: v for k, v in cfg.items() if k not in _NOT_TRAINING}
    relevant["train"] = {k: v for k, v in cfg["train"].items() if k not in _NOT_TRAINING_TRAIN}
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    h.update(train_ex.fingerprint().encode())
    h.update((val_ex.fingerprint() if val_ex is not None else "-").encode())
    return h.hexdigest()[:16]


def report_skipped(ex: kdata.Examples, val: kdata.Examples | None) -> list[tuple[str, str]]:
    """Log the examples both data sets skipped (unreadable files, rows with an empty text or
    label: ``file:line``); returns them."""
    skipped = list(ex.skipped) + (list(val.skipped) if val is not None else [])
    if skipped:
        log.warning(f"skipped {len(skipped)} example(s):")
        for p, why in skipped[:20]:
            log.warning(f"  {p}: {why}")
        if len(skipped) > 20:
            log.warning(f"  ... and {len(skipped) - 20} more (see data_report.json)")
    return skipped


def build_model(ctx: RunContext) -> keras.Model:
    """The uncompiled model of ``model`` (in the strategy's scope), frozen per ``model.freeze``."""
    from kerastl.builder import build

    m, ex = ctx.cfg["model"], ctx.train_ex
    task = m["task"]
    if task == "regression":
        num = int(ex.y.shape[1])
    elif task in ("binary", "embedding"):
        num = None
    else:
        num = len(ex.class_names or [])
    class_names = ex.class_names if task in ("classification", "multilabel", "binary") else None
    with ctx.strategy.scope():
        model = build(
            m["backbone"],
            task=task,
            num_classes=num,
            weights=m["weights"],
            input_shape=_input_shape(m),
            freeze=m["freeze"],
            dropout=m["dropout"],
            pooling=m["pooling"],
            class_names=class_names,
            train_batchnorm=m["train_batchnorm"],
            embedding_dim=m["embedding_dim"],
            compile=False,
            **(m["options"] or {}),
        )
    meta = ModelMeta.of(model)
    kdata.check_head(ex, meta.num_outputs, meta.task, None)
    if task == "regression":
        start_at_target_mean(model, ex.y)
    if ctx.cfg["finetune"]["epochs"]:  # phase 2's policy fails now, not after phase 1
        from kerastl.freeze import check_policy

        try:
            check_policy(model, ctx.cfg["finetune"]["freeze"])
        except ConfigError as exc:
            raise ConfigError(f"finetune.{exc}") from None
    return model


def start_at_target_mean(model: keras.Model, y: Any) -> None:
    """Set a regression head's bias to the training targets' mean, so the head starts at
    the mean predictor and learns the deviations from it, not the targets' level first
    (targets 5 / 15 / 25 on 36 digit images: first-epoch loss 64 instead of 304).

    Example:
        >>> import keras, numpy as np
        >>> x = keras.Input((3,))
        >>> m = keras.Model(x, keras.layers.Dense(2, name="predictions")(x))
        >>> start_at_target_mean(m, np.array([[10.0, -1.0], [20.0, 1.0]]))
        >>> m.get_layer("predictions").bias.numpy().tolist()
        [15.0, 0.0]
    """
    if y is None:
        return
    mean = np.asarray(y, dtype=np.float64).reshape(len(y), -1).mean(axis=0)
    head = model.get_layer("predictions")
    if tuple(head.bias.shape) == mean.shape:
        head.bias.assign(mean.astype(head.bias.dtype))


def check_input_shape(m: dict) -> None:
    """The backbone takes ``model.input_size`` (a ViT's patch multiple, a minimum side...).

    Checked before the run folder is written, as the data is: the build would refuse it.
    """
    from kerastl.builder import BUILD_ARGUMENTS
    from kerastl.zoo import get_adapter

    own = {k: v for k, v in (m["options"] or {}).items() if k not in BUILD_ARGUMENTS}
    get_adapter(m["backbone"]).resolve_input_shape(_input_shape(m), **own)


def _input_shape(m: dict) -> tuple[int, int, int] | None:
    """``model.input_size`` and ``channels`` as an input shape (None: the backbone's own)."""
    size = m["input_size"]
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        return (h, w, m["channels"])
    if m["channels"] != 3:
        from kerastl.zoo import get_spec

        s = get_spec(m["backbone"]).input_size
        return (s, s, m["channels"])
    return None


def make_datasets(ctx: RunContext) -> None:
    """The training and validation pipelines, the monitored metric, the best checkpoint."""
    cfg, d = ctx.cfg, ctx.cfg["data"]
    ctx.train_ds = ctx.dataset(
        ctx.train_ex,
        ctx.global_batch,
        shuffle=d["shuffle"],
        seed=cfg["seed"],
        augment=d["augment"],
        cache=data_cache(cfg, training=True),
        drop_remainder=ctx.drops_last(len(ctx.train_ex)),
    )
    if ctx.val_ex is not None:
        batch = ctx.eval_batch(len(ctx.val_ex))
        ctx.val_ds = ctx.dataset(ctx.val_ex, batch, cache=data_cache(cfg))
    monitor = cfg["train"]["monitor"]
    ctx.monitor = monitor if ctx.val_ds is not None else monitor.replace("val_", "")
    ctx.data_report = _data_report(ctx)
    if ctx.chief:
        runfolder.write_json(runfolder.run_path(ctx.folder.out_dir, "data_report"), ctx.data_report)
    ctx.best = BestCheckpoint(
        ctx.folder.model_path,
        target=ctx.model,
        monitor=ctx.monitor,
        verbose=int(ctx.verbose > 0),
        record=runfolder.run_path(ctx.folder.out_dir, "best"),
        keep=cfg["train"]["keep"],
    )
    if ctx.resuming:  # compare with the best model an earlier process saved (the chief's
        # files, on every worker: a resumed multi-worker job needs the run folder shared)
        chief = ctx.folder.run_dir
        ctx.best.resume(runfolder.run_path(chief, "best"), runfolder.run_path(chief, "model"))
    ctx.folder.logs_dir.mkdir(parents=True, exist_ok=True)


def data_cache(cfg: dict, training: bool = False) -> bool | str:
    """The ``cache`` of a pipeline per ``data.cache``: false none, true in memory; a file
    path caches the training set there (``training``), the others in memory."""
    cache = cfg["data"]["cache"]
    return cache if training and isinstance(cache, str) else bool(cache)


def _data_report(ctx: RunContext) -> dict:
    """``data_report.json``: source, sizes, classes, input shape and skipped files."""
    train_ex, val_ex = ctx.train_ex, ctx.val_ex
    return {
        "source": train_ex.source,
        "modality": train_ex.modality,
        "num_train": len(train_ex),
        "num_val": len(val_ex) if val_ex is not None else 0,
        "class_names": train_ex.class_names,
        "train_class_counts": train_ex.class_counts(),
        "val_class_counts": val_ex.class_counts() if val_ex is not None else {},
        "input_shape": ModelMeta.of(ctx.model).input.get("shape"),
        "fingerprint": train_ex.fingerprint(),
        "split_identity": kdata.split_identity(train_ex, val_ex),
        "skipped": [{"path": p, "reason": r} for p, r in ctx.skipped],
    }
