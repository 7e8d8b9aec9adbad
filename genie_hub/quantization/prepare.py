"""Turn an FP model into a quantizable copy: pick bit-widths per op, wire up (shared) input quantizers.

Attention: the copy's attention is routed through `attention.attention_forward` (the adapter's
`route_attention`); every module the trace sees calling it gets a `QuantAttention` child (`<module>.quantized_matmul`,
act bits = the run's, overridable by that name) quantizing queries, keys, values and probabilities.

Which op gets which bits: all Conv2d/Linear at the requested W/A, except the first executed op (W8, FP
input: the image), the second (A8 input) and the classifier (W8A8): every op whose output reaches the logits
through no other op (`head_ops`; two for a distilled DeiT, whose logits average a class and a distillation
head), else the last executed one; then `config.overrides`
(fnmatch patterns over module names) apply. A parameter-free `nn.Identity` that reads the same tensor as a
conv is a residual shortcut: it gets wrapped too. All ops reading one tensor share one input quantizer at the
finest bits any of them has (the reference's sharing: the projection shortcut of a first block reads the A8
tensor its first conv reads), except ops whose act bits the user overrode.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import logging

import torch
from torch import nn

from ..adapters import adapter_for, model_logits
from ..config import GenieConfig, LayerBits
from ..errors import ConfigError, UnsupportedModelError
from ..hooks import TemporaryHooks
from .attention import (ATTENTION_CHILD, QuantAttention, attach, attention_forward, check_attention_module,
                        recording_attention)
from .block_input import quantize_block_input
from .blocks import QUANTIZABLE, Unit, custom_forward_layers, discover_units
from .layers import QuantConv2d, QuantizedOp, QuantLinear, QuantShortcut
from .quantizers import ActQuantizer

logger = logging.getLogger("genie_hub.quantization")


def trace_inputs(model: nn.Module, example_input: torch.Tensor,
                 blocks: tuple[str, ...] = ()) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Execution order of Conv2d/Linear/Identity modules and the tensor object each one read (the input of each
    of `blocks` too, which are not in the order); interleaved, the `quantized_matmul` child names of modules
    whose attention runs through `attention_forward` (not in inputs)."""
    order: list[str] = []
    inputs: dict[str, torch.Tensor] = {}
    names = {id(module): name for name, module in model.named_modules()}

    def hook(name, ordered=True):
        def record(module, args):
            if args and isinstance(args[0], torch.Tensor) and name not in inputs:
                if ordered:
                    order.append(name)
                inputs[name] = args[0]
        return record

    def attention_called(module):
        name = names.get(id(module))
        if name and f"{name}.{ATTENTION_CHILD}" not in order:
            order.append(f"{name}.{ATTENTION_CHILD}")

    with TemporaryHooks() as hooks, torch.no_grad(), recording_attention(attention_called):
        for name, module in model.named_modules():
            if isinstance(module, (*QUANTIZABLE, nn.Identity)):
                hooks.pre(module, hook(name))
            elif name in blocks:
                hooks.pre(module, hook(name, ordered=False))
        model_logits(model, example_input)
    return order, inputs


def head_ops(model: nn.Module, example_input: torch.Tensor, ops: list[str]) -> list[str]:
    """The ops among `ops` whose outputs reach the logits through no other op, in `ops` order: found by walking
    the logits' autograd graph back until it meets an op's output. Usually the classifier alone; both heads of a
    model whose logits combine several (DeiT's distilled models average a class and a distillation head)."""
    produced: dict[object, str] = {}

    def hook(name):
        def record(module, args, output):
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                produced.setdefault(output.grad_fn, name)
        return record

    with TemporaryHooks() as hooks, torch.enable_grad():
        for name in ops:
            hooks.post(model.get_submodule(name), hook(name))
        logits = model_logits(model, example_input.detach().clone().requires_grad_(True))
    found, seen, stack = set(), set(), [logits.grad_fn] if logits.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in produced:
            found.add(produced[node])
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return [name for name in ops if name in found]


def resolve_bits(op_order: list[str], config: GenieConfig, heads: list[str] | None = None) -> dict[str, LayerBits]:
    """Bits per Conv2d/Linear op name, after the standard exceptions and the user's overrides. `heads`: the ops
    that get the last layer's bits (`head_ops`); default, the last op."""
    bits = {name: LayerBits(weight=config.weight_bits, act=config.act_bits) for name in op_order}
    if op_order:
        bits[op_order[0]] = config.first_layer
    if len(op_order) > 1:
        bits[op_order[1]] = dataclasses.replace(bits[op_order[1]], act=config.second_layer_act_bits)
    if len(op_order) > 2:
        for name in [n for n in heads or () if n in op_order[2:]] or op_order[-1:]:
            bits[name] = config.last_layer
    for name in op_order:
        for pattern, override in config.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                bits[name] = dataclasses.replace(bits[name], **override)
    return bits


def check_overrides(model: nn.Module, config: GenieConfig, weighted: list[str], weightless: list[str]) -> None:
    """Every `config.overrides` pattern must match an op the run quantizes: `weighted` (Conv2d, Linear) or
    `weightless` (an Identity shortcut, the `quantized_matmul` of an attention module), and weight bits must
    reach a weighted one. A pattern that matches nothing, or weight bits on ops that have no weights, would
    silently change nothing."""
    names = [*weighted, *weightless]
    unmatched = [p for p in config.overrides if not any(fnmatch.fnmatchcase(name, p) for name in names)]
    if unmatched:
        shown = ", ".join(names[:60]) + (f", ... ({len(names) - 60} more)" if len(names) > 60 else "")
        raise ConfigError(
            f"The override pattern(s) {', '.join(repr(p) for p in unmatched)} match no quantized op of "
            f"{type(model).__name__}, so they would change nothing. Patterns are fnmatch patterns over these "
            f"module names: {shown}. E.g. 'classifier*=8/8' or '*.shortcut=/8'.")
    no_weights = [p for p, bits in config.overrides.items() if bits.get("weight") is not None
                  and not any(fnmatch.fnmatchcase(name, p) for name in weighted)]
    if no_weights:
        raise ConfigError(
            f"The override pattern(s) {', '.join(repr(p) for p in no_weights)} set weight bits, but match only ops "
            "without weights (shortcuts, attention matmuls), so the weight bits would change nothing. Leave the "
            "weight bits out for them ('PATTERN=/A').")


def prepare_model(model: nn.Module, config: GenieConfig, example_input: torch.Tensor,
                  range_init: str = "lp") -> tuple[nn.Module, list[Unit], list[str]]:
    """Return (quantizable copy of `model`, reconstruction units, quantized op names in execution order)."""
    fp_model = model.eval()
    custom = custom_forward_layers(fp_model)
    if custom:
        shown = ", ".join(f"{name} ({cls})" for name, cls in list(custom.items())[:5])
        raise UnsupportedModelError(
            f"genie_hub cannot quantize {type(fp_model).__name__} yet: {len(custom)} of its layers subclass "
            f"nn.Conv2d/nn.Linear with a forward of their own ({shown}{', ...' if len(custom) > 5 else ''}), e.g. "
            "weight standardization or padding, which a quantized layer (the plain conv or linear map) would "
            "silently drop. Please report it with the model id; models of the supported families (ResNet, RegNet, "
            "MobileNet, EfficientNet, ViT, DeiT, Swin, ConvNeXt) work.")
    q_model = copy.deepcopy(fp_model)
    adapter_for(q_model).route_attention(q_model, attention_forward)
    units = discover_units(fp_model, example_input)
    traced, inputs = trace_inputs(q_model, example_input, tuple(u.name for u in units if u.adds_input))
    attention = [n for n in traced if n not in inputs]
    order = [n for n in traced if n in inputs]
    ops = [n for n in order if isinstance(fp_model.get_submodule(n), QUANTIZABLE)]
    readers: dict[int, list[str]] = {}
    for name in order:
        readers.setdefault(id(inputs[name]), []).append(name)
    # An Identity is quantized only as a shortcut, next to a Conv2d/Linear reading the same tensor; others
    # (ConvNeXt's drop_path, placeholders) stay as they are, so an override cannot reach them.
    shortcuts = [n for n in order if n not in ops and any(r in ops for r in readers[id(inputs[n])])]
    check_overrides(fp_model, config, ops, shortcuts + attention)
    bits = resolve_bits(ops, config, head_ops(fp_model, example_input, ops))
    attention_bits = _attention_bits(attention, units, config)
    act_overrides = {name: o["act"] for name in order for p, o in config.overrides.items()
                     if fnmatch.fnmatchcase(name, p) and "act" in o}  # the last matching pattern wins
    act_bits = {name: b.act for name, b in bits.items()}
    for name in order:  # Identity shortcuts next to a quantized reader of the same tensor
        if isinstance(fp_model.get_submodule(name), nn.Identity):
            sharers = [bits[n].act for n in readers[id(inputs[name])] if n in bits and bits[n].act is not None]
            if sharers:
                act_bits[name] = act_overrides[name] if name in act_overrides else max(sharers)
    shared_bits = {}  # one quantizer per tensor: every reader gets the finest bits any of them needs
    for tensor_id, names in readers.items():
        act = [act_bits[n] for n in names if act_bits.get(n) is not None and n not in act_overrides]
        if act:
            shared_bits[tensor_id] = max(act)

    quantizers: dict[tuple[int, int], ActQuantizer] = {}

    def input_quantizer(name: str) -> ActQuantizer | None:
        """The reference shares one quantizer between a conv and the shortcut reading its input (so a first
        block's projection shortcut reads the A8 tensor its conv reads); an op whose act bits the user
        overrode gets a quantizer of those bits (shared only with readers of equal bits)."""
        if act_bits.get(name) is None:
            return None
        tensor_id = id(inputs[name])
        bits_here = act_bits[name] if name in act_overrides else shared_bits[tensor_id]
        key = (tensor_id, bits_here)
        if key in quantizers:
            quantizers[key].shared = True
        else:
            quantizers[key] = ActQuantizer(bits_here, method=range_init).to(example_input.device)
        return quantizers[key]

    quantized: list[str] = []
    for name, act in attention_bits.items():
        parent = name.rpartition(".")[0]
        check_attention_module(parent, q_model.get_submodule(parent))
        attach(q_model, name, QuantAttention.for_bits(act, range_init).to(example_input.device),
               adapter_for(q_model).attention_detour)
    for name in traced:
        if name in attention:
            if name in attention_bits:
                quantized.append(name)
            continue
        module = q_model.get_submodule(name)
        if name in bits:
            cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
            new = cls.from_float(module, bits[name].weight, input_quantizer(name), method=range_init)
        elif act_bits.get(name) is not None:  # an Identity shortcut next to a quantized reader
            new = QuantShortcut.from_float(module, input_quantizer(name))
        else:
            continue
        q_model.set_submodule(name, new)
        quantized.append(name)
    for unit in units:
        unit.ops = [n for n in quantized if n in unit.ops or (n not in bits and n.startswith(unit.name + "."))]
        if unit.adds_input:
            _quantize_skip(q_model, unit, inputs, readers)
    return q_model, units, quantized


def _quantize_skip(q_model: nn.Module, unit: Unit, inputs: dict[str, torch.Tensor],
                   readers: dict[int, list[str]]) -> None:
    """Quantize the input of a block that adds it back (`block_input.py`) with the grid of the block's first op,
    when that op reads the block input itself (or a same-sized copy: TF-style zero padding) and no shortcut
    module already quantizes the skip. Otherwise the skip stays as it is (e.g. a transformer layer, whose
    first op reads a LayerNorm of the residual stream)."""
    block_input = inputs.get(unit.name)
    if block_input is None or any(isinstance(q_model.get_submodule(n), (nn.Identity, QuantShortcut))
                                  for n in readers.get(id(block_input), ())):
        return
    first = next((n for n in unit.ops if isinstance(q_model.get_submodule(n), (QuantConv2d, QuantLinear))), None)
    op = q_model.get_submodule(first) if first is not None else None
    if op is None or op.act_bits is None or not torch.equal(inputs[first], block_input):
        return
    quantize_block_input(q_model.get_submodule(unit.name), unit.name, op)


def _attention_bits(attention: list[str], units: list[Unit], config: GenieConfig) -> dict[str, int]:
    """Act bits of each attention's `quantized_matmul` (config.act_bits, then the overrides' act bits; an FP
    override leaves it out). Attention outside every block unit would never be calibrated: it stays in FP."""
    bits = {}
    for name in attention:
        act = config.act_bits
        for pattern, override in config.overrides.items():
            if fnmatch.fnmatchcase(name, pattern) and "act" in override:
                act = override["act"]
        if act is None:
            continue
        if not any(unit.kind == "block" and name.startswith(unit.name + ".") for unit in units):
            logger.warning("The attention of %s lies in no reconstruction block: it stays in floating point.",
                           name.rpartition(".")[0])
            continue
        bits[name] = act
    return bits


def quantized_ops(model: nn.Module, prefix: str = "") -> dict[str, QuantizedOp]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedOp)
            and (not prefix or name == prefix or name.startswith(prefix + "."))}
