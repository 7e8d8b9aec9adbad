"""Temporary forward hooks: register any number, and leave the model exactly as it was, even on error.

Synthesis priors, swing convolution, unit discovery and activation capture all observe or alter a model
through forward hooks that must not outlive the operation.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


class TemporaryHooks:
    """`with TemporaryHooks() as hooks: hooks.pre(module, fn); hooks.post(module, fn)`: all removed on exit."""

    def __init__(self) -> None:
        self._handles: list = []

    def pre(self, module: nn.Module, hook: Callable, *, with_kwargs: bool = False, prepend: bool = False) -> None:
        """`prepend=True`: run before the module's own pre-hooks (see the input they are given)."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs, prepend=prepend))

    def post(self, module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> None:
        self._handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "TemporaryHooks":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()
