"""What `pip install genie_hub` gets: project metadata, dependencies and extras, and the files inside the wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import genie_hub

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _names(requirements: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


def test_project_urls_and_the_cards_name_one_repository():
    urls = PYPROJECT["project"]["urls"]
    assert set(urls) == {"Homepage", "Repository", "Documentation", "Issues"}
    assert urls["Repository"] == urls["Homepage"] == genie_hub.REPOSITORY_URL
    assert all(url.startswith(genie_hub.REPOSITORY_URL) for url in urls.values())
    for template in ("genie_model_card.md", "genie_dataset_card.md"):
        text = (REPO_ROOT / "model_cards" / template).read_text(encoding="utf-8")
        assert "{{ repository_url }}" in text and "github.com" not in text, template


def test_gradio_is_an_extra_and_transformers_is_pinned_to_the_tested_major():
    from packaging.requirements import Requirement

    project = PYPROJECT["project"]
    core = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    assert "gradio" not in core
    assert "gradio" in _names(project["optional-dependencies"]["space"])
    transformers_spec = core["transformers"].specifier
    assert "5.24.0" in transformers_spec and "6.0.0" not in transformers_spec and "4.51.3" not in transformers_spec
    assert set(project["optional-dependencies"]["space"]) <= set(project["optional-dependencies"]["dev"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The genie_hub wheel, built from this source tree as `push-space` builds it (~2 s)."""
    from genie_hub.space import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_file_the_package_reads(wheel):
    import os
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO_ROOT / "genie_hub"
    expected = set()
    for folder, dirs, files in os.walk(package, followlinks=True):  # _bundled/ links the cards and the Space
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        expected |= {(Path(folder) / f).relative_to(REPO_ROOT).as_posix() for f in files if not f.endswith(".pyc")}
    assert expected - names == set()
    for needed in ("genie_hub/zoo/registry.json", "genie_hub/assets/fashion-mnist-resnet/model.safetensors",
                   "genie_hub/assets/fashion-mnist-resnet-genie-w4a4/genie_model.safetensors",
                   "genie_hub/_bundled/spaces/genie-compare/app.py",
                   "genie_hub/_bundled/spaces/genie-compare/examples/fashion-mnist/bag.png",
                   "genie_hub/_bundled/model_cards/genie_model_card.md"):
        assert needed in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def _requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_pushed_space_installs_from_the_wheel_it_carries(hub_server, tmp_path, wheel, capsys):
    """push-space uploads the wheel; the Space's requirements.txt pins CPU torch and installs that wheel (by its URL
    in the Space repo) into a fresh environment, offline; the header links the calibration set."""
    import os
    import subprocess
    import sys

    import torch
    from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
    from packaging.requirements import Requirement

    from genie_hub.cli import main

    api = HfApi()
    for model_id, extra in (("tester/base", b""), ("tester/base-genie-w4a4", b', "quantization_config": {}')):
        api.create_repo(model_id)  # push-space checks that both exist and can be compared
        api.upload_file(path_or_fileobj=b'{"model_type": "resnet", "num_labels": 10' + extra + b'}',
                        path_in_repo="config.json", repo_id=model_id)
    card = ModelCard(f"---\n{ModelCardData(datasets=['tester/base-genie-w4a4-calibration']).to_yaml()}\n---\n# q\n")
    api.upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id="tester/base-genie-w4a4")
    assert main(["push-space", "genie-compare", "--fp32", "tester/base", "--quantized", "tester/base-genie-w4a4",
                 "--wheel", str(wheel)]) == 0
    files = set(api.list_repo_files("tester/genie-compare", repo_type="space"))
    assert {"app.py", "README.md", "requirements.txt", f"wheels/{wheel.name}", "examples/fashion-mnist/bag.png"} <= files
    header = ModelCard.load(hf_hub_download("tester/genie-compare", "README.md", repo_type="space")).data
    assert header.models == ["tester/base", "tester/base-genie-w4a4"]
    assert header.datasets == ["tester/base-genie-w4a4-calibration"]

    requirements = Path(hf_hub_download("tester/genie-compare", "requirements.txt", repo_type="space")).read_text()
    lines = _requirement_lines(requirements)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    parsed = {Requirement(line).name: Requirement(line) for line in lines if not line.startswith("-")}
    assert str(parsed["torch"].specifier) == f"=={torch.__version__.split('+')[0]}"
    assert parsed["genie_hub"].url == f"{hub_server.url}/spaces/tester/genie-compare/resolve/main/wheels/{wheel.name}"
    assert "gradio" not in parsed and "scikit-image" in parsed

    # A fresh environment (seeing the installed dependencies, not genie_hub's source) installs it offline.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    requirements_file = tmp_path / "requirements.txt"
    requirements_file.write_text(requirements)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                              "--no-cache-dir", "-q", "-r", str(requirements_file)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), "-c", "import genie_hub, genie_hub.space as s; from genie_hub.loading import "
                            "DEFAULT_QUANTIZED_DIR as q; print(genie_hub.__file__); print(s.SPACE_DIR); "
                            "print((q / 'genie_model.safetensors').is_file())"],
                           env={**env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stderr[-3000:]
    module_file, space_dir, has_weights = check.stdout.split()
    assert module_file.startswith(str(venv)) and space_dir.startswith(str(venv)) and "_bundled" in space_dir
    assert has_weights == "True"


def test_example_asset_cards_name_hub_ids_never_paths(monkeypatch):
    """The cards shipped with the embedded models (benchmarks/build_example_assets.py) parse, link each other by
    Hub id, carry a license, and quote no local path; the quantized one takes its license from its base's card."""
    from huggingface_hub import ModelCard

    from genie_hub.cards import base_license
    from genie_hub.loading import ASSETS_DIR
    from genie_hub.space import DEFAULT_FP32_HUB_ID, DEFAULT_QUANTIZED_HUB_ID

    for asset in ("fashion-mnist-resnet", "fashion-mnist-regnet"):
        card = ModelCard.load(ASSETS_DIR / asset / "README.md")
        assert card.data.license == "apache-2.0" and card.data.datasets == ["zalando-datasets/fashion_mnist"]
        assert card.data.eval_results[0].metric_value > 90 and f"genie-hub/{asset}" in card.text
    quantized = ModelCard.load(ASSETS_DIR / "fashion-mnist-resnet-genie-w4a4" / "README.md")
    assert quantized.data.base_model == DEFAULT_FP32_HUB_ID and quantized.data.base_model_relation == "quantized"
    assert quantized.data.license == "apache-2.0" and quantized.data.datasets == [f"{DEFAULT_QUANTIZED_HUB_ID}-calibration"]
    assert f'from_pretrained("{DEFAULT_QUANTIZED_HUB_ID}")' in quantized.text
    assert quantized.text.lstrip().startswith("# fashion-mnist-resnet-genie-w4a4")
    for card_file in ASSETS_DIR.glob("*/README.md"):
        text = card_file.read_text(encoding="utf-8")
        assert "/tmp/" not in text and "/work/" not in text and str(REPO_ROOT) not in text
    assert "asset_run" not in str(quantized.data) and "# asset_run" not in quantized.text  # named by its Hub id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert base_license(DEFAULT_FP32_HUB_ID) == "apache-2.0"  # read from the embedded copy, offline


def _git_source(tmp_path: Path) -> Path:
    import subprocess

    source = tmp_path / "src"
    (source / "genie_hub").mkdir(parents=True)
    (source / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (source / "genie_hub" / "__init__.py").write_text("")
    (source / ".gitignore").write_text("local.json\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(source), *args], check=True, capture_output=True)
    return source


def test_the_space_wheel_is_built_from_committed_files_only(tmp_path, monkeypatch):
    """push-space publishes the wheel: an ignored file inside genie_hub/ stays out, an untracked one is refused
    (it may be a secret, or a module the Space would miss), and a tree outside git is copied whole."""
    from genie_hub.errors import GenieError
    from genie_hub.space import _copy_sources, _git_tracked_sources

    source = _git_source(tmp_path)
    (source / "genie_hub" / "local.json").write_text('{"token": "hf_secret"}')
    (source / "genie_hub" / "__pycache__").mkdir()
    (source / "genie_hub" / "__pycache__" / "x.pyc").write_bytes(b"")
    assert _git_tracked_sources(source) == ["genie_hub/__init__.py", "pyproject.toml"]
    _copy_sources(source, tmp_path / "copy")
    copied = {p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*") if p.is_file()}
    assert copied == {"genie_hub/__init__.py", "pyproject.toml"}

    (source / "genie_hub" / "notes.py").write_text("TOKEN = 'hf_secret'")
    with pytest.raises(GenieError, match=r"not tracked by git \(genie_hub/notes.py\).*--wheel"):
        _copy_sources(source, tmp_path / "copy2")

    (source / "genie_hub" / "notes.py").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # a checkout git cannot list: never a full copy
    with pytest.raises(GenieError, match="git cannot list its files.*--wheel"):
        _copy_sources(source, tmp_path / "copy3")
    monkeypatch.undo()

    plain = tmp_path / "plain"
    (plain / "genie_hub").mkdir(parents=True)
    (plain / "pyproject.toml").write_text("")
    (plain / "genie_hub" / "a.py").write_text("")
    assert _git_tracked_sources(plain) is None
