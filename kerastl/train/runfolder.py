"""The run folder: its standard files, and the state that lets an interrupted run resume.

The model card (the folder's README.md) is written by :mod:`kerastl.train.card`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerastl.core.safety import atomic_write_text
from kerastl.train._strategy import chiefs_value, is_chief, worker_id, write_dir

log = logging.getLogger(__name__)

RUN_FILES = {
    "config": "config.yaml",
    "model": "model.keras",
    "metrics": "metrics.json",
    "history": "logs/history.csv",
    "tensorboard": "logs/tensorboard",
    "data_report": "data_report.json",
    "card": "README.md",
    "plots": "plots",
    "export": "export",
    "state": "state",
    "best": "state/best.json",  # the best checkpoint's value, for a resumed run
    "backup": "backup",
    "timings": "timings.json",
}


def run_path(run_dir: str | os.PathLike, what: str) -> Path:
    """Path of a standard file of a run folder (see :data:`RUN_FILES`)."""
    return Path(run_dir) / RUN_FILES[what]


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write JSON atomically (temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=1, default=_jsonable) + "\n")


def _jsonable(v: Any) -> Any:
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(v)


def write_config(run_dir: str | os.PathLike, config: dict) -> Path:
    """Write the resolved config as YAML (re-runnable with ``kerastl train``)."""
    import yaml

    path = run_path(run_dir, "config")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Resolved kerastl run config (every default filled in).\n"
        "# Re-run with: kerastl train "
        + str(path)
        + "\n"
        + yaml.safe_dump(config, sort_keys=False),
        encoding="utf-8",
    )
    return path


def read_config(run_dir: str | os.PathLike) -> dict:
    """The resolved config of a run folder."""
    import yaml

    from kerastl.errors import ConfigError

    path = run_path(run_dir, "config")
    if not path.is_file():
        raise ConfigError(
            f"RUN_DIR: {str(run_dir)!r} is not a kerastl run folder (no {RUN_FILES['config']})."
        )
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``, or ``{}`` when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class RunFolder:
    """The folders of one run as this process sees them, and the rules for resuming it.

    ``run_dir`` is the run folder. ``out_dir`` is where this process writes: the run
    folder on the chief; on another worker of a multi-worker job, a temporary folder
    (every worker runs the same saving code, but only the chief's files are kept).

    Example:
        >>> folder = RunFolder("runs/exp1", "runs/exp1", chief=True, worker="chief")
        >>> folder.model_path, str(folder.backup_root)
        ('runs/exp1/model.keras', 'runs/exp1/backup/chief')
    """

    run_dir: str
    out_dir: str
    chief: bool
    worker: str

    @classmethod
    def for_config(
        cls, cfg: dict, fingerprint: str | None = None, strategy: Any = None
    ) -> RunFolder:
        """The folder of ``output_dir/name`` (making this worker's temporary folder if needed).

        A finished run is kept: unless ``exist_ok``, this run takes the first of
        ``name-2``, ``name-3``, ... that is free for it (:func:`free_run_dir`), and
        ``cfg["name"]`` follows it. Under a multi-worker ``strategy`` every worker takes
        the chief's choice: a worker looking before the chief has marked the previous run
        of ``name`` finished would otherwise take ``name`` while the chief takes ``name-2``.
        """
        run_dir = free_run_dir(cfg["output_dir"], cfg["name"], cfg["exist_ok"], fingerprint)
        if strategy is not None:
            k = 1 if run_dir.name == cfg["name"] else int(run_dir.name.rsplit("-", 1)[1])
            k = chiefs_value(strategy, k)
            run_dir = Path(cfg["output_dir"]) / (cfg["name"] if k == 1 else f"{cfg['name']}-{k}")
        if run_dir.name != cfg["name"]:
            log.info(
                f"{Path(cfg['output_dir']) / cfg['name']} holds a finished run, which is kept: "
                f"this run is {run_dir} (exist_ok: true, or --exist-ok, replaces the finished run)"
            )
            cfg["name"] = run_dir.name
        return cls(str(run_dir), write_dir(str(run_dir)), is_chief(), worker_id())

    @property
    def backup_root(self) -> Path:
        return Path(self.run_dir) / RUN_FILES["backup"] / self.worker

    @property
    def state_dir(self) -> Path:
        return Path(self.out_dir) / RUN_FILES["state"]

    @property
    def logs_dir(self) -> Path:
        return Path(self.out_dir) / "logs"

    @property
    def history_csv(self) -> Path:
        return run_path(self.out_dir, "history")

    @property
    def model_path(self) -> str:
        return str(run_path(self.out_dir, "model"))

    @property
    def phase1_weights(self) -> Path:
        """The weights saved at the end of phase 1 (a resumed run starts from them)."""
        return self.state_dir / "phase1.weights.h5"

    @property
    def _marker(self) -> Path:
        return marker_path(self.run_dir)

    def resume_refusal(self, fingerprint: str, resume: bool) -> str | None:
        """Why the saved state of this run folder must not be resumed (None: resume it)."""
        if not resume:
            return "train.resume is false"
        leftovers = [p for p in (self.backup_root, self.state_dir, self.logs_dir) if p.exists()]
        if not leftovers:
            return None
        if not self._marker.is_file():
            return "its saved state records no config/data fingerprint"
        prev = json.loads(self._marker.read_text())
        if prev.get("finished"):
            return "the earlier run with this name finished"
        if prev.get("fingerprint") != fingerprint:
            return "the config or data changed since the interrupted run"
        return None

    def prepare(self, cfg: dict, fingerprint: str) -> dict:
        """Create the folder; returns the saved state of an unfinished, unchanged run, else {}."""
        state: dict = {}
        reason = self.resume_refusal(fingerprint, cfg["train"]["resume"])
        if reason is not None:
            if reason != "train.resume is false" and (
                self.state_dir.exists() or self.logs_dir.exists()
            ):
                log.info(
                    f"{self.run_dir}: starting fresh ({reason}); its saved state, "
                    "backups and logs are not reused."
                )
            for p in (self.backup_root, self.state_dir, self.logs_dir):
                shutil.rmtree(p, ignore_errors=True)
            if self.chief:
                self._clear_outputs()
        else:
            state = self.read_state()
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.chief:
            write_json(self.state_dir / "run.json", {"fingerprint": fingerprint, "finished": False})
            write_config(self.out_dir, cfg)
        return state

    def _clear_outputs(self) -> None:
        """Remove what an earlier run in this folder reported (its model, metrics, plots,
        card, timings, export): a fresh run must not sit beside another run's results."""
        gone = []
        for what in ("model", "metrics", "plots", "card", "export", "timings"):
            p = run_path(self.out_dir, what)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
            else:
                continue
            gone.append(p.name)
        if gone:
            log.info(f"{self.run_dir}: removed the earlier run's {', '.join(gone)}")

    @property
    def phase1_saved(self) -> Path:
        """The phase-1 weights a resumed run reads: the chief's, on every worker (the other
        workers write theirs to temporary folders; a resumed job needs the folder shared)."""
        return Path(self.run_dir) / RUN_FILES["state"] / self.phase1_weights.name

    def read_state(self) -> dict:
        """The state the chief saved after phase 1 (``{}`` unless both its files are there)."""
        path = self.phase1_saved.parent / "state.json"
        if path.is_file() and self.phase1_saved.is_file():
            return json.loads(path.read_text())
        return {}

    def write_state(self, model: Any, state: dict) -> None:
        """Save the model's weights and ``state`` at the end of phase 1."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "phase1.tmp.weights.h5"
        try:
            model.save_weights(str(tmp))
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: free what the failed write took
            raise
        save_lora(model, self.phase1_weights)
        os.replace(tmp, self.phase1_weights)
        write_json(self.state_dir / "state.json", state)

    def update_state(self, fields: dict) -> None:
        """Add ``fields`` to the saved state (``state.json``), keeping what it holds."""
        path = self.state_dir / "state.json"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {**(read_json(path) if path.is_file() else {}), **fields})

    def epochs_done(self, fallback: int) -> int:
        """Epochs in the CSV log, which spans every process of a resumed run."""
        from kerastl.train._plots import read_history

        epochs = read_history(self.history_csv).get("epoch")
        return int(max(epochs)) + 1 if epochs else fallback

    def backed_up_epochs(self, phase: str) -> int:
        """Epochs the latest backup of ``phase`` (``"phase1"``/``"phase2"``) holds (0: none).

        Counted from the run's first epoch (phase 2's backup includes phase 1's epochs).
        """
        path = self.backup_root / phase / "training_metadata.json"
        try:
            return int(json.loads(path.read_text()).get("epoch", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return 0

    def close(self) -> None:
        """Mark the run finished (chief) and delete the backups and a worker's temporary files."""
        if self.chief:
            marker = self.state_dir / "run.json"
            write_json(marker, {**read_json(marker), "finished": True})
        shutil.rmtree(self.backup_root, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.backup_root.parent.rmdir()  # only when no other worker's backup is left
        self.drop_worker_files()

    def drop_worker_files(self) -> None:
        """Delete a non-chief worker's temporary folder (its files only kept the collectives
        in step); on the chief, nothing."""
        if not self.chief:
            shutil.rmtree(self.out_dir, ignore_errors=True)


def marker_path(run_dir: str | os.PathLike) -> Path:
    """The run folder's marker: its config/data fingerprint and whether it finished."""
    return Path(run_dir) / RUN_FILES["state"] / "run.json"


def holds_finished_run(run_dir: str | os.PathLike) -> bool:
    """``run_dir`` holds a run's results: its marker says finished, or (a folder written
    before markers, or whose marker was lost) it has a ``model.keras`` and no marker.

    Example:
        >>> import tempfile
        >>> holds_finished_run(tempfile.mkdtemp())
        False
    """
    marker = marker_path(run_dir)
    if marker.is_file():
        return bool(read_json(marker).get("finished"))
    return run_path(run_dir, "model").is_file()


def free_run_dir(
    output_dir: str | os.PathLike,
    name: str,
    exist_ok: bool = False,
    fingerprint: str | None = None,
) -> Path:
    """Where a run of ``name`` goes: ``output_dir/name`` unless, with ``exist_ok`` false, it
    holds a finished run; then the first of ``name-2``, ``name-3``, ... that is empty or holds
    this same run interrupted (marker ``fingerprint`` equal: it resumes). Another run's
    folder, finished or not, is never taken.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> free_run_dir(out, "exp1").name
        'exp1'
    """
    base = Path(output_dir)
    first = base / name
    if exist_ok or not holds_finished_run(first):
        return first
    k = 2
    while True:
        run_dir = base / f"{name}-{k}"
        if not run_dir.exists():
            return run_dir
        marker = marker_path(run_dir)
        state = read_json(marker) if marker.is_file() else {"finished": True}
        if not state.get("finished") and fingerprint and state.get("fingerprint") == fingerprint:
            return run_dir
        k += 1


def _kept_model(cfg: dict, phase: int, training_finished: bool) -> str:
    """What an unfinished run's model.keras holds, by ``train.keep``."""
    if cfg.get("train", {}).get("keep", "best") == "best":
        return "its best checkpoint" + ("" if training_finished else " so far")
    if training_finished:
        return "its last epoch (keep: last)"
    return (
        "the model phase 1 ended with (keep: last writes model.keras once per phase; "
        "the fine-tuning epochs since are only in its backup)"
        if phase == 2
        else "the model of the epoch phase 1 was interrupted in (keep: last)"
    )


def unfinished_progress(run_dir: str | os.PathLike, cfg: dict) -> dict | None:
    """Where an interrupted run stopped, or None for a finished (or pre-marker) run.

    Returns ``{"phase", "epochs_backed_up", "epochs_planned", "training_finished",
    "stopped_early", "message"}``: the phase it was in, the epochs its latest backup
    holds, the epochs it was to train, whether its training was over (killed while it
    was scored or exported) and whether early stopping ended a phase. A phase that early
    stopping ended counts the epochs it ran: phase 1 stopped after 3 of 10 epochs with 5
    fine-tuning epochs to go plans 8, not 15.

    Example:
        >>> unfinished_progress("runs/no-such-run", {}) is None
        True
    """
    marker = marker_path(run_dir)
    if not marker.is_file() or read_json(marker).get("finished", True):
        return None
    folder = RunFolder(str(run_dir), str(run_dir), chief=True, worker=worker_id())
    state_file = folder.state_dir / "state.json"
    state = read_json(state_file) if state_file.is_file() else {}
    epochs1, epochs2 = int(cfg["train"]["epochs"]), int(cfg["finetune"]["epochs"])
    phase1_done = bool(folder.read_state().get("phase1_done")) or epochs1 == 0
    done1 = int(state.get("phase1_epochs", epochs1)) if phase1_done else None
    if done1 is None:  # in phase 1: its backup; the plan as configured
        phase, done, planned = 1, folder.backed_up_epochs("phase1"), epochs1 + epochs2
    elif state.get("phase2_done") or not epochs2:  # training over: the epochs it ran
        phase = 2 if epochs2 else 1
        done = planned = int(state.get("epochs_done", done1))
    else:  # in phase 2: phase 1 counts the epochs it ran
        phase, planned = 2, done1 + epochs2
        done = folder.backed_up_epochs("phase2") or done1
    training_finished = done1 is not None and (bool(state.get("phase2_done")) or not epochs2)
    stopped_early = done1 is not None and (
        done1 < epochs1 or (training_finished and done < done1 + epochs2)
    )
    if training_finished:
        how = (
            f"early stopping ended its training after {done} of {epochs1 + epochs2} epochs"
            if stopped_early
            else f"its training finished ({done} epochs)"
        )
        message = (
            f"run not finished: {how}, but it stopped before its metrics, exports and model "
            f"card were written; scoring {_kept_model(cfg, phase, True)}"
        )
    else:
        early = (
            f" (early stopping ended phase 1 after {done1} of {epochs1} epochs)"
            if done1 is not None and done1 < epochs1
            else ""
        )
        message = (
            f"run not finished: phase {phase}, epoch {done} of {planned} backed up{early}; "
            f"scoring {_kept_model(cfg, phase, False)}"
        )
    return {
        "phase": phase,
        "epochs_backed_up": done,
        "epochs_planned": planned,
        "training_finished": training_finished,
        "stopped_early": stopped_early,
        "message": message,
    }


def save_lora(model: Any, weights_path: str | os.PathLike, epoch: int | None = None) -> None:
    """Beside a ``.weights.h5`` file, the LoRA layers' unmerged kernels and factors
    (``<weights>.lora.npz``, written atomically), which Keras' weights file merges and
    cannot give back; nothing for a model without LoRA."""
    import numpy as np

    from kerastl.zoo.sources.lora import lora_factors

    factors = lora_factors(model)
    if not factors:
        return
    path = Path(f"{weights_path}.lora.npz")
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __epoch__=np.asarray(-1 if epoch is None else epoch), **factors)
    os.replace(tmp, path)


def load_lora(model: Any, weights_path: str | os.PathLike, epoch: int | None = None) -> bool:
    """After ``model.load_weights(weights_path)``: its LoRA layers back as they were saved
    (:func:`save_lora`, of the same ``epoch``), else with fresh ``A`` factors so they can
    train on (Keras loads both factors as zero). True when restored exactly."""
    import numpy as np

    from kerastl.zoo.sources.lora import lora_layers, reseed_lora, set_lora_factors

    if not lora_layers(model):
        return True
    path = Path(f"{weights_path}.lora.npz")
    if path.is_file():
        with np.load(path) as saved:
            factors = {k: saved[k] for k in saved.files if k != "__epoch__"}
            same = epoch is None or int(saved["__epoch__"]) in (-1, epoch)
        if same and set_lora_factors(model, factors):
            return True
    log.warning(
        f"{weights_path}: no LoRA factors saved beside these weights; the adapters go on "
        "from the merged weights with fresh factors (the run is not resumed exactly)"
    )
    reseed_lora(model)
    return False
