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
    assert "genie-hub" in _names(project["optional-dependencies"]["dev"])  # dev pulls in the [space] extra
