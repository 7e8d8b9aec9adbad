"""The model zoo (issue 12): registry, resumable build with a leaderboard, list, publish to the loopback Hub."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from genie_hub import zoo
from genie_hub.cli import main
from genie_hub.errors import ConfigError
from tiny_models import save_tiny_model
from helpers_output import tree_hashes

SETTINGS = {"num_samples": 8, "synthesis_batch_size": 8, "synthesis_iterations": 3, "reconstruction_steps": 3}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    save_tiny_model(root / "tiny-resnet", "resnet-basic")
    save_tiny_model(root / "tiny-mobilenet", "mobilenet-v2")
    entries = [
        {"name": "tiny-resnet-genie-w4a4", "model": str(root / "tiny-resnet"), "weight_bits": 4, "act_bits": 4,
         "settings": SETTINGS},
        {"name": "broken-genie-w4a4", "model": str(root / "no-such-model"), "weight_bits": 4, "act_bits": 4,
         "settings": SETTINGS},
        {"name": "tiny-mobilenet-genie-w2a4", "model": str(root / "tiny-mobilenet"), "weight_bits": 2, "act_bits": 4,
         "settings": SETTINGS},
        {"name": "gpu-only", "model": "microsoft/resnet-50", "weight_bits": 4, "act_bits": 4, "profile": "paper",
         "built_here": False},
        {"name": "tiny-resnet-genie-w8a8", "model": str(root / "tiny-resnet"), "weight_bits": 8, "act_bits": 8,
         "settings": SETTINGS, "built_here": False},
    ]
    path = root / "registry.json"
    path.write_text(json.dumps({"entries": entries}))
    return path


def test_the_shipped_registry_is_valid():
    entries = zoo.load_registry()
    assert any(e.built_here for e in entries) and any(not e.built_here for e in entries)
    assert len({e.name for e in entries}) == len(entries)


def test_bad_registries_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"entries": [{"name": "a", "model": "x", "weight_bits": 9, "act_bits": 4}]}))
    with pytest.raises(ConfigError, match="2 to 8"):
        zoo.load_registry(bad)
    bad.write_text(json.dumps({"entries": [{"name": "a", "model": "x", "weight_bits": 4, "act_bits": 4}] * 2}))
    with pytest.raises(ConfigError, match="repeats"):
        zoo.load_registry(bad)
    bad.write_text(json.dumps({"entries": [{"name": "a", "model": "x", "weight_bits": 4, "act_bits": 4,
                                            "colour": "red"}]}))
    with pytest.raises(ConfigError, match="malformed"):
        zoo.load_registry(bad)
    # Names become ZOO_DIR/<name>: one plain folder name only; values of the wrong type are named, not crashed on.
    for entry, needle in (({"name": "../escape"}, "one folder name"), ({"name": "a/b"}, "one folder name"),
                          ({"name": ""}, "one folder name"), ({"name": 5}, "one folder name"),
                          # and a Hub repo name, with room for its "-calibration" dataset: checked at load, not as
                          # "[Errno 36] File name too long" at build or an invalid repo id at publish
                          ({"name": "a" * 300}, "name (300 characters) must be a Hub repo name"),
                          ({"name": "a" * 85}, "at most 84 characters"), ({"name": "w4a4."}, "must be a Hub repo name"),
                          ({"name": "w4--a4"}, "must be a Hub repo name"), ({"name": "w4.git"}, "Hub repo name"),
                          ({"model": 5}, "model must be a non-empty string"),
                          ({"settings": {"bogus": 1}}, "unknown GenieConfig field(s) bogus"),
                          ({"settings": [1]}, "settings must be an object"),
                          ({"built_here": "no"}, "built_here must be true or false"),
                          # the entry's own keys set these fields: repeated in settings, a clear registry problem
                          ({"settings": {"weight_bits": 2}}, "settings repeats weight_bits"),
                          ({"settings": {"synthesis_prior": "auto"}}, "settings repeats synthesis_prior (set it with "
                                                                      "the entry's own 'prior' key only)"),
                          ({"settings": {"profile": "quick", "act_bits": 8}}, "settings repeats act_bits"),
                          ({"model": "recipe:nope"}, "model 'recipe:nope' is not a recipe genie_hub has"),
                          # said with the registry and the entry, not as a bare command-line hint (helper-29)
                          ({"weight_bits": "4"}, "invalid entry 'a': weight_bits must be a whole number (4, not "),
                          ({"settings": {"num_samples": 0}}, "invalid entry 'a': ")):
        bad.write_text(json.dumps({"entries": [{"name": "a", "model": "x", "weight_bits": 4, "act_bits": 4,
                                                **entry}]}))
        with pytest.raises(ConfigError, match=re.escape(needle)):
            zoo.load_registry(bad)
    bad.write_text(json.dumps({"entries": [{"name": "a" * 84, "model": "x", "weight_bits": 4, "act_bits": 4}]}))
    assert [entry.name for entry in zoo.load_registry(bad)] == ["a" * 84]


def test_a_registry_saved_with_a_utf8_byte_order_mark_is_read(tmp_path):
    """Notepad and other Windows editors may start a UTF-8 file with a BOM: it was refused as malformed JSON."""
    path = tmp_path / "registry.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"entries": [{"name": "a", "model": "x", "weight_bits": 4,
                                                                   "act_bits": 4}]}).encode())
    assert [entry.name for entry in zoo.load_registry(path)] == ["a"]


def test_build_skips_finished_entries_and_reports_a_broken_one(registry, tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main(["zoo", "build", "-o", str(out), "--registry", str(registry), "-q"]) == 1  # one entry failed
    printed = capsys.readouterr()
    assert "tiny-resnet-genie-w4a4: built" in printed.out and "tiny-mobilenet-genie-w2a4: built" in printed.out
    assert "broken-genie-w4a4: failed" in printed.out and "1 of 3 zoo entries failed" in printed.err
    assert "gpu-only" not in printed.out  # not built here
    board = json.loads((out / "leaderboard.json").read_text())["entries"]
    assert [row["name"] for row in board] == ["tiny-resnet-genie-w4a4", "tiny-mobilenet-genie-w2a4"]
    assert all(row["file_bytes"] > 0 and row["bits"] in ("W4A4", "W2A4") for row in board)
    assert "| tiny-resnet-genie-w4a4 | tiny-resnet | W4A4 |" in (out / "leaderboard.md").read_text()
    mtime = (out / "tiny-resnet-genie-w4a4" / "model" / "genie_model.safetensors").stat().st_mtime_ns
    assert main(["zoo", "build", "tiny-resnet-genie-w4a4", "-o", str(out), "--registry", str(registry), "-q"]) == 0
    assert "skipped (already built)" in capsys.readouterr().out
    assert (out / "tiny-resnet-genie-w4a4" / "model" / "genie_model.safetensors").stat().st_mtime_ns == mtime
    assert main(["zoo", "build", "nope", "-o", str(out), "--registry", str(registry)]) == 2
    assert "Unknown zoo entry nope" in capsys.readouterr().err
    # The registry entry changed after it was built: the old folder is neither skipped as it nor listed as it.
    changed = json.loads(registry.read_text())
    changed["entries"][0]["weight_bits"] = 8
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    assert main(["zoo", "build", "tiny-resnet-genie-w4a4", "-o", str(out), "--registry",
                 str(tmp_path / "changed.json"), "-q"]) == 1
    printed = capsys.readouterr()
    assert "tiny-resnet-genie-w4a4: failed: it was built as W4A4" in printed.out and "1 of 1 zoo entry" in printed.err
    board = json.loads((out / "leaderboard.json").read_text())["entries"]
    assert "tiny-resnet-genie-w4a4" not in [row["name"] for row in board]
    for command in ("build", "list"):  # list read a file as a zoo with nothing built (helper-29)
        assert main(["zoo", command, "-o", str(out / "tiny-resnet-genie-w4a4" / "run.json"), "--registry",
                     str(registry)]) == 2
        assert "is a file" in capsys.readouterr().err
    zoo.write_leaderboard(out, zoo.load_registry(registry))  # the registry as built, for the checks below

    # publish: every built entry, then the leaderboard repo; a second publish updates, never duplicates
    assert main(["zoo", "list", "-o", str(out), "--registry", str(registry)]) == 0
    listing = capsys.readouterr().out
    assert "tiny-resnet-genie-w4a4" in listing and "gpu-only" in listing


def test_publish_creates_linked_repos_and_updates_in_place(registry, tmp_path, hub_server, capsys):
    from huggingface_hub import ModelCard

    out = tmp_path / "zoo"
    zoo.build(out, ["tiny-resnet-genie-w4a4"], registry=registry, progress=False)
    before = tree_hashes(out)
    assert main(["zoo", "publish", "--namespace", "genie-org", "-o", str(out), "--registry", str(registry),
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out  # each entry's plan; nothing created, nothing written
    assert "tiny-resnet-genie-w4a4:\nDry run: nothing was uploaded." in printed
    assert "Model repo genie-org/tiny-resnet-genie-w4a4 (new)" in printed and "  + genie_model.safetensors (" in printed
    assert "Leaderboard: genie-org/genie-hub-zoo (would be updated" in printed
    assert not hub_server.repos and tree_hashes(out) == before
    assert main(["zoo", "publish", "--namespace", "genie-org", "-o", str(out), "--registry", str(registry)]) == 0
    repos = set(hub_server.repos)
    assert ("model", "genie-org/tiny-resnet-genie-w4a4") in repos and ("model", "genie-org/genie-hub-zoo") in repos
    assert ("dataset", "genie-org/tiny-resnet-genie-w4a4-calibration") in repos
    printed = capsys.readouterr().out  # the entries never built are named, not left out in silence
    assert f"tiny-mobilenet-genie-w2a4: not built in {out} (`genie_hub zoo build tiny-mobilenet-genie-w2a4`" in printed
    assert "gpu-only: not built in" in printed and ("model", "genie-org/gpu-only") not in repos
    card = ModelCard.load("genie-org/genie-hub-zoo")
    assert "[tiny-resnet-genie-w4a4](https://huggingface.co/genie-org/tiny-resnet-genie-w4a4)" in card.text
    commits = hub_server.commit_count("genie-org/genie-hub-zoo")
    assert main(["zoo", "publish", "--namespace", "genie-org", "-o", str(out), "--registry", str(registry)]) == 0
    assert set(hub_server.repos) == repos  # the same repos, updated
    assert hub_server.commit_count("genie-org/genie-hub-zoo") >= commits
    assert main(["zoo", "list", "-o", str(out), "--registry", str(registry)]) == 0
    assert "genie-org/tiny-resnet-genie-w4a4" in capsys.readouterr().out


def test_the_space_offers_zoo_entries(registry, tmp_path):
    import gradio as gr

    from genie_hub.space import load_space_app, prepare_space_folder, zoo_space_entries

    out = tmp_path / "zoo"
    zoo.build(out, ["tiny-resnet-genie-w4a4"], registry=registry, progress=False)
    local = zoo_space_entries(out, published=False)
    assert local == [{"name": "tiny-resnet-genie-w4a4", "fp32": str(registry.parent / "tiny-resnet"),
                      "quantized": str(out / "tiny-resnet-genie-w4a4" / "model")}]
    from genie_hub.errors import GenieError

    with pytest.raises(GenieError, match="holds no published entries"):  # nothing published yet: said, not ignored
        zoo_space_entries(out, published=True)
    with pytest.raises(GenieError, match="holds no built entries"):
        zoo_space_entries(tmp_path / "no-zoo-here", published=False)
    folder = prepare_space_folder(tmp_path / "space", zoo=[{"name": "e", "fp32": "o/fp", "quantized": "o/q"}])
    from huggingface_hub import ModelCard

    assert {"o/fp", "o/q"} <= set(ModelCard.load(folder / "README.md").data.models)  # linked from the Space
    app = load_space_app(folder)
    assert app.zoo_entries() == [{"name": "e", "fp32": "o/fp", "quantized": "o/q"}]
    demo = app.build_demo(zoo=local)
    picker = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.elem_id == "genie-zoo")
    assert [choice[0] for choice in picker.choices] == ["tiny-resnet-genie-w4a4"]
    dependency = next(d for d in demo.fns.values() if picker._id in [t[0] for t in d.targets])
    assert dependency.fn("tiny-resnet-genie-w4a4") == (local[0]["fp32"], local[0]["quantized"])


def test_entries_that_differ_only_in_bits_share_their_synthetic_images(registry, tmp_path):
    out = tmp_path / "zoo"
    zoo.build(out, ["tiny-resnet-genie-w4a4"], registry=registry, progress=False)
    shards = sorted((out / "_synthetic").glob("*/batch_*.safetensors"))
    assert len(shards) == 1 and not (out / "tiny-resnet-genie-w4a4" / "work" / "synthetic").exists()
    mtime = shards[0].stat().st_mtime_ns
    assert zoo.build(out, ["tiny-resnet-genie-w8a8"], registry=registry, progress=False) == {
        "tiny-resnet-genie-w8a8": "built"}
    assert sorted((out / "_synthetic").glob("*/batch_*.safetensors")) == shards  # reused, not made again
    assert shards[0].stat().st_mtime_ns == mtime


def test_publish_skips_stale_entries_and_a_leaderboard_failure_is_a_push_error(registry, tmp_path, hub_server,
                                                                               caplog):
    from genie_hub.errors import PushError

    out = tmp_path / "zoo"
    zoo.build(out, ["tiny-resnet-genie-w4a4"], registry=registry, progress=False)
    hub_server.inject_failure("commit", mode="500", repo_id="genie-org/genie-hub-zoo")
    with pytest.raises(PushError, match="leaderboard repo 'genie-org/genie-hub-zoo'.*Already published: "
                                        "genie-org/tiny-resnet-genie-w4a4.*again"):
        zoo.publish(out, "genie-org", registry=registry)

    hub_server.reset()
    data = json.loads(registry.read_text())  # the registry now asks for other bits than the folder was built with
    for entry in data["entries"]:
        if entry["name"] == "tiny-resnet-genie-w4a4":
            entry["act_bits"] = 8
    changed = tmp_path / "registry.json"
    changed.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="genie_hub.zoo"), pytest.raises(ConfigError, match="Nothing to publish"):
        zoo.publish(out, "genie-org", registry=changed)
    assert "tiny-resnet-genie-w4a4 is not published" in caplog.text and "W4A4" in caplog.text
    assert not hub_server.repos


def test_inputs_an_interrupted_build_left_are_made_again(tmp_path, monkeypatch):
    """A sample-photos set or a converted base that an interrupted build of an earlier genie_hub left half
    written (it wrote in place) is made again, not used; a finished one is reused."""
    import genie_hub.recipes as recipes

    made = []

    def make(folder: Path) -> Path:
        made.append(folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
        return folder

    monkeypatch.setattr(recipes, "convert_efficientnet_lite0", make)
    monkeypatch.setattr(recipes, "write_sample_photos", make)
    photos, base = tmp_path / "_data" / "sample-photos", tmp_path / "_bases" / "efficientnet-lite0"
    photos.mkdir(parents=True)
    (photos / "astronaut_0.png").write_bytes(b"\x89PNG\r\n")  # 1 of 49 files, truncated
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")  # written before the weights, which never came
    entry = zoo.ZooEntry("lite0", "recipe:efficientnet-lite0", 8, 8, eval_dataset="recipe:sample-photos")
    for _ in range(2):
        assert zoo._eval_source(entry, tmp_path) == str(photos)
        assert Path(zoo._model_source(entry, tmp_path)).resolve() == base.resolve()
    assert made == ["sample-photos", "efficientnet-lite0"]  # once each: the second time they were complete


def _changed_registry(registry: Path, tmp_path: Path, name: str, **changes) -> Path:
    data = json.loads(registry.read_text())
    for entry in data["entries"]:
        if entry["name"] == name:
            entry.update(changes)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(data))
    return path


def test_an_entry_whose_registry_settings_changed_is_stale_not_built(registry, tmp_path, capsys):
    """Everything that decides an entry's result is compared with what its folder was built with, not only the
    bits and profile: the folder is then reported stale by build and list and left out of the leaderboard."""
    out, name = tmp_path / "zoo", "tiny-resnet-genie-w4a4"
    zoo.build(out, [name], registry=registry, progress=False)
    weights = out / name / "model" / "genie_model.safetensors"
    mtime = weights.stat().st_mtime_ns
    for changes, needle in (({"model": str(registry.parent / "tiny-mobilenet")}, "base_model"),
                            ({"settings": {**SETTINGS, "num_samples": 16}}, "num_samples: 8 -> 16"),
                            ({"settings": {**SETTINGS, "seed": 1}}, "seed: 0 -> 1"),
                            ({"prior": "bn-statistics"}, "synthesis_prior: 'auto' -> 'bn-statistics'"),
                            ({"few_shot": str(tmp_path / "photos")}, "calibration: 'synthetic' ->")):
        changed = _changed_registry(registry, tmp_path, name, **changes)
        assert main(["zoo", "build", name, "-o", str(out), "--registry", str(changed), "-q"]) == 1
        printed = capsys.readouterr().out
        assert f"{name}: failed: it was built as W4A4 (quick profile) with other settings" in printed, changes
        assert needle in printed and f"delete {out / name} to rebuild it" in printed
        assert name not in [row["name"] for row in json.loads((out / "leaderboard.json").read_text())["entries"]]
        assert main(["zoo", "list", "-o", str(out), "--registry", str(changed)]) == 0
        assert re.search(rf"{name} .* stale ", capsys.readouterr().out)
    assert weights.stat().st_mtime_ns == mtime  # never rebuilt or touched
    assert zoo.build(out, [name], registry=registry, progress=False) == {name: "skipped (already built)"}


def test_a_damaged_entry_is_not_built_and_building_repairs_it(registry, tmp_path, capsys):
    """A folder with run.json but missing files (or a malformed run.json) is damaged, not built: list says so
    and build runs the pipeline into it again, which resumes from the finished work. A folder that is no
    genie_hub output is reported with advice `zoo build` can follow (it has no --overwrite)."""
    import shutil

    out, name = tmp_path / "zoo", "tiny-resnet-genie-w4a4"
    zoo.build(out, [name], registry=registry, progress=False)
    weights = out / name / "model" / "genie_model.safetensors"
    built = weights.read_bytes()
    run = json.loads((out / name / "run.json").read_text())

    def damage_model():
        shutil.rmtree(out / name / "model")

    def damage_record():
        (out / name / "run.json").write_text(json.dumps({**run, "config": "oops"}))

    for damage, reason in ((damage_model, "config.json is missing"), (weights.unlink, "genie_model.safetensors is "
                                                                                      "missing"),
                           (damage_record, "run.json is malformed (config of the wrong type)")):
        damage()
        assert main(["zoo", "list", "-o", str(out), "--registry", str(registry)]) == 0
        listing = capsys.readouterr().out
        assert re.search(rf"{name} .* damaged ", listing) and reason in listing
        assert name not in [row["name"] for row in zoo.leaderboard_rows(out, zoo.load_registry(registry))]
        assert zoo.build(out, [name], registry=registry, progress=False) == {name: "built"}
        assert weights.read_bytes() == built and zoo.entry_state(out, zoo.load_registry(registry)[0]).kind == "built"

    (out / "tiny-mobilenet-genie-w2a4").mkdir()
    (out / "tiny-mobilenet-genie-w2a4" / "notes.txt").write_text("not a genie_hub folder")
    outcome = zoo.build(out, ["tiny-mobilenet-genie-w2a4"], registry=registry, progress=False)
    assert outcome["tiny-mobilenet-genie-w2a4"].startswith("failed: the folder is not empty and is not a genie_hub "
                                                           "output folder; delete")
    assert "--overwrite" not in outcome["tiny-mobilenet-genie-w2a4"]


def _photos(folder: Path, count: int) -> str:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (36, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


def test_a_failed_evaluation_is_reported_and_done_again_by_the_next_build(registry, tmp_path, monkeypatch, capsys):
    """An entry whose evaluation failed is 'built, evaluation failed: <reason>', not built; the leaderboard says
    so (never 'unlabelled'); the next build evaluates it again without quantizing again. An entry whose
    evaluation set alone changed is evaluated again the same way."""
    import genie_hub.pipeline as pipeline
    import genie_hub.quantization.reconstruction as reconstruction
    import genie_hub.synthesis.loop as synthesis_loop

    out, name = tmp_path / "zoo", "tiny-resnet-genie-w4a4"
    changed = _changed_registry(registry, tmp_path, name, eval_dataset=_photos(tmp_path / "photos", 4),
                                eval_unlabelled=True)
    build = ["zoo", "build", name, "-o", str(out), "--registry", str(changed), "-q"]

    def drop(*args, **kwargs):
        raise ConnectionError("the stream dropped")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "evaluate_on_dataset", drop)
        assert main(build) == 1
    printed = capsys.readouterr()
    assert f"{name}: built, evaluation failed: ConnectionError: the stream dropped" in printed.out
    assert "could not be evaluated" in printed.err
    row = next(line for line in (out / "leaderboard.md").read_text().splitlines() if line.startswith(f"| {name} "))
    assert "| photos (evaluation failed) |" in row and "unlabelled" not in row and "0 img" not in row
    assert main(["zoo", "list", "-o", str(out), "--registry", str(changed)]) == 0
    assert re.search(rf"{name} .* no eval ", capsys.readouterr().out)

    def recompute(*args, **kwargs):
        raise AssertionError("synthesis or reconstruction ran again")

    for module in (reconstruction, synthesis_loop):
        monkeypatch.setattr(module, "optimize", recompute)
    assert main(build) == 0
    assert f"{name}: built" in capsys.readouterr().out
    run = json.loads((out / name / "run.json").read_text())
    assert run["evaluation"]["num_images"] == 4 and "evaluation_error" not in run
    # The leaderboard's wall time is both builds', not the re-evaluation's alone.
    assert run["total_commands"] == 2 and run["total_wall_seconds"] > run["wall_seconds"]
    entry = json.loads((out / "leaderboard.json").read_text())["entries"][0]
    assert entry["wall_seconds"] == run["total_wall_seconds"]
    board = (out / "leaderboard.md").read_text()
    assert f"| {name} | tiny-resnet | W4A4 | quick | photos (4 img, unlabelled) |" in board
    assert main(build) == 0 and "skipped (already built)" in capsys.readouterr().out

    other = _changed_registry(registry, tmp_path, name, eval_dataset=_photos(tmp_path / "other", 2),
                              eval_unlabelled=True)
    assert zoo.entry_state(out, zoo.load_registry(other)[0]).reason == ("evaluated on photos (train, unlabelled), "
                                                                        "the registry now asks for other (unlabelled)")
    assert zoo.build(out, [name], registry=other, progress=False) == {name: "built"}
    assert json.loads((out / "leaderboard.json").read_text())["entries"][0]["eval_dataset"] == "other"


def test_publish_checks_the_namespace_and_every_entry_before_pushing_any(registry, tmp_path, hub_server, capsys):
    """A bad --namespace (empty: the token's own user would get the entries) or one entry folder that cannot be
    pushed stops `zoo publish` before its first upload, not halfway."""
    out = tmp_path / "zoo"
    zoo.build(out, ["tiny-resnet-genie-w4a4", "tiny-mobilenet-genie-w2a4"], registry=registry, progress=False)
    for namespace in ("", " ", "genie-org/sub", "bad name"):
        assert main(["zoo", "publish", "--namespace", namespace, "-o", str(out), "--registry", str(registry)]) == 2
        assert "is not a Hub user or organization name" in capsys.readouterr().err
    weights = out / "tiny-mobilenet-genie-w2a4" / "model" / "genie_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: present, so built, but it does not load
    from genie_hub.errors import PushError

    with pytest.raises(PushError, match="Zoo entry tiny-mobilenet-genie-w2a4 cannot be published, so nothing was"):
        zoo.publish(out, "genie-org", registry=registry)
    assert not hub_server.repos  # tiny-resnet-genie-w4a4, first in the registry, was not pushed either
