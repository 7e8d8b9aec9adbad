"""What a run leaves on disk: the output folder layout and the run record (`run.json`).

    OUT/model/     the quantized model (config.json with quantization_config, model.safetensors,
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

from .fileio import write_json

RUN_FILE = "run.json"


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
    method: str = "genie"
    zero_shot: bool = True
    calibration_source: str | None = None
    weight_bits: int | None = None
    act_bits: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # GenieConfig.to_dict()
    input_spec: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, dict] = field(default_factory=dict)  # LayerSpec.to_dict() per quantized op
    units: list[dict] = field(default_factory=list)
    unit_errors: list[dict] = field(default_factory=list)  # UnitReport fields per unit
    evaluation: dict | None = None
    results: list[dict] = field(default_factory=list)  # rows of the card's results table / model-index
    results_protocol: str = ""
    license: str | None = None
    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    num_processes: int = 1
    wall_seconds: float | None = None
    synthetic: dict | None = None  # {"num_samples", "shape", "prior", "loss_summary"} for zero-shot runs
    push: dict | None = None  # what `genie_hub push` published
    extra: dict[str, Any] = field(default_factory=dict)  # keys written by another genie_hub version, kept

    @property
    def complete(self) -> bool:
        """A record written by a finished `genie_hub quantize` (enough to render both cards)."""
        return bool(self.layers and self.config)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for optional in ("synthetic", "push"):
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
