"""genie_hub.runtime: the command line's allocator setting, and the cases where it must stay out of the way."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from genie_hub import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("variable,value", [("GENIE_HUB_SYSTEM_MALLOC", "1"), ("MALLOC_ARENA_MAX", "2"),
                                            ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")])
def test_a_users_own_allocator_choice_is_left_alone(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *a, **k: pytest.fail("mallopt must not be called"))
    assert runtime.reuse_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_reusing_freed_memory_applies_on_glibc_and_changes_no_result():
    code = ("import torch\nfrom genie_hub.runtime import reuse_freed_memory\n"
            "torch.manual_seed(0); x = torch.randn(16, 96, 64, 64)\n"
            "before = torch.nn.functional.conv2d(x, x[:8, :, :3, :3]) / 3\n"
            "assert reuse_freed_memory()\n"
            "after = torch.nn.functional.conv2d(x, x[:8, :, :3, :3]) / 3\n"
            "assert torch.equal(before, after)\nprint('ok')")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_command_line_applies_it_before_any_command(monkeypatch, capsys):
    from genie_hub import cli

    calls = []
    monkeypatch.setattr(runtime, "reuse_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setitem(cli.COMMANDS, "zoo", lambda args: calls.append("command"))
    assert cli.main(["zoo", "list"]) == 0
    assert calls == ["malloc", "command"]
