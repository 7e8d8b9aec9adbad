"""The "genie-compare" Gradio Space: locate it, launch it locally, and prepare a copy to push to the Hub.

The Space itself lives in `spaces/genie-compare/` (app.py, README.md, requirements.txt, examples/) in the
source tree; genie_hub finds it there when installed editable (`pip install -e .`) or run from a checkout, and
in the copy its wheel bundles (`genie_hub/_bundled/spaces/`) otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from .errors import GenieError
from .loading import DEFAULT_MODEL_DIR, DEFAULT_QUANTIZED_DIR, EMBEDDED_HUB_NAMESPACE, embedded_folder, embedded_hub_id

logger = logging.getLogger("genie_hub")

SPACE_NAME = "genie-compare"
SPACE_DIR_ENV = "GENIE_SPACE_DIR"
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
SPACE_DIRS = ("examples",)
"""Folders of the Space copied with it (the Fashion-MNIST example images)."""
WHEELS_DIR = "wheels"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SPACE_CONFIG_NAME = "space_config.json"
"""Written next to app.py by `prepare_space_folder`: {"fp32_model": id, "quantized_model": id}."""

DEFAULT_FP32_HUB_ID = f"{EMBEDDED_HUB_NAMESPACE}/{DEFAULT_MODEL_DIR.name}"
"""Hub id of the published embedded default model: what the app shows (and loads from the embedded copy)."""
DEFAULT_QUANTIZED_HUB_ID = f"{EMBEDDED_HUB_NAMESPACE}/{DEFAULT_QUANTIZED_DIR.name}"

_PACKAGE_DIR = Path(__file__).resolve().parent
SPACE_DIR = Path(os.environ.get(SPACE_DIR_ENV) or next(
    (d for d in (_PACKAGE_DIR.parent / "spaces" / SPACE_NAME, _PACKAGE_DIR / "_bundled" / "spaces" / SPACE_NAME)
     if (d / "app.py").is_file()), _PACKAGE_DIR.parent / "spaces" / SPACE_NAME))
"""Where the Space sources are: $GENIE_SPACE_DIR, else `spaces/genie-compare` of the source tree, else the
copy bundled inside the installed package."""

_MODULE_NAME = "genie_hub_space_app"


def space_dir() -> Path:
    """SPACE_DIR, checked: raises GenieError when genie_hub was installed without its source tree."""
    missing = [name for name in SPACE_FILES if not (SPACE_DIR / name).is_file()]
    if missing:
        raise GenieError(
            f"The Space sources are not available ({SPACE_DIR} lacks {', '.join(missing)}). They ship with the "
            "genie_hub source tree and its wheel: reinstall genie_hub, or "
            f"point {SPACE_DIR_ENV} at a folder holding {', '.join(SPACE_FILES)}.")
    return SPACE_DIR


def load_space_app(path: str | os.PathLike | None = None) -> ModuleType:
    """Import the Space's app.py by path (from SPACE_DIR, or from the folder/file `path`) and return the module.

    The module exposes `build_demo(fp32=None, quantized=None) -> gr.Blocks`, `compare(image, fp32_id,
    quantized_id)`, `load_cached(model_id)` and `default_models()`.
    """
    if path is None:
        app_file = space_dir() / "app.py"
    else:
        app_file = Path(path)
        app_file = app_file / "app.py" if app_file.is_dir() else app_file
        if not app_file.is_file():
            raise GenieError(f"No Space app at {app_file}.")
    app_file = app_file.resolve()
    if importlib.util.find_spec("gradio") is None:
        raise GenieError("The comparison app needs gradio, an optional dependency of genie_hub: install it with "
                         "`pip install 'genie_hub[space]'`.")
    cached = sys.modules.get(_MODULE_NAME)
    if cached is not None and getattr(cached, "__file__", None) == str(app_file):
        return cached
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, app_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(_MODULE_NAME, None)
        raise
    return module


def _embedded_id(base: str) -> str | None:
    """The Hub id of an embedded model named by its folder: in this install's assets, or in another install's
    (`.../genie_hub/assets/<name>`, a zoo built elsewhere) when this genie_hub ships that same model."""
    folder = Path(base)
    if embedded_hub_id(folder):
        return embedded_hub_id(folder)
    model_id = f"{EMBEDDED_HUB_NAMESPACE}/{folder.name}"
    return model_id if folder.parent.name == "assets" and embedded_folder(model_id) is not None else None


def _published_fp32_id(record) -> str | None:
    """The Hub id of a zoo entry's base model a public Space may name: the one the run record decided for its
    cards (`--base-model`, or a base that was a Hub id), or the embedded model's; never a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .cards import public_names

    try:
        fp32 = public_names(record).base_model_hub_id or _embedded_id(str(record.base_model))
    except (TypeError, ValueError):
        return None
    if not isinstance(fp32, str) or os.path.isabs(fp32) or fp32.count("/") != 1:
        return None
    try:
        validate_repo_id(fp32)
    except HFValidationError:
        return None
    return fp32


def zoo_space_entries(zoo_dir: str | os.PathLike, *, published: bool) -> list[dict]:
    """The built entries of a zoo folder as the Space's picker lists them: local folders for a local app, or
    (`published`) the Hub ids `genie_hub zoo publish` recorded, with the FP32 model's Hub id. A published Space
    gets Hub ids only: an entry that is not published, or whose base model has no Hub id (a local folder
    quantized without --base-model), is left out with a warning naming it."""
    from .outputs import RunRecord

    entries, left_out, unpublished = [], [], 0
    for run_file in sorted(Path(zoo_dir).glob("*/run.json")):
        name = run_file.parent.name
        try:
            record = RunRecord.load(run_file)
        except (OSError, ValueError) as exc:  # one damaged entry must not take the whole app down
            logger.warning("The zoo picker leaves out %s: its run.json is unreadable (%s).", name, exc)
            continue
        if record is None or not record.complete:
            continue
        base = str(record.base_model)
        if not published:
            if not (run_file.parent / "model" / "config.json").is_file():
                logger.warning("The zoo picker leaves out %s: its model/ folder is missing or incomplete (rebuild "
                               "it with `genie_hub zoo build %s`).", name, name)
                continue
            entries.append({"name": name, "fp32": base, "quantized": str(run_file.parent / "model")})
            continue
        repo_id = ((record.push or {}).get("model") or {}).get("repo_id")
        fp32 = _published_fp32_id(record)
        if not repo_id:
            unpublished += 1
            left_out.append(f"{name} (not published: run `genie_hub zoo publish`)")
        elif not fp32:
            left_out.append(f"{name} (its base model is a local folder with no Hub id: quantize it with "
                            "--base-model OWNER/NAME)")
        else:
            entries.append({"name": name, "fp32": fp32, "quantized": repo_id})
    if left_out:
        logger.warning("The Space's zoo picker leaves out %s: a public Space can name Hub models only.",
                       "; ".join(left_out))
    if not entries:  # asked for a picker: an empty one would be silently missing
        what = ("built entries" if not published
                else "entries a published Space can show (see the warning above)" if len(left_out) > unpublished
                else "published entries (run `genie_hub zoo publish` first)")
        raise GenieError(f"--zoo-dir {zoo_dir} holds no {what}: pass the -o folder of `genie_hub zoo build`.")
    return entries


def launch_space(fp32: str | None = None, quantized: str | None = None, *, zoo: list[dict] | None = None,
                 preload: bool = True, **launch_kwargs):
    """Build the Space UI for these models and launch it (gradio's `launch(**launch_kwargs)`).

    `None` for both uses $GENIE_FP32_MODEL / $GENIE_QUANTIZED_MODEL, else the embedded default models; with one
    given, the other is found as `_model_pair` says, never the embedded default. With
    `preload` both models are loaded first, so a bad id fails here with a ModelLoadError/GenieError
    instead of in the browser. Returns the `gr.Blocks` (useful with `prevent_thread_lock=True`).
    Blocks until the server stops unless `prevent_thread_lock=True`.
    """
    app = load_space_app()
    fp32, quantized = _model_pair(app, fp32, quantized)
    if preload:
        fp32_model = app.load_cached(fp32)
        quantized_model = app.load_cached(quantized)
        if fp32_model.num_labels != quantized_model.num_labels:
            raise GenieError(f"The two models must classify the same classes: {fp32} has "
                             f"{fp32_model.num_labels} classes, {quantized} has {quantized_model.num_labels}.")
        if quantized_model.quantization is None:  # said once here, not only in every Compare (a check of the UI)
            logger.warning("--quantized %s has no quantization_config: it is a plain FP checkpoint, so the Space "
                           "compares two FP models. Pass OUT/model of `genie_hub quantize` (or its Hub id) to compare "
                           "a quantized one.", quantized)
        if fp32_model.quantization is not None:
            logger.warning("--fp32 %s is itself quantized (its config.json has a quantization_config): the Space "
                           "compares it as the FP32 reference. Pass the model it was quantized from.", fp32)
        problems = app.pair_problems(fp32_model, quantized_model)
        if problems:
            raise GenieError(f"{quantized} does not look like a quantized version of {fp32}: "
                             f"{'; '.join(problems)}. Pass as --fp32 the model it was quantized from (its output "
                             "folder's run.json names it as base_model).")
    demo = app.build_demo(fp32, quantized, zoo=zoo)
    launch_kwargs.setdefault("css", app.CSS)
    launch_kwargs.setdefault("max_file_size", app.MAX_FILE_SIZE)
    demo.launch(**launch_kwargs)
    return demo


def _recorded_base(quantized: str) -> tuple[str | None, bool]:
    """(the base model recorded in run.json beside a `genie_hub quantize` output's model/ folder, whether it can
    be loaded from here); (None, False) without a record."""
    from .outputs import RUN_FILE, RunRecord

    from .cards import public_names

    try:
        record = RunRecord.load(Path(quantized).expanduser().parent / RUN_FILE)
        if record is None or not record.base_model:
            return None, False
        base = str(record.base_model)
        # A folder that is here, or a Hub id; never a relative folder an older genie_hub recorded, which from this
        # directory would be another folder, or be looked up on the Hub.
        return base, Path(base).expanduser().is_dir() or public_names(record).base_model_hub_id == base
    except (OSError, ValueError, TypeError):
        return None, False


def _model_pair(app: ModuleType, fp32: str | None, quantized: str | None) -> tuple[str, str]:
    """The two models to compare. With neither given: $GENIE_FP32_MODEL / $GENIE_QUANTIZED_MODEL, else the
    embedded pair. With one given, the other is never the embedded default (the user would compare their model
    with an unrelated one): a quantized output's FP32 model is the base its run.json records, else the
    environment variable's; otherwise an error."""
    fp32 = fp32 or os.environ.get(app.FP32_ENV) or None  # an environment variable counts as given
    quantized = quantized or os.environ.get(app.QUANTIZED_ENV) or None
    if fp32 is None and quantized is not None:
        _check_local_model(quantized, "--quantized")  # a typo or an OUT folder: said, not "needs --fp32"
        recorded, usable = _recorded_base(quantized)
        if not usable:
            why = (f" Its run.json records the base model {recorded}, which is no folder here (moved or deleted?)."
                   if recorded else "")
            raise GenieError(f"--quantized {quantized} needs --fp32 too (or ${app.FP32_ENV}): pass the model it was "
                             "quantized from (a genie_hub output's model/ folder finds it by itself, from the run.json "
                             f"beside it, where that names a Hub id or a folder on this machine).{why}")
        fp32 = recorded
        logger.info("Comparing %s with its base model %s.", quantized, fp32)
    if quantized is None and fp32 is not None:
        raise GenieError(f"--fp32 {fp32} needs --quantized too (or ${app.QUANTIZED_ENV}): pass the quantized model "
                         "(OUT/model of `genie_hub quantize`, or its Hub id).")
    default_fp32, default_quantized = app.default_models()
    return fp32 or default_fp32, quantized or default_quantized


def _check_local_model(name: str, option: str) -> None:
    """A path that is not there, or a `genie_hub quantize` output folder instead of its model/ (the same problems
    loading names, found before the FP32 side is looked for)."""
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1  # not a Hub id
    if looks_local and not path.exists():
        raise GenieError(f"{option} {name}: the local folder '{name}' does not exist.")
    if path.is_dir() and (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        raise GenieError(f"{option} {name} is a genie_hub output folder: pass '{path / 'model'}' (the quantized model "
                         "of a `genie_hub quantize` output folder is in OUT/model; its FP32 model is then found from "
                         "the run.json beside it).")


def _check_hub_id(model_id: str, role: str) -> str:
    model_id = str(model_id).strip()
    if Path(model_id).expanduser().exists() or os.path.isabs(model_id) or model_id.count("/") != 1 \
            or any(not part for part in model_id.split("/")):
        raise GenieError(
            f"The {role} model for a Space must be a Hub id 'owner/name', not '{model_id}': a Space cannot read "
            "your local folders. Push the model first (`genie_hub push ...`) and pass its Hub id.")
    return model_id


def check_space_models(model_ids: list[str], token: str | None = None) -> None:
    """Every model a Space will name exists on the Hub (`model_info` with the token), so that no Space is
    published for a typo; the embedded `genie-hub/` models genie_hub ships are loaded from their copy."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from .errors import PushError

    api, missing = HfApi(token=token), []
    for model_id in dict.fromkeys(_check_hub_id(model_id, "given") for model_id in model_ids):
        if embedded_folder(model_id) is not None:
            continue
        try:
            api.model_info(model_id)
        except GatedRepoError:  # it exists; the Space's visitors need access, as on the Hub
            continue
        except RepositoryNotFoundError:
            missing.append(model_id)
        except Exception as exc:  # noqa: BLE001 - network, server: say so, upload nothing
            raise PushError(f"Cannot push the Space: checking that the model '{model_id}' exists on the Hub failed "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). Check your network "
                            "connection and HF_ENDPOINT, then run again. Nothing was uploaded.") from exc
    if missing:
        raise PushError(f"Cannot push the Space: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a "
                        "model on the Hub (or not visible with this token), so the Space could not load "
                        f"{'it' if len(missing) == 1 else 'them'}. Check the ids (push the model first with "
                        "`genie_hub push OUT`) and run again. Nothing was uploaded.")


def _hub_config(model_id: str, token: str | None) -> dict:
    """The config.json of a Hub model (an embedded one's from its installed copy)."""
    from huggingface_hub import hf_hub_download

    from .errors import PushError

    folder = embedded_folder(model_id)
    try:
        path = folder / "config.json" if folder is not None else Path(hf_hub_download(model_id, "config.json",
                                                                                       token=token))
        config = json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - missing file, network, bad JSON: the Space could not load it either
        raise PushError(f"Cannot push the Space: the config.json of '{model_id}' could not be read "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}), so the Space could not load "
                        "that model. Check the id (push the model first with `genie_hub push OUT`) and run again. "
                        "Nothing was uploaded.") from exc
    if not isinstance(config, dict):
        raise PushError(f"Cannot push the Space: the config.json of '{model_id}' is not a JSON object. Nothing was "
                        "uploaded.")
    return config


def check_space_pair(fp32_id: str | None, quantized_id: str | None, token: str | None = None) -> None:
    """The Space's two default models can be compared: the same architecture (`model_type`), the same number of
    classes, and a quantization_config on the quantized side only, read from their config.json. A side not given
    is the embedded default's, so `--quantized` alone must be a quantized embedded model; otherwise every
    visitor's Compare would fail, or compare unrelated models."""
    from .errors import PushError

    fp32_id, quantized_id = fp32_id or DEFAULT_FP32_HUB_ID, quantized_id or DEFAULT_QUANTIZED_HUB_ID
    fp32, quantized = _hub_config(fp32_id, token), _hub_config(quantized_id, token)

    def classes(config: dict) -> int | None:
        labels = config.get("id2label")
        return len(labels) if isinstance(labels, dict) and labels else config.get("num_labels")

    problems = []
    if fp32.get("model_type") != quantized.get("model_type"):
        problems.append(f"'{fp32_id}' is a {fp32.get('model_type')!r} model and '{quantized_id}' a "
                        f"{quantized.get('model_type')!r} one")
    if classes(fp32) != classes(quantized):
        problems.append(f"'{fp32_id}' has {classes(fp32)} classes and '{quantized_id}' {classes(quantized)}")
    if not isinstance(quantized.get("quantization_config"), dict):
        problems.append(f"'{quantized_id}' has no quantization_config (a plain FP checkpoint)")
    if fp32.get("quantization_config") is not None:
        problems.append(f"'{fp32_id}' is itself quantized (its config.json has a quantization_config)")
    if problems:
        raise PushError(f"Cannot push the Space: its two models cannot be an FP32 model and its quantized version "
                        f"({'; '.join(problems)}). Name both with --fp32 and --quantized (a side left out is the "
                        f"embedded default, {DEFAULT_FP32_HUB_ID} / {DEFAULT_QUANTIZED_HUB_ID}). Nothing was uploaded.")


def _set_readme_header(readme: Path, models: list[str], datasets: list[str]) -> None:
    from huggingface_hub import RepoCard

    card = RepoCard.load(readme)
    card.data.models = models
    card.data.datasets = datasets or None
    card.save(readme)


def _calibration_datasets(quantized_ids: list[str], token: str | None = None) -> list[str]:
    """The calibration sets the quantized models' cards link (`datasets:`), for the Space header. An embedded
    model's card is read from its installed copy; a card that cannot be read links nothing (never fatal)."""
    from huggingface_hub import ModelCard

    found: list[str] = []
    for model_id in quantized_ids:
        folder = embedded_folder(model_id)
        try:
            card = (ModelCard.load(folder / "README.md") if folder is not None and (folder / "README.md").is_file()
                    else ModelCard.load(model_id, token=token))
        except Exception as exc:
            logger.warning("Cannot read the model card of %s (%s): the Space header links no calibration set for "
                           "it.", model_id, exc)
            continue
        found += [d for d in (card.data.datasets or []) if isinstance(d, str) and d not in found]
    return found


WHEEL_SOURCES = ("pyproject.toml", "README.md", "genie_hub", "model_cards", "spaces")
"""What the wheel is built from, relative to the source tree."""


def _git_tracked_sources(source: Path) -> list[str] | None:
    """The files under WHEEL_SOURCES that git tracks, when `source` is a git checkout (it has `.git`, a folder
    or a worktree's file); else None. A checkout whose files git cannot list is an error, not a full copy.

    The wheel goes into a public Space, so only committed work may ship: a file kept untracked (notes, a token)
    or ignored (a local config) inside genie_hub/ must not be published. An untracked, unignored file there is
    refused rather than left out, since a module added but not yet committed would be missing in the Space."""
    def git(*args: str) -> list[str]:
        out = subprocess.run(["git", "-C", str(source), *args], capture_output=True, check=True, timeout=60).stdout
        return [name for name in os.fsdecode(out).split("\0") if name]

    if not (source / ".git").exists():  # an unpacked sdist, a copy: no git to ask
        return None
    try:
        tracked = git("ls-files", "-z", "--", *WHEEL_SOURCES)
        untracked = git("ls-files", "-z", "--others", "--exclude-standard", "--", *WHEEL_SOURCES)
    except (OSError, subprocess.SubprocessError) as exc:
        said = os.fsdecode(getattr(exc, "stderr", None) or b"").strip().splitlines()
        detail = said[-1] if said else str(exc)
        raise GenieError(
            f"{source} is a git checkout, but git cannot list its files ({detail}), so genie_hub cannot tell which "
            "of them are committed, and the Space's wheel must not publish the others. Fix git for this folder "
            "(e.g. `git config --global --add safe.directory` for a checkout owned by another user), or pass a "
            "genie_hub wheel with --wheel PATH.") from exc
    untracked = [name for name in untracked if "__pycache__" not in name.split("/")]
    if untracked:
        raise GenieError(
            f"{len(untracked)} file(s) in the genie_hub source tree are not tracked by git "
            f"({', '.join(untracked[:5])}{', ...' if len(untracked) > 5 else ''}), and the Space's genie_hub wheel "
            "is built from tracked files only, since it is published. Commit them to ship them, or move them out "
            f"of {source}, then rerun; or pass a genie_hub wheel with --wheel PATH.")
    return tracked


def _copy_sources(source: Path, copy: Path) -> None:
    """Copy WHEEL_SOURCES of `source` to `copy`: the files git tracks (`_git_tracked_sources`), or, outside a
    git checkout, everything but build leftovers; symbolic links stay links (_bundled/ links the cards)."""
    tracked = _git_tracked_sources(source)
    if tracked is None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        for name in WHEEL_SOURCES:
            path = source / name
            if path.is_dir():
                shutil.copytree(path, copy / name, symlinks=True, ignore=ignore)
            else:
                copy.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copy / name)
        return
    for name in tracked:
        path, target = source / name, copy / name
        if not os.path.lexists(path):  # deleted in the working tree, not yet committed
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            os.symlink(os.readlink(path), target)
        else:
            shutil.copy2(path, target)


def build_wheel(dest: str | os.PathLike) -> Path:
    """Build the wheel of the running genie_hub into `dest` and return its path.

    A Space cannot install an unreleased genie_hub from PyPI, so `push-space` uploads this wheel with it. It is
    built with `pip wheel --no-deps --no-build-isolation` from a fresh copy of the source tree's committed files
    (`_copy_sources`: a stale `build/` folder or an uncommitted file never leaks into it); genie_hub installed
    without its source tree raises GenieError (pass the wheel it was installed from instead)."""
    from . import __version__

    source = _PACKAGE_DIR.parent
    if not (source / "pyproject.toml").is_file() or not (source / "spaces" / SPACE_NAME).is_dir():
        raise GenieError(
            f"Cannot build a genie_hub wheel: genie_hub is installed without its source tree ({source} has no "
            "pyproject.toml). Pass the genie_hub wheel to upload with --wheel PATH (for example the one it was "
            "installed from).")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genie_hub_wheel_") as tmp:
        copy = Path(tmp) / "src"
        _copy_sources(source, copy)
        built = Path(tmp) / "dist"
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                 "--no-index", "-q", "-w", str(built), str(copy)],
                                capture_output=True, text=True, timeout=600)
        wheels = sorted(built.glob(f"genie_hub-{__version__}-*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise GenieError(f"Building the genie_hub wheel failed (pip wheel exited with {result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()[-1500:]}")
        target = dest / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def space_requirements(wheel_name: str, space_repo_id: str | None = None, endpoint: str | None = None) -> str:
    """The Space's requirements.txt: CPU torch pinned to the version running here, the genie_hub wheel the Space
    carries, then the app's own extra requirements (the source folder's requirements.txt).

    The Space build installs requirements.txt before it copies the repository, so with `space_repo_id` the
    wheel is named by its URL in the Space repo; without, by its path (for installing from the folder)."""
    import torch

    torch_version = torch.__version__.split("+")[0]
    if space_repo_id:
        from huggingface_hub import constants

        base = (endpoint or constants.ENDPOINT).rstrip("/")
        wheel = f"genie_hub @ {base}/spaces/{space_repo_id}/resolve/main/{WHEELS_DIR}/{wheel_name}"
    else:
        wheel = f"./{WHEELS_DIR}/{wheel_name}"
    extra = [line.strip() for line in (space_dir() / "requirements.txt").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.strip().startswith("#")]
    return "\n".join([
        "# Written by `genie_hub push-space`. gradio is pinned by `sdk_version` in README.md.",
        "# CPU torch: a bare `torch` would install the multi-GB CUDA build on CPU hardware.",
        f"--extra-index-url {TORCH_CPU_INDEX}",
        f"torch=={torch_version}",
        f"# genie_hub (registers the genie quantization method, ships the embedded models): the wheel in {WHEELS_DIR}/.",
        wheel,
        *extra,
    ]) + "\n"


def check_space_arguments(fp32_id: str | None, quantized_id: str | None, wheel: str | os.PathLike | None
                          ) -> tuple[str | None, str | None, Path | None]:
    """The local checks of `push-space`'s arguments (Hub ids, not folders; a real genie_hub wheel), made before any
    request, so that a mistake is named first, not after a token or network error."""
    import zipfile

    fp32_id = _check_hub_id(fp32_id, "FP32") if fp32_id else None
    quantized_id = _check_hub_id(quantized_id, "quantized") if quantized_id else None
    wheel_path = Path(wheel) if wheel else None
    if wheel_path is not None:
        if not wheel_path.is_file() or not wheel_path.name.startswith("genie_hub-") or wheel_path.suffix != ".whl":
            raise GenieError(f"--wheel {wheel_path} is not a genie_hub wheel file (genie_hub-<version>-*.whl).")
        try:
            with zipfile.ZipFile(wheel_path) as archive:
                packaged = "genie_hub/__init__.py" in archive.namelist()
        except (OSError, zipfile.BadZipFile):
            packaged = False
        if not packaged:  # the Space's build would fail installing it
            raise GenieError(f"--wheel {wheel_path} is not a genie_hub wheel: it is not a zip archive holding the "
                             "genie_hub package. Build one with `pip wheel --no-deps .` in the genie_hub source tree, "
                             "or leave --wheel out to build it from this installation's source.")
    return fp32_id, quantized_id, wheel_path


def prepare_space_folder(dest: str | os.PathLike, fp32_id: str | None = None,
                         quantized_id: str | None = None, zoo: list[dict] | None = None, *,
                         space_repo_id: str | None = None, wheel: str | os.PathLike | None = None,
                         token: str | None = None) -> Path:
    """Copy the Space into `dest`, pointed at the given Hub models; returns `dest` ready for `upload_folder`.

    The ids go into the README `models:` header (so the Hub links the Space to the models) and into
    `space_config.json`, which app.py reads as its defaults; the calibration sets their cards link go into
    `datasets:`. `None` keeps the embedded default model for that side (shown by its published id). Local
    folders are refused (GenieError). The genie_hub wheel (`wheel`, else built from this source tree) goes into
    `dest/wheels/`, and requirements.txt installs it (see `space_requirements`).
    """
    source = space_dir()
    fp32_id, quantized_id, wheel_path = check_space_arguments(fp32_id, quantized_id, wheel)
    dest = Path(dest)
    if dest.resolve() == source.resolve():
        raise GenieError(f"Refusing to prepare the Space in its own source folder {source}; choose another dest.")
    links = [str(path.relative_to(source)) for name in (*SPACE_FILES, *SPACE_DIRS) if (source / name).exists()
             for path in [source / name, *((source / name).rglob("*") if (source / name).is_dir() else [])]
             if path.is_symlink()]
    if links:  # a copy would follow them and publish whatever they point to
        raise GenieError(f"The Space sources in {source} hold symbolic links ({', '.join(links[:3])}); a public Space "
                         "gets only regular files from that folder. Replace the links with the files themselves.")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        if name != "requirements.txt":
            shutil.copy2(source / name, dest / name)
    for name in SPACE_DIRS:
        if (dest / name).exists():
            shutil.rmtree(dest / name)
        if (source / name).is_dir():
            shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    wheels = dest / WHEELS_DIR
    if wheels.exists():
        shutil.rmtree(wheels)
    if wheel_path is not None:
        wheels.mkdir()
        shutil.copy2(wheel_path, wheels / wheel_path.name)
        built = wheels / wheel_path.name
    else:
        built = build_wheel(wheels)
    (dest / "requirements.txt").write_text(space_requirements(built.name, space_repo_id), encoding="utf-8")
    config = {key: value for key, value in (("fp32_model", fp32_id), ("quantized_model", quantized_id),
                                            ("zoo", zoo)) if value}
    config_path = dest / SPACE_CONFIG_NAME
    if config:
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    elif config_path.exists():
        config_path.unlink()
    quantized_models = [quantized_id or DEFAULT_QUANTIZED_HUB_ID] + [e["quantized"] for e in zoo or []]
    models = [fp32_id or DEFAULT_FP32_HUB_ID, *quantized_models[:1]]
    for entry in zoo or []:  # the picker's models are the Space's models too: the Hub links them to it
        models += [entry[key] for key in ("fp32", "quantized") if entry[key] not in models]
    _set_readme_header(dest / "README.md", models, _calibration_datasets(quantized_models, token))
    return dest
