"""The fast forms of synthesis and reconstruction pieces compute what their plain definitions compute (issue #13).

Each fast form is checked against the definition it replaces, on values and gradients, including the edge
cases the definition handles (odd sizes, one-pixel maps, constant channels).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from genie_hub.optimization import adam
from genie_hub.synthesis.bn_stats import bn_statistics_loss, channel_statistics
from genie_hub.synthesis.generator import Generator, upsample_conv
from genie_hub.synthesis.swing import swing, swing_reference


def _values_and_grads(fn, *inputs: torch.Tensor, weight: torch.Tensor | None = None):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    loss = (out * weight).sum() if weight is not None else out.sum()
    return out.detach(), torch.autograd.grad(loss, leaves)


def _with_tensors(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, fn):
    """Run fn with conv's parameters replaced by (differentiable) tensors."""
    saved = conv.weight, conv.bias
    del conv.weight, conv.bias
    conv.weight, conv.bias = weight, bias
    try:
        return fn()
    finally:
        del conv.weight, conv.bias
        conv.weight, conv.bias = saved


@pytest.mark.parametrize("size", [(7, 7), (4, 9), (8, 5)])
def test_upsample_conv_is_upsample_then_conv(size):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(3, 6, *size)
    target = (2 * size[0], 2 * size[1])
    weight = torch.randn(3, 5, *target)

    def fused(x, w, b):
        return _with_tensors(conv, w, b, lambda: upsample_conv(x, conv, target))

    def plain(x, w, b):
        return F.conv2d(F.interpolate(x, size=target, mode="nearest"), w, b, padding=1)

    out, grads = _values_and_grads(fused, x, conv.weight, conv.bias, weight=weight)
    ref_out, ref_grads = _values_and_grads(plain, x, conv.weight, conv.bias, weight=weight)
    assert torch.allclose(out, ref_out, atol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        assert torch.allclose(grad, ref, atol=1e-4, rtol=1e-5)


def test_upsample_conv_falls_back_when_the_size_does_not_double():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 2, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    out = upsample_conv(x, conv, (15, 15))  # e.g. a 30 px model: the seed map is 8, the last size 30 / 2
    assert torch.equal(out, conv(F.interpolate(x, size=(15, 15), mode="nearest")))
    for channels, height, width in [(1, 28, 28), (3, 30, 22), (3, 17, 23)]:
        assert Generator(16, channels, height, width)(torch.randn(4, 16)).shape == (4, channels, height, width)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 2, 2), (1, 2, 1, 4), (2, 2, 3, 1), (1, 1, 1, 1)])
def test_swing_is_reflect_pad_then_crop(shape):
    torch.manual_seed(0)
    weight = torch.randn(shape)
    for offset_h, offset_w in itertools.product(range(3), range(3)):
        x = torch.randn(shape)
        out, (grad,) = _values_and_grads(lambda t: swing(t, offset_h, offset_w), x, weight=weight)
        ref, (ref_grad,) = _values_and_grads(lambda t: swing_reference(t, offset_h, offset_w), x, weight=weight)
        assert torch.equal(out, ref), (offset_h, offset_w)
        assert torch.allclose(grad, ref_grad, atol=1e-6), (offset_h, offset_w)


def _bn_loss_by_autograd(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The definition, differentiated by autograd (a constant channel's std gradient zeroed, as documented)."""
    mean = x.mean(dim=(0, 2, 3))
    flat = x.transpose(0, 1).flatten(1)
    flat.register_hook(lambda g: torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
    std = flat.std(dim=1, unbiased=flat.shape[1] > 1)
    target_std = torch.sqrt(bn.running_var + 1e-6)
    return ((mean - bn.running_mean).pow(2).sum() + (std - target_std).pow(2).sum()) / x.shape[1]


@pytest.mark.parametrize("shape,constant_channel", [((4, 5, 6, 7), None), ((1, 5, 1, 1), None), ((3, 5, 2, 2), 2)])
def test_bn_statistics_loss_gradient_in_closed_form(shape, constant_channel):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(shape) * 2 + 1
    if constant_channel is not None:
        x[:, constant_channel] = 3.0
    out, (grad,) = _values_and_grads(lambda t: 1.7 * bn_statistics_loss(t, bn), x)
    ref, (ref_grad,) = _values_and_grads(lambda t: 1.7 * _bn_loss_by_autograd(t, bn), x)
    assert torch.allclose(out, ref, rtol=1e-5)
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("shape", [(1, 4, 6, 5, 7), (2, 3, 5, 2, 2), (1, 1, 5, 1, 1), (3, 2, 4, 9, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_statistics_are_the_mean_and_biased_variance(shape, channels_last):
    """The BatchNorm kernel's statistics (the CPU path) equal var_mean's in float64, per group, also far from
    zero mean (two-pass: no cancellation) and in channels_last memory."""
    torch.manual_seed(0)
    x = torch.randn(shape) * 0.01 + 300.0
    if channels_last:
        x = torch.stack([g.contiguous(memory_format=torch.channels_last) for g in x.unbind(0)])
    mean, var = channel_statistics(x)
    ref_var, ref_mean = torch.var_mean(x.double(), dim=(1, 3, 4), correction=0)
    assert mean.shape == var.shape == shape[:1] + shape[2:3]
    assert torch.allclose(mean.double(), ref_mean, rtol=1e-6, atol=0)
    assert torch.allclose(var.double(), ref_var, rtol=1e-4, atol=1e-12)


def test_bn_statistics_loss_under_bf16_autocast_returns_a_bf16_gradient():
    bn = nn.BatchNorm2d(3).eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    bn_statistics_loss(x, bn).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_adam_is_fused_on_cpu_and_makes_the_plain_update():
    torch.manual_seed(0)
    start, grads = torch.randn(10, 4), [torch.randn(10, 4) for _ in range(5)]
    fused_param, plain_param = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    fused, plain = adam([fused_param], lr=0.01), torch.optim.Adam([plain_param], lr=0.01)
    assert fused.defaults["fused"] is True
    for grad in grads:
        for param, optimizer in ((fused_param, fused), (plain_param, plain)):
            param.grad = grad.clone()
            optimizer.step()
    assert torch.allclose(fused_param, plain_param, atol=1e-6)
    assert not torch.equal(fused_param, start)
    integer = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    assert adam([integer], lr=0.1).defaults["fused"] is True  # float64 has a fused kernel too


def test_soft_rounded_weight_and_regularizer_match_autograd_through_the_definition():
    from genie_hub.quantization.quantizers import WeightQuantizer

    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3) * 0.1
    weight[0, 0, 0, 0] = weight[0].min()  # a weight on the grid: its soft bit starts exactly at the clamp's bound
    quantizer = WeightQuantizer(weight, 4)
    x, grad_out = torch.randn(4, 8, 6, 6), torch.randn(4, 16, 6, 6)

    def definition():
        soft = torch.clamp(torch.sigmoid(quantizer.rounding) * 1.2 - 0.1, 0, 1)
        codes = torch.clamp(quantizer.floor + soft + quantizer.zero_point, 0, 15)
        return (quantizer.step() * (codes - quantizer.zero_point)).view(quantizer.shape), \
            (1 - (2 * soft - 1).abs().pow(3.0)).sum()

    results = []
    for fast in (False, True):
        quantizer.zero_grad(set_to_none=True)
        w, regularizer = (quantizer(), quantizer.rounding_regularizer(3.0)) if fast else definition()
        loss = (F.conv2d(x, w, padding=1) * grad_out).sum() + 0.1 * regularizer
        loss.backward()
        results.append((w.detach(), regularizer.detach(), quantizer.rounding.grad.clone(),
                        quantizer.step.log_step.grad.clone()))
    (w_ref, r_ref, gv_ref, gs_ref), (w, r, gv, gs) = results
    assert torch.allclose(w, w_ref, atol=1e-7) and torch.allclose(r, r_ref, rtol=1e-6)
    assert torch.allclose(gv, gv_ref, atol=1e-6) and torch.allclose(gs, gs_ref, rtol=1e-5, atol=1e-6)
    assert gv.abs().sum() > 0 and gs.abs().sum() > 0


@pytest.mark.parametrize("beta", [1.0, 1.5, 3.0, 20.0])
def test_regularizer_gradient_is_the_product_form_bit_for_bit(beta):
    """The closed-form gradient -2 beta |c|^(beta-1) sign(c) (c = 2h - 1), written with copysign, equals the
    product form exactly, at the bits' bounds and at h = 0.5 (c = 0) too, where beta = 1 needs the product's 0."""
    from genie_hub.quantization.quantizers import _RoundingRegularizer

    soft = torch.cat([torch.tensor([0.0, 0.5, 1.0, 0.25, 0.75]),
                      torch.rand(1000, generator=torch.Generator().manual_seed(0))])
    leaf = soft.clone().requires_grad_(True)
    value = _RoundingRegularizer.apply(leaf, beta)
    (grad,) = torch.autograd.grad(0.7 * value, leaf)
    centered = soft * 2 - 1
    power = centered.abs().pow(beta - 1)
    assert torch.equal(grad, power.mul(centered.sign()).mul_(-2 * beta * torch.tensor(0.7)))
    assert torch.equal(value, soft.numel() - torch.dot(power, centered.abs()))
    assert grad[1] == 0  # h = 0.5


def test_regularizer_reuses_the_soft_bits_only_while_the_rounding_is_unchanged():
    from genie_hub.quantization.quantizers import WeightQuantizer

    quantizer = WeightQuantizer(torch.randn(4, 3, 3, 3), 4)
    quantizer()
    cached = quantizer.soft_bits()
    assert cached is quantizer._soft[1]  # the same tensor as the forward: one computation per step
    with torch.no_grad():
        quantizer.rounding.add_(1.0)  # an optimizer step
    fresh = quantizer.soft_bits()
    assert fresh is not cached
    assert torch.allclose(fresh, torch.clamp(torch.sigmoid(quantizer.rounding) * 1.2 - 0.1, 0, 1))


def test_reconstruction_schedule_is_cosine_annealing_for_steps_and_constant_for_rounding(monkeypatch):
    from genie_hub.quantization import reconstruction

    seen = []
    real_optimize = reconstruction.optimize

    def spy(steps, compute_loss, optimizers, schedulers, **kwargs):
        (optimizer,), (scheduler,) = optimizers, schedulers
        start = [group["lr"] for group in optimizer.param_groups]
        real_optimize(steps, compute_loss, optimizers, schedulers, **kwargs)
        seen.append((start, [group["lr"] for group in optimizer.param_groups], steps))

    monkeypatch.setattr(reconstruction, "optimize", spy)
    from genie_hub import GenieConfig, quantize
    from tiny_models import tiny_model, IMAGE_SIZE

    config = GenieConfig.from_profile("quick", reconstruction_steps=7, weight_bits=4, act_bits=4)
    quantize(tiny_model("resnet-basic"), torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE), config, progress=False)
    assert seen
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=7, eta_min=0.0)
    for _ in range(7):
        reference.step()
        cosine.step()
    for start, end, steps in seen:
        assert start[-1] == config.lr_rounding and end[-1] == config.lr_rounding  # rounding: constant
        for first, last in zip(start[:-1], end[:-1]):  # steps: annealed to 0 as CosineAnnealingLR does
            assert last == pytest.approx(first * reference.param_groups[0]["lr"], abs=1e-12)


def test_adam_falls_back_to_the_plain_kernel_where_no_fused_one_exists(monkeypatch):
    from genie_hub import optimization

    monkeypatch.setattr(optimization, "fused_adam_supported", lambda device: False)
    optimizer = optimization.adam([nn.Parameter(torch.zeros(3))], lr=0.1)
    assert not optimizer.defaults.get("fused")


@pytest.mark.parametrize("signed,keep_prob", [(False, 0.0), (False, 0.5), (True, 0.5), (True, 0.0)])
def test_activation_quantizer_with_qdrop_matches_autograd_through_the_definition(signed, keep_prob):
    from genie_hub.quantization.quantizers import ActQuantizer, qdrop_mix

    torch.manual_seed(0)
    quantizer = ActQuantizer(4, signed=signed)
    x = torch.randn(4, 8, 5, 5) * 2
    quantizer.calibrate(x)
    x[0, 0, 0, 0] = quantizer.positive_step().item() * quantizer.bounds[1]  # exactly on the grid's upper bound
    weight = torch.randn_like(x)
    quantizer.qdrop_prob = keep_prob
    results = []
    for fast in (False, True):
        quantizer.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_(True)
        torch.manual_seed(5)  # the same QDrop mask for both
        out = quantizer(leaf) if fast else qdrop_mix(quantizer.quantize(leaf), leaf, keep_prob)
        (out * weight).sum().backward()
        results.append((out.detach(), leaf.grad, quantizer.step.log_step.grad.clone()))
    (out_ref, grad_ref, step_ref), (out, grad, step) = results
    assert torch.equal(out, out_ref)
    assert torch.allclose(grad, grad_ref, atol=1e-6)
    assert torch.allclose(step, step_ref, rtol=1e-5) and step.abs() > 0


def test_activation_quantizer_without_grad_gives_the_same_output():
    from genie_hub.quantization.quantizers import ActQuantizer

    quantizer = ActQuantizer(4, signed=True)
    x = torch.randn(2, 3, 4, 4)
    quantizer.calibrate(x)
    quantizer.qdrop_prob = 0.5
    torch.manual_seed(1)
    tracked = quantizer(x.clone().requires_grad_(True)).detach()
    torch.manual_seed(1)
    with torch.no_grad():  # evaluation path: no masks or step terms kept for a backward
        untracked = quantizer(x)
    assert torch.equal(tracked, untracked)
    assert not torch.equal(untracked, x)


def test_grouped_bn_statistics_loss_is_each_batch_on_its_own_statistics():
    """Several synthesis batches in one forward: one loss per batch, and gradients as if each were alone."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.cat([torch.randn(3, 5, 4, 4) * 2 + 1, torch.randn(3, 5, 4, 4) * 0.5 - 1])  # two different batches
    weights = torch.tensor([1.7, -0.3])
    out, (grad,) = _values_and_grads(lambda t: (weights * bn_statistics_loss(t, bn, groups=2)).sum(), x)
    parts = [_values_and_grads(lambda t: w * _bn_loss_by_autograd(t, bn), part) for w, part in zip(weights, x.chunk(2))]
    assert torch.allclose(out, sum(value for value, _ in parts), rtol=1e-5)
    assert torch.allclose(grad, torch.cat([g for _, (g,) in parts]), atol=1e-6, rtol=1e-4)
    assert bn_statistics_loss(x, bn, groups=2).shape == (2,) and bn_statistics_loss(x, bn).shape == ()


def test_plateau_on_device_takes_torch_schedulers_decisions():
    """The synthesis latents' schedule without a host read per step: the same learning rate as torch's
    ReduceLROnPlateau after every step of a loss with improvements, plateaus, negative values and a NaN."""
    from genie_hub.optimization import PlateauOnDevice, tensor_lr

    generator = torch.Generator().manual_seed(0)
    losses = torch.cat([torch.linspace(3, 1, 20), torch.full((9,), 1.0), torch.linspace(1, -2, 10),
                        -2 + 1e-5 * torch.rand(25, generator=generator), torch.tensor([float("nan")]),
                        torch.full((30,), -2.5)]).float()
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch_plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, factor=0.1, patience=4, min_lr=1e-4)
    lr = tensor_lr(0.1, "cpu")
    plateau = PlateauOnDevice(lr, factor=0.1, patience=4, min_lr=1e-4)
    seen = []
    for loss in losses:
        torch_plateau.step(float(loss))
        plateau.step(loss)
        assert lr.item() == reference.param_groups[0]["lr"]
        seen.append(lr.item())
    assert len(set(seen)) >= 3  # the sequence made it reduce twice or more


def test_fused_adam_with_a_float64_tensor_lr_is_the_float_lr_update():
    """tensor_lr on CPU: the device-side schedule leaves the synthesis updates (and the pinned images) as they were."""
    from genie_hub.optimization import adam, tensor_lr

    torch.manual_seed(0)
    plain = torch.randn(257, requires_grad=True)
    tensor = plain.detach().clone().requires_grad_(True)
    by_float, by_tensor = adam([plain], lr=0.1), adam([tensor], lr=tensor_lr(0.1, "cpu"))
    for _ in range(5):
        grad = torch.randn(257)
        plain.grad, tensor.grad = grad.clone(), grad.clone()
        by_float.step()
        by_tensor.step()
    assert torch.equal(plain, tensor)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_qdrop_mask_is_bernoulli_in_the_inputs_layout(layout):
    """Every way of drawing the mask (1, 2, 4 or 8 bits per element from a table, 16-bit integers otherwise):
    the asked probability, independent elements, the input's layout and dtype, and 1 exactly at prob 1."""
    from genie_hub.quantization.quantizers import _mask_bits, qdrop_keep

    torch.manual_seed(0)
    like = torch.empty(64, 8, 15, 15).contiguous(memory_format=layout)  # 115,200 elements
    probs = {0.5: 1, 0.75: 2, 0.0625: 4, 0.90625: 8, 3 / 256: 8, 0.1: 16, 0.9: 16}
    assert {prob: _mask_bits(prob) for prob in probs} == probs
    for prob in probs:
        keep = qdrop_keep(like, prob)
        assert keep.dtype == like.dtype and keep.stride() == like.stride()
        assert set(keep.unique().tolist()) == {0.0, 1.0}
        assert abs(float(keep.mean()) - prob) < 0.006  # 4 binomial std at n = 115,200
        flat = keep.flatten()
        both = float((flat[:-1] * flat[1:]).mean())  # neighbours (also the four lanes of one draw) independent
        assert abs(both - prob * prob) < 0.006
    assert torch.equal(qdrop_keep(like, 1.0), torch.ones_like(like))
    torch.manual_seed(3)
    first = qdrop_keep(like, 0.5)
    torch.manual_seed(3)
    assert torch.equal(qdrop_keep(like, 0.5), first)  # drawn from torch's global generator: seeded runs repeat


def test_branch_free_select_is_torch_where_exactly():
    from genie_hub.quantization.quantizers import keep_where

    torch.manual_seed(0)
    fp, quantized = torch.randn(10000) * 1e3, torch.randn(10000) * 1e-3
    keep = (torch.rand(10000) < 0.5).float()
    assert torch.equal(keep_where(keep, fp, quantized), torch.where(keep.bool(), fp, quantized))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inside_mask_is_the_bounds_test_as_a_float_mask(dtype):
    from genie_hub.quantization.quantizers import inside_mask

    torch.manual_seed(0)
    x = torch.cat([torch.randn(1000) * 2, torch.tensor([0.0, 1.0, -0.0, float("nan"), float("inf"), -float("inf")])])
    x = x.to(dtype)
    mask = inside_mask(x.clamp(0, 1), x)
    assert mask.dtype == dtype
    assert torch.equal(mask, ((x >= 0) & (x <= 1)).to(dtype))
