"""Opt-in: publish to the REAL Hugging Face Hub (the loopback server only proves the client-side protocol).

Runs only with ``GENIE_HUB_LIVE_TEST=1`` and a write token in ``HF_TOKEN`` (as set before pytest started;
tests/conftest.py replaces HF_* variables with loopback settings, so the push runs in a subprocess with the
original ones). It creates private repos named ``<user>/genie-hub-live-test-<random>``, checks the round trip
with transformers and datasets, and deletes the repos again (also on failure)::

    GENIE_HUB_LIVE_TEST=1 HF_TOKEN=hf_xxx python -m pytest tests/test_hub_live.py -m live_hub
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.live_hub
REPO_ROOT = Path(__file__).resolve().parents[1]

LIVE_SCRIPT = r"""
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
import numpy as np, torch
from huggingface_hub import HfApi, ModelCard
from helpers_output import build_output, fixed_input
from genie_hub.hub import check_push_ready, push_output, push_space

suffix = sys.argv[2]
user = check_push_ready()
model_id, dataset_id, space_id = (f"{user}/genie-hub-live-test-{suffix}",
                                  f"{user}/genie-hub-live-test-{suffix}-calibration",
                                  f"{user}/genie-hub-live-test-{suffix}-space")
api = HfApi()
try:
    out = build_output(Path(tempfile.mkdtemp()) / "out")
    result = push_output(out, repo_id=model_id, private=True)
    assert result["dataset"]["repo_id"] == dataset_id
    assert push_output(out, repo_id=model_id, private=True)["model"]["commit"] == result["model"]["commit"]
    assert ModelCard.load(model_id).data.datasets == [dataset_id]

    from transformers import AutoModelForImageClassification
    from datasets import Dataset, load_dataset
    local = AutoModelForImageClassification.from_pretrained(out / "model").eval()
    remote = AutoModelForImageClassification.from_pretrained(model_id).eval()
    with torch.no_grad():
        assert torch.equal(remote(pixel_values=fixed_input()).logits, local(pixel_values=fixed_input()).logits)
    remote_ds = load_dataset(dataset_id, split="train")
    local_ds = Dataset.from_parquet(str(out / "dataset" / "data" / "train-00000-of-00001.parquet"))
    assert np.array_equal(np.asarray(remote_ds.with_format("numpy")["pixel_values"]),
                          np.asarray(local_ds.with_format("numpy")["pixel_values"]))

    space = Path(tempfile.mkdtemp())
    (space / "README.md").write_text("---\ntitle: genie live test\nsdk: gradio\napp_file: app.py\n---\n")
    (space / "app.py").write_text("print('placeholder')\n")
    url = push_space(space, space_id, private=True)
    assert url.endswith(f"spaces/{space_id}"), url
    assert api.space_info(space_id).sdk == "gradio"
    print("LIVE OK")
finally:
    for repo_id, repo_type in ((model_id, "model"), (dataset_id, "dataset"), (space_id, "space")):
        api.delete_repo(repo_id, repo_type=repo_type, missing_ok=True)
"""


def test_push_to_the_real_hub(original_hf_env):
    if os.environ.get("GENIE_HUB_LIVE_TEST") != "1" or not original_hf_env.get("HF_TOKEN"):
        pytest.skip("set GENIE_HUB_LIVE_TEST=1 and HF_TOKEN to run against the real Hugging Face Hub")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(original_hf_env)
    proc = subprocess.run([sys.executable, "-c", LIVE_SCRIPT, str(REPO_ROOT), uuid.uuid4().hex[:8]], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "LIVE OK" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
