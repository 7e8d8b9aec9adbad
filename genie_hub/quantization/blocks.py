"""Reconstruction units: which modules Genie-M reconstructs together.

How a unit is chosen, without looking at class names:
1. Trace one forward pass with autograd on and record, for every module holding two or more Conv2d/Linear
   ops, the autograd node of its input and of its output.
2. A module is a *residual block* when its output graph contains an addition whose two operands both depend
   on the module's input (the input fans out and is added back: ResNet basic/bottleneck, RegNet X/Y,
   MobileNetV2 / EfficientNet / MnasNet inverted residuals with a skip). Squeeze-excite multiplies, so it
   does not count. The innermost residual blocks become units; one whose addition takes its input itself
   (`x + f(x)`, no module on the skip path) is marked `adds_input` (see `block_input.py`).
3. Repeated blocks without a skip become units too: the elements of an `nn.ModuleList`/`nn.Sequential`
   whose elements all hold two or more ops (e.g. the strided first block of a MobileNetV2 or EfficientNet
   stage), unless they contain or lie inside a unit already chosen.
4. Every remaining Conv2d/Linear (stem, last conv, classifier, MobileNetV1's layers) is its own unit: the
   layer-wise fallback for architectures with no residual structure.
Units are returned in execution order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..adapters import model_logits
from ..hooks import TemporaryHooks

QUANTIZABLE = (nn.Conv2d, nn.Linear)
_FORWARD_METHODS = ("forward", "_conv_forward")


def attention_modules(model: nn.Module) -> list[str]:
    """The outermost modules that compute attention, by their class (its name holds `Attention`, as LeViT's
    `LevitAttentionSubsample` does; nn.MultiheadAttention)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if name and ("Attention" in type(module).__name__ or isinstance(module, nn.MultiheadAttention)) \
                and not any(name.startswith(outer + ".") for outer in found):
            found.append(name)
    return found


def custom_forward_layers(model: nn.Module) -> dict[str, str]:
    """{module name: class name} of the Conv2d/Linear subclasses that compute their own forward (BiT's
    weight-standardized conv, a conv with "same" padding): a quantized layer computes the plain conv or linear
    map, so it would silently change what they compute."""
    found = {}
    for name, module in model.named_modules():
        base = next((b for b in QUANTIZABLE if isinstance(module, b)), None)
        if base is not None and any(getattr(type(module), method, None) is not getattr(base, method, None)
                                    for method in _FORWARD_METHODS):
            found[name] = type(module).__name__
    return found


@dataclass
class Unit:
    name: str
    kind: str  # "block" (residual or sibling of one) or "layer"
    ops: list[str] = field(default_factory=list)
    adds_input: bool = False  # a residual block whose skip connection is its input itself (no module on it)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "ops": list(self.ops)}


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if hasattr(value, "values") and callable(value.values):
        for item in value.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _has_residual_add(output_node, input_node) -> bool:
    """True if some Add node in the graph of `output_node` has >= 2 operands that reach `input_node`."""
    reaches: dict = {}
    stack = [(output_node, False)]
    while stack:
        node, expanded = stack.pop()
        if node is None or (node in reaches and not expanded):
            continue
        if node is input_node:
            reaches[node] = True
            continue
        children = [child for child, _ in getattr(node, "next_functions", ()) if child is not None]
        if not expanded:
            reaches[node] = False  # provisional, prevents revisits
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in reaches)
            continue
        hits = sum(1 for child in set(children) if reaches.get(child, False))
        reaches[node] = hits > 0
        if hits >= 2 and "Add" in type(node).__name__:
            return True
    return False


def _adds_input(output_node, input_node) -> bool:
    """True if some Add node in the graph of `output_node` takes `input_node` itself as an operand: the block
    adds its own input back (`x + f(x)`; also through an `nn.Identity`, which returns its input)."""
    seen, stack = set(), [output_node]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node is input_node:
            continue
        seen.add(node)
        children = [child for child, _ in getattr(node, "next_functions", ()) if child is not None]
        if "Add" in type(node).__name__ and input_node in children:
            return True
        stack.extend(children)
    return False


def discover_units(model: nn.Module, example_input: torch.Tensor) -> list[Unit]:
    """Find the reconstruction units of `model` (see the module docstring)."""
    op_names = [name for name, module in model.named_modules() if isinstance(module, QUANTIZABLE)]
    op_set = set(op_names)

    def ops_under(prefix: str) -> list[str]:
        if prefix == "":
            return list(op_names)
        return [n for n in op_names if n == prefix or n.startswith(prefix + ".")]

    candidates = {name: module for name, module in model.named_modules()
                  if name and not isinstance(module, QUANTIZABLE) and len(ops_under(name)) >= 2}
    records: dict[str, dict] = {}
    order: list[str] = []

    def pre_hook(name):
        def hook(module, args, kwargs):
            tensor = _first_tensor(args) if args else _first_tensor(kwargs)
            rec = records.setdefault(name, {"calls": 0})
            rec["calls"] += 1
            rec["input"] = tensor.grad_fn if tensor is not None else None
        return hook

    def post_hook(name):
        def hook(module, args, kwargs, output):
            tensor = _first_tensor(output)
            records[name]["output"] = tensor.grad_fn if tensor is not None else None
        return hook

    def op_hook(name):
        def hook(module, args):
            order.append(name)
        return hook

    was_training = model.training
    model.eval()
    try:
        with TemporaryHooks() as hooks, torch.enable_grad():
            for name, module in candidates.items():
                hooks.pre(module, pre_hook(name), with_kwargs=True)
                hooks.post(module, post_hook(name), with_kwargs=True)
            for name in op_names:
                hooks.pre(model.get_submodule(name), op_hook(name))
            x = example_input.detach().clone().requires_grad_(True) * 1.0
            model_logits(model, x)
    finally:
        model.train(was_training)

    executed = [n for i, n in enumerate(order) if n not in order[:i]]
    position = {n: i for i, n in enumerate(executed)}
    residual = [name for name, rec in records.items()
                if rec.get("calls") == 1 and rec.get("input") is not None and rec.get("output") is not None
                and _has_residual_add(rec["output"], rec["input"])]
    innermost = [n for n in residual if not any(o != n and o.startswith(n + ".") for o in residual)]

    units = {n: "block" for n in innermost}
    adds_input = {n for n in innermost if _adds_input(records[n]["output"], records[n]["input"])}
    for name, container in model.named_modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        children = [f"{name}.{child}" if name else child for child, _ in container.named_children()]
        children = [c for c in children if any(o in position for o in ops_under(c))]
        if len(children) < 2 or any(len(ops_under(c)) < 2 or records.get(c, {}).get("calls") != 1 for c in children):
            continue
        for child in children:
            inside_unit = any(child == u or child.startswith(u + ".") or u.startswith(child + ".") for u in units)
            if not inside_unit:
                units[child] = "block"

    covered = {op for unit in units for op in ops_under(unit)}
    for op in executed:
        if op not in covered:
            units[op] = "layer"
    result = []
    for name, kind in units.items():
        ops = [o for o in (ops_under(name) if kind == "block" else [name]) if o in position]
        if ops:
            result.append(Unit(name=name, kind=kind, ops=sorted(ops, key=position.get), adds_input=name in adds_input))
    result.sort(key=lambda unit: position[unit.ops[0]])
    assert all(o in op_set for unit in result for o in unit.ops)
    return result
