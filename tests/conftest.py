"""Shared pytest configuration.

Other engineers: add your fixtures in your own clearly marked section below; keep the "Loopback Hub" section
first, because it must run before anything imports huggingface_hub / datasets / transformers.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

# =====================================================================================================
# Loopback Hub (owner: tests/hub_server.py, tests/test_hub.py)
#
# huggingface_hub and datasets read HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME at IMPORT time, so for the whole
# pytest session (and every subprocess it starts, which inherits os.environ) this block, at conftest import:
#   * starts tests/hub_server.HubServer on 127.0.0.1:<free port> (a daemon thread; any Hub call made by any
#     test gets a fast, deterministic answer from it, e.g. 404 RepoNotFound, never the real Hub),
#   * sets HF_ENDPOINT=http://127.0.0.1:<port>, HF_TOKEN=hf_loopback_test_token, HF_HOME=<session temp dir>
#     (so the user's ~/.cache/huggingface and stored token are never used or modified),
#     HF_HUB_DISABLE_XET=1 (classic LFS uploads), progress bars and telemetry off,
#   * unsets HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and HF_DATASETS_OFFLINE.
# Tests that need the real Hub are opt-in (tests/test_hub_live.py) and run in subprocesses with their own env.
# Use the `hub_server` fixture to get the server with an empty state (it resets repos and injected faults).
# =====================================================================================================
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # make tests/hub_server.py importable
from hub_server import HubServer  # noqa: E402

# The user's own settings, before this block replaces them (tests/test_hub_live.py hands them to a subprocess).
ORIGINAL_HF_ENV = {k: v for k, v in os.environ.items()
                   if k.startswith(("HF_", "HUGGING_FACE_")) or k in ("TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy")}
HUB_TOKEN = "hf_loopback_test_token"
HUB_USER = "tester"
_HUB_HOME = tempfile.mkdtemp(prefix="genie-hub-test-hf-home-")
_HUB = HubServer(username=HUB_USER, orgs=("genie-org",)).start()
_HUB_ENV = {
    "HF_ENDPOINT": _HUB.url,
    "HF_TOKEN": HUB_TOKEN,
    "HF_HOME": _HUB_HOME,
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
_HUB_UNSET = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGING_FACE_HUB_TOKEN",
              "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN_PATH", "HF_XET_CACHE",
              "HF_HUB_DISABLE_IMPLICIT_TOKEN")
for _name in ("NO_PROXY", "no_proxy"):  # an HTTP(S)_PROXY of the CI machine must not see loopback traffic
    _HUB_ENV[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))
os.environ.update(_HUB_ENV)
for _name in _HUB_UNSET:
    os.environ.pop(_name, None)
if "huggingface_hub" in sys.modules:  # imported before this conftest (a plugin?): its constants are stale
    import huggingface_hub.constants as _hf_constants

    if _hf_constants.ENDPOINT != _HUB.url:
        raise RuntimeError("huggingface_hub was imported before tests/conftest.py could point HF_ENDPOINT at the "
                           "loopback Hub; do not import it from pytest plugins or a root conftest.")


def _hub_subprocess_env(**overrides: str | None) -> dict[str, str]:
    """os.environ with the loopback Hub settings, plus overrides (None removes a variable): for subprocesses."""
    env = dict(os.environ)
    env.update(_HUB_ENV)
    for name in _HUB_UNSET:
        env.pop(name, None)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture
def hub_subprocess_env():
    """A function(**overrides) -> env dict for subprocess.run: the loopback Hub settings plus overrides
    (a None value removes the variable), e.g. hub_subprocess_env(HF_HUB_OFFLINE="1")."""
    return _hub_subprocess_env


@pytest.fixture
def original_hf_env() -> dict[str, str]:
    """The HF_* / HUGGING_FACE_* variables as they were before conftest pointed them at the loopback Hub."""
    return dict(ORIGINAL_HF_ENV)


@pytest.fixture
def hub_server(monkeypatch) -> HubServer:
    """The session's loopback Hub, emptied (no repos, no faults) and with the Hub env vars (re)applied."""
    for name, value in _HUB_ENV.items():
        monkeypatch.setenv(name, value)
    for name in _HUB_UNSET:
        monkeypatch.delenv(name, raising=False)
    _HUB.reset()
    _HUB.rejected_tokens.clear()
    if "huggingface_hub" in sys.modules:  # fsspec caches HfFileSystem instances and their listings
        from huggingface_hub import HfFileSystem

        HfFileSystem.clear_instance_cache()
    yield _HUB
    _HUB.faults.clear()
# ============================================ end Loopback Hub ============================================
