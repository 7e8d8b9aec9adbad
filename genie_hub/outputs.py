"""What a run leaves on disk: the output folder layout and the run record (`run.json`).

    OUT/model/     the quantized model (config.json with quantization_config, genie_model.safetensors,
                   preprocessor_config.json, README.md): a model repo
    OUT/dataset/   the synthetic images (data/*.parquet + README.md): a datasets repo
    OUT/work/      synthesis shards and reconstruction state: what makes a killed run resumable
    OUT/run.json   settings, command, versions, per-unit errors and results

`RunRecord` owns the `run.json` schema; the pipeline writes it, the cards and publishing read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .fileio import recover_interrupted_swaps, remove_dead_temporaries, remove_path, write_json

RUN_FILE = "run.json"
SETTINGS_FILE = "settings.json"
"""Written to OUT/work/ before any compute: the settings a run in this folder was started with."""
THREADS_FILE = "threads.json"
"""OUT/work/threads.json: the torch thread counts of the runs that computed in the folder (`record_threads`)."""
ELAPSED_FILE = "elapsed.json"
"""OUT/work/elapsed.json: the wall time and number of the commands that computed in the folder (`add_elapsed`)."""
LOCK_FILE = ".lock"
"""OUT/work/.lock: flock-ed by the run writing the folder, and holding its process id (`OutputLayout.lock`)."""
_HELD_LOCKS: dict[str, int] = {}  # lock file -> open descriptor, for the folders this process holds


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def synthetic_dir(self) -> Path:
        return self.work_dir / "synthetic"

    @property
    def reconstruction_state(self) -> Path:
        return self.work_dir / "reconstruction.safetensors"

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def settings_file(self) -> Path:
        return self.work_dir / SETTINGS_FILE

    @property
    def lock_file(self) -> Path:
        return self.work_dir / LOCK_FILE

    @property
    def threads_file(self) -> Path:
        return self.work_dir / THREADS_FILE

    @property
    def elapsed_file(self) -> Path:
        return self.work_dir / ELAPSED_FILE

    def earlier_elapsed(self) -> tuple[float, int]:
        """(wall seconds, number) of the earlier commands that computed in this folder: a run resumed after an
        interrupt, or rerun to add an evaluation, took all of them, not only the last one's minutes."""
        try:
            data = json.loads(self.elapsed_file.read_text(encoding="utf-8"))
            return max(0.0, float(data["seconds"])), max(0, int(data["commands"]))
        except (OSError, ValueError, TypeError, KeyError):
            return 0.0, 0

    def add_elapsed(self, seconds: float) -> None:
        """Count one more command of `seconds` (called as it ends, however it ends; a process killed outright
        is not counted)."""
        earlier, commands = self.earlier_elapsed()
        write_json(self.elapsed_file, {"seconds": round(earlier + seconds, 1), "commands": commands + 1})

    def record_threads(self, threads: int) -> list[int]:
        """Add `threads` (torch's CPU thread count) to the counts the runs computing in this folder used, and
        return them all: CPU results are bit-identical only at one count, so a run resumed under another one is
        a mix of two roundings, which its record must not present as reproducible at either."""
        path = self.threads_file
        try:
            seen = [int(n) for n in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError):
            seen = []
        counts = sorted({*seen, int(threads)})
        if counts != seen:
            write_json(path, counts)
        return counts

    def lock(self) -> None:
        """Hold this folder for this process until `unlock` (or the process's end, a kill included): a second run
        started into it (another shell, the same command twice) would overwrite the first one's settings and
        calibrate it on its own images. An advisory lock (flock) on `work/.lock`, which holds the holder's pid for
        the message; where the system has none (Windows), the folder is not locked."""
        try:
            import fcntl
        except ImportError:
            return
        if str(self.lock_file.resolve()) in _HELD_LOCKS:  # this process holds it already
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"Cannot open the lock file {self.lock_file} ({exc.strerror or exc}). Remove it (it "
                              "is genie_hub's, and only marks a running run) and run the command again.") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(handle, 32).decode("ascii", errors="replace").strip() or "unknown"
            os.close(handle)
            raise ConfigError(
                f"Another genie_hub run (process {holder}) is writing to {self.root}. Wait for it to finish (run "
                "the same command afterwards to reuse its work), or use another -o.") from None
        os.ftruncate(handle, 0)
        os.write(handle, str(os.getpid()).encode("ascii"))
        _HELD_LOCKS[str(self.lock_file.resolve())] = handle

    def unlock(self) -> None:
        """Let other runs write this folder again (a no-op when this process does not hold it)."""
        held = _resolved(self.lock_file)  # None under a link loop: nothing was locked there
        handle = _HELD_LOCKS.pop(str(held), None) if held is not None else None
        if handle is not None:
            os.close(handle)  # closing the descriptor releases the flock

    def claim(self, settings: dict[str, Any], overwrite: bool = False, inputs: tuple[str | Path, ...] = (),
              data_folders: tuple[str | Path, ...] = ()) -> None:
        """Check, before any compute, that a run with `settings` may write here, and record them.

        Allowed: a missing or empty folder, or a genie_hub output folder whose run (finished: run.json, or
        interrupted: work/settings.json) had the same settings, which the run then resumes. Anything else is
        refused, unless `overwrite`, which deletes this folder's model/, dataset/, work/ and run.json (and
        nothing else) first. `inputs` (the model, a few-shot folder) must not lie in what the run replaces or
        deletes: `-o ./proj --overwrite` on `./proj/model` would otherwise delete the model it quantizes.
        `data_folders` (a few-shot or evaluation folder, read file by file) must not hold this folder."""
        root = self.root
        self._refuse_inputs_inside(inputs)
        self._refuse_inside_data(data_folders)
        self._refuse_nesting()
        if str(root).strip() in ("", "."):
            raise ConfigError("The output folder is empty or '.': genie_hub would write model/, dataset/, work/ "
                              "and run.json into the current folder. Pass a folder of their own with -o.")
        for path in (*reversed(root.parents), root, self.model_dir, self.dataset_dir, self.work_dir):
            if path.is_symlink() and not path.exists():  # mkdir would fail with a bare "File exists"
                raise ConfigError(
                    f"{path} is a link to {os.readlink(path)}, which "
                    + ("leads back to itself (a link loop). Remove the link." if _resolved(path) is None else
                       "does not exist (a disk that is not mounted?). Create the folder it points to, or remove the "
                       "link."))
        if root.exists() and not root.is_dir():
            raise ConfigError(f"The output folder {root} is a file. Pass a folder with -o.")
        for sub in (self.model_dir, self.dataset_dir, self.work_dir):
            if sub.exists() and not sub.is_dir():
                raise ConfigError(f"{sub} is a file, but genie_hub needs a folder there. Move it away or use "
                                  "another -o.")
        existing = next((p for p in (root, *root.parents) if p.exists()), None)
        if existing is not None and existing != root and not existing.is_dir():
            raise ConfigError(f"Cannot create the output folder {root}: {existing} is a file, not a folder. Pass "
                              "a folder path with -o.")
        if existing is None or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"Cannot write to the output folder {root}: {existing} is not writable. Pass a "
                              "folder you can write to with -o.")
        holds_results = self.holds_results()
        previous = self._previous_settings() if holds_results else None
        changed = settings_change(previous, settings) if previous is not None else None
        start_over = overwrite or (holds_results and (previous is None or changed is not None))
        if start_over and not overwrite:
            if previous is None:
                what = ("holds a run of an older genie_hub that did not record its settings" if
                        self.run_file.exists() else "is not empty and is not a genie_hub output folder")
                raise ConfigError(
                    f"The output folder {root} {what}, so its files could be overwritten. Use a new or empty "
                    "folder with -o, or pass --overwrite to replace its model/, dataset/, work/ and run.json.")
            raise ConfigError(
                f"The output folder {root} holds a run with other settings ({changed}); its results would "
                "be replaced or mixed with this run's. Use another -o, or pass --overwrite to start over there.")
        if not start_over:
            self._refuse_foreign_model_dir()
        self.lock()  # checked first: a folder this run may not write gets no lock either
        recover_interrupted_swaps(root, (self.model_dir.name, self.dataset_dir.name))  # a run killed mid-swap
        remove_dead_temporaries(root, recursive=False)  # and the half-written files of a killed run
        for folder in (self.model_dir, self.dataset_dir, self.work_dir):
            remove_dead_temporaries(folder)
        if start_over:
            doomed = [self.model_dir, self.dataset_dir, self.run_file]
            doomed += [p for p in self.work_dir.iterdir() if p != self.lock_file] if self.work_dir.is_dir() else []
            for path in doomed:
                linked_folder = path.is_symlink() and path.is_dir()  # on another disk: emptied there, link kept
                for doomed_path in path.iterdir() if linked_folder else [path]:
                    remove_path(doomed_path)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.settings_file, settings)

    def _refuse_inputs_inside(self, inputs: tuple[str | Path, ...]) -> None:
        """An input, or a file of an input folder reached by a symlink (a Hub cache snapshot is one), that lies
        in what this run writes would be replaced or deleted by it."""
        owned = [p for p in map(_resolved, (self.model_dir, self.dataset_dir, self.work_dir, self.run_file)) if p]
        root = _resolved(self.root)
        for given in inputs:
            path = Path(str(given).strip()).expanduser()
            if not str(given).strip() or not (path.exists() or path.is_symlink()):
                continue  # a Hub id or a named dataset: nothing of the user's on disk here
            links = []
            for folder, dirs, files in os.walk(path):  # os.walk does not descend into linked folders
                dirs[:] = [d for d in dirs if _resolved(Path(folder, d)) != root]  # OUT's own links are its own
                links += [Path(folder, name) for name in (*dirs, *files) if Path(folder, name).is_symlink()]
            for reached in (path, *links):
                target = _resolved(reached)
                folder = next((f for f in owned if target and (target == f or f in target.parents)), None)
                if folder is not None:
                    what = "lies" if reached == path else f"has {reached.relative_to(path)}, which links"
                    raise ConfigError(
                        f"The input {given} {what} inside {folder}, which this run writes into (and --overwrite "
                        f"deletes), so it would be replaced by the run's own output. Copy it elsewhere, or pass "
                        f"another -o than '{self.root}'.")

    def _refuse_inside_data(self, folders: tuple[str | Path, ...]) -> None:
        """An output folder inside a folder of images the run reads would be read as data by the next run on that
        folder: its synthetic images as calibration images, or a parquet dataset where an imagefolder was."""
        root = _resolved(self.root) or self.root.absolute()
        for given in folders:
            folder = _resolved(Path(given).expanduser())
            if folder is not None and folder.is_dir() and (root == folder or folder in root.parents):
                raise ConfigError(
                    f"The output folder {self.root} {'is' if root == folder else 'lies inside'} {given}, whose "
                    "images this run reads (few-shot "
                    "calibration or evaluation), so a rerun would read this run's own files there (its synthetic "
                    "images, its model) as that data. Pass an -o outside it.")

    def _refuse_foreign_model_dir(self) -> None:
        """model/ must be one the save at the end may replace: found out now, not after the compute."""
        from .checkpoint.save import check_replaceable

        try:
            check_replaceable(self.model_dir)
        except CheckpointError:
            raise ConfigError(
                f"{self.model_dir} is not empty and holds no Genie checkpoint (a config.json with genie's "
                "quantization_config), so this run's save would replace files that are not a checkpoint of it. "
                f"Move them out of {self.model_dir}, or pass --overwrite to start over in {self.root}.") from None

    def _refuse_nesting(self) -> None:
        """OUT as, or inside, another run's model/, dataset/ or work/: that run's reruns replace those folders."""
        root = _resolved(self.root) or self.root.absolute()
        for folder in (root, *root.parents):
            if folder.name in (self.model_dir.name, self.dataset_dir.name, self.work_dir.name) and (
                    (folder.parent / RUN_FILE).exists() or (folder.parent / "work" / SETTINGS_FILE).exists()):
                raise ConfigError(
                    f"The output folder {self.root} {'is' if folder == root else 'lies inside'} {folder}, a folder "
                    f"of the genie_hub run in {folder.parent}, which replaces it when that run is repeated. Pass an "
                    "-o outside it.")

    def holds_results(self) -> bool:
        """Anything in the folder besides the settings a run that computed nothing yet left."""
        bookkeeping = (self.settings_file, self.lock_file, self.threads_file)
        return self.root.is_dir() and any(p not in bookkeeping and (p.is_file() or p.is_symlink())
                                          for p in self.root.rglob("*"))

    def _previous_settings(self) -> dict[str, Any] | None:
        try:
            record = RunRecord.load(self.run_file)
        except (OSError, ValueError):
            record = None
        if record is not None and record.settings:
            return record.settings
        try:
            return json.loads(self.settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @classmethod
    def default_for(cls, model_name: str, weight_bits: int, act_bits: int) -> "OutputLayout":
        """genie_output/<model folder or repo name>-genie-w<W>a<A>"""
        name = str(model_name).replace("\\", "/").rstrip("/").split("/")[-1]
        return cls(Path("genie_output") / f"{name}-genie-w{weight_bits}a{act_bits}")


@dataclass
class RunRecord:
    """Everything about a finished run that its cards and its publication need."""

    base_model: str | None = None
    base_model_revision: str | None = None
    base_model_id: str | None = None  # the Hub id of the base (given with --base-model for a local folder)
    method: str = "genie"
    zero_shot: bool = True
    calibration_source: str | None = None
    num_calibration_images: int | None = None  # what calibrated it: a few-shot source may hold fewer than num_samples
    has_image_processor: bool | None = None  # False: the base model had none (None: an older record, which had one)
    weight_bits: int | None = None
    act_bits: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # GenieConfig.to_dict()
    input_spec: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, dict] = field(default_factory=dict)  # LayerSpec.to_dict() per quantized op
    units: list[dict] = field(default_factory=list)
    unit_errors: list[dict] = field(default_factory=list)  # UnitReport fields per unit
    float_attention: list[str] = field(default_factory=list)  # attention modules whose matmuls stayed in FP
    evaluation: dict | None = None
    evaluation_error: str | None = None  # why the evaluation asked for failed (the model was saved without it)
    results: list[dict] = field(default_factory=list)  # rows of the card's results table / model-index
    results_protocol: str = ""
    license: str | None = None
    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    num_processes: int = 1
    torch_threads: int | None = None  # torch.get_num_threads(): CPU results are bit-identical only at a fixed count
    adam_fused: bool | None = None  # fused or plain Adam kernel: the same update up to float rounding
    synthesis_channels_last: bool | None = None  # synthesis in the channels_last layout (CUDA): the same, up to rounding
    synthesis_workers: int | None = None  # one-thread processes that synthesized batches in parallel (1: serial)
    synthesis_compiled: bool | None = None  # every synthesis batch ran under torch.compile (--compile)
    wall_seconds: float | None = None  # of the command that finished the run
    total_wall_seconds: float | None = None  # of every command that computed in the folder (resumes, reruns)
    total_commands: int | None = None  # how many commands that was
    synthetic: dict | None = None  # {"num_samples", "shape", "prior", "loss_summary"} for zero-shot runs
    settings: dict | None = None  # what decides the results (see `run_settings`); a rerun must match them
    push: dict | None = None  # what `genie_hub push` published
    public: dict | None = None  # cards.PublicNames, decided when the run was recorded (where its paths resolve)
    cards: dict | None = None  # {"model"|"dataset": sha256 of the card genie_hub last wrote}: others are the user's
    extra: dict[str, Any] = field(default_factory=dict)  # keys written by another genie_hub version, kept

    @property
    def complete(self) -> bool:
        """A record written by a finished `genie_hub quantize` (enough to render both cards)."""
        return bool(self.layers and self.config)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for optional in ("evaluation_error", "synthetic", "push", "public", "cards"):
            if data[optional] is None:
                del data[optional]
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunRecord | None":
        """The record at `path`, None when there is none; ValueError when it is not a JSON object."""
        path = Path(path)
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())


def _resolved(path: Path) -> Path | None:
    """`path` with its symlinks resolved; None for a symlink loop, which points nowhere."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def card_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 of a card file (None when absent): run.json keeps it, so that a later push can tell the card
    genie_hub wrote from one the user edited."""
    import hashlib

    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_settings(base_model: str, revision: str | None, calibration: str, config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's results: a rerun into the same folder must have the same ones."""
    return {"base_model": base_model, "base_model_revision": revision, "calibration": calibration, "config": config}


def settings_change(recorded: dict, wanted: dict[str, Any]) -> str | None:
    """How `wanted` differs from the settings a folder recorded (completed with the defaults of settings added
    since, local folders named by their resolved path), or None when a run with `wanted` may resume it: the one
    comparison of `OutputLayout.claim` and the zoo's."""
    old, new = _comparable(_with_new_defaults(recorded)), _comparable(wanted)
    return None if old == new else _differences(old, new)


def _comparable(settings: dict | None) -> dict | None:
    """`settings` with local folders named by their resolved path, so that `models/x`, `models/x/` (a shell's tab
    completion) and `./models/x` are one model and a rerun resumes (different weights under one path are
    caught by the synthesis and reconstruction fingerprints); a few-shot run without the settings that act on
    synthetic images only."""
    if not settings:
        return settings
    comparable = dict(settings)
    for key in ("base_model", "calibration"):
        value = comparable.get(key)
        if isinstance(value, str) and value.strip() and Path(value).expanduser().exists():
            comparable[key] = str(Path(value).expanduser().resolve())
    calibration = comparable.get("calibration")
    if isinstance(calibration, str) and calibration not in ("", "synthetic"):
        from .data import few_shot_key
        from .errors import DataError

        try:
            comparable["calibration"] = few_shot_key(calibration)
        except DataError:  # a source that no longer reads: compared as recorded
            pass
    if comparable.get("calibration") != "synthetic" and isinstance(comparable.get("config"), dict):
        from .config import without_synthesis_settings  # a few-shot run makes no images: these change nothing

        comparable["config"] = without_synthesis_settings(comparable["config"])
    return comparable


def _with_new_defaults(settings: dict | None) -> dict | None:
    """Settings recorded by an earlier genie_hub, completed with the defaults of GenieConfig fields added since
    (a run made before a setting existed used what is now its default)."""
    if not settings or not isinstance(settings.get("config"), dict):
        return settings
    from .config import GenieConfig

    return {**settings, "config": {**GenieConfig().results_dict(), **settings["config"]}}


def _differences(old: dict, new: dict) -> str:
    changes = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in new if key != "config" and old.get(key) != new.get(key)]
    old_config, new_config = old.get("config") or {}, new.get("config") or {}
    changes += [f"{key}: {old_config.get(key)!r} -> {new_config.get(key)!r}" for key in new_config
                if old_config.get(key) != new_config.get(key)]
    return "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")
