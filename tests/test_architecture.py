"""The package's shape, checked from its source: stages import only lower stages, and only the model adapter
talks to the model library (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "genie_hub"
HIGHER_THAN_ENGINE = ("checkpoint", "hub", "cards", "cli", "pipeline", "space", "outputs", "api", "zoo")


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Top-level genie_hub subpackages/modules that `path` imports (relative or absolute, anywhere in the file)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # resolve `..x` against the module's package
                base = list(parts[:-1])[: len(parts) - node.level] if node.level > 1 else list(parts[:-1])
                target = base + (node.module.split(".") if node.module else [])
                if not target and node.names:
                    target = [node.names[0].name]
            elif node.module and node.module.startswith("genie_hub"):
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                found.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("genie_hub."):
                    found.add(alias.name.split(".")[1])
    return found


def test_engine_never_imports_higher_stages():
    for stage in ("synthesis", "quantization"):
        for path in _modules(PACKAGE / stage):
            bad = _imported(path) & set(HIGHER_THAN_ENGINE)
            assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_quantization_does_not_import_synthesis_and_base_modules_import_no_stage():
    for path in _modules(PACKAGE / "quantization"):
        assert "synthesis" not in _imported(path), path
    stages = {"adapters", "loading", "synthesis", "quantization", *HIGHER_THAN_ENGINE}
    for name in ("config", "errors", "fileio", "hooks", "reproducibility", "optimization", "calibration", "progress",
                 "arguments"):
        assert not _imported(PACKAGE / f"{name}.py") & stages, name


def test_only_the_adapter_calls_the_model_library():
    """No AutoModel* name, no `x.from_pretrained(...)` of a model and no `model(pixel_values=...)` outside adapters/."""
    offenders = []
    for path in [*_modules(PACKAGE), PACKAGE.parent / "spaces" / "genie-compare" / "app.py"]:
        if "adapters" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Name, ast.Attribute)) and "AutoModel" in (getattr(node, "id", None) or
                                                                               getattr(node, "attr", "")):
                offenders.append(f"{path.name}: {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and any("AutoModel" in alias.name for alias in node.names):
                offenders.append(f"{path.name}: imports {[alias.name for alias in node.names]}")
            if not isinstance(node, ast.Call):
                continue
            called = ast.unparse(node.func)
            is_class = called.split(".")[-1][:1].isupper()  # building a dataclass with a pixel_values field is fine
            if any(k.arg == "pixel_values" for k in node.keywords) and not is_class:
                offenders.append(f"{path.name}: {ast.unparse(node)[:80]}")
            if called.endswith(".from_pretrained") and "Processor" not in called and "Config" not in called:
                offenders.append(f"{path.name}: {ast.unparse(node)[:80]}")
    assert not offenders, offenders
