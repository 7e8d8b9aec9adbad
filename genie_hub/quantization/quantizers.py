"""The two Genie-M quantizers: weights (learned step + soft rounding) and activations (LSQ + QDrop).

Both start from the step that minimizes the Lp (p = 2.4) error over clipping ratios 1.00, 0.99, ..., 0.01,
which is less sensitive to outliers than min/max and closer to what matters after rounding.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .format import MAX_ZERO_POINT  # only a row (almost) constant far from 0 would need more: it gets a range through 0

LP_NORM = 2.4
CLIP_RATIOS = torch.linspace(1.0, 0.01, 100).tolist()
RANGE_INITS = ("lp", "minmax")
"""How a quantizer's range starts: the clipping ratio with the least Lp error, or the full min/max range."""
MIN_STEP = 1e-8  # the initial step of an all-zero channel (e.g. identity squeeze-excite convs), never 0


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (straight-through estimator)."""
    return (x.round() - x).detach() + x


def init_weight_range(weight: torch.Tensor, bits: int, method: str = "lp") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric step and integer zero point for `weight` [rows, n]; returns ([rows,1], [rows,1]).

    The range is each row's own [min, max], as in the reference: a row whose weights all have one sign (common
    in depthwise convs) would get a 15-20 % coarser grid if the range were widened to include 0. The zero
    point then lies outside [0, 2^b - 1] (it is stored as int32). Clip ratios scale min and max together.
    """
    levels = 2**bits - 1
    w_max = weight.max(dim=1, keepdim=True).values
    w_min = weight.min(dim=1, keepdim=True).values
    through_zero = ((w_max - w_min) / levels).clamp(min=MIN_STEP)
    needs_zero = (w_min / through_zero).abs() > MAX_ZERO_POINT  # (near-)constant rows far from 0
    w_max = torch.where(needs_zero, w_max.clamp(min=0), w_max)
    w_min = torch.where(needs_zero, w_min.clamp(max=0), w_min)
    ratios = CLIP_RATIOS if method == "lp" else [1.0]
    best_err = torch.full_like(w_max, float("inf"))
    best_step, best_zero = torch.ones_like(w_max), torch.zeros_like(w_max)
    for ratio in ratios:
        step = ((w_max - w_min) * ratio / levels).clamp(min=MIN_STEP)
        zero = (-w_min * ratio / step).round().clamp(-MAX_ZERO_POINT, MAX_ZERO_POINT)
        quantized = (torch.clamp((weight / step).round() + zero, 0, levels) - zero) * step
        err = (weight - quantized).abs().pow(LP_NORM).mean(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_step = torch.where(better, step, best_step)
        best_zero = torch.where(better, zero, best_zero)
    return best_step, best_zero


def _mask_bits(prob: float) -> int:
    """Bits of randomness per mask element: the fewest (1, 2, 4 or 8) in which `prob` is exact, else 16."""
    return next((bits for bits in (1, 2, 4, 8) if (prob * 2**bits).is_integer()), 16)


@functools.lru_cache(maxsize=32)
def _mask_table(prob: float, bits: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[256, 8 // bits]: the keep mask (0/1) of the 8 // bits elements one random byte decides, its fields read
    from the low bits up: a field v of `bits` bits keeps its element when v < prob * 2^bits."""
    fields = (torch.arange(256)[:, None] >> (torch.arange(8 // bits) * bits)) & (2**bits - 1)
    return (fields < round(prob * 2**bits)).to(dtype=dtype, device=device)


def qdrop_keep(like: torch.Tensor, prob: float) -> torch.Tensor:
    """A Bernoulli(`prob`) mask shaped and typed like `like`: 1 where an element keeps its FP value, else 0.

    Made from as few random bits as `prob` needs: where it is a multiple of 1/256 (QDrop's 0.5 needs one bit),
    each random byte of torch's global generator decides 8, 4, 2 or 1 elements through a 256-row table;
    otherwise each element takes a 16-bit uniform integer (`prob` rounded to a multiple of 1/65536). One float
    draw per element (`torch.rand_like`) made the masks 40 % of a 224 px reconstruction step (EfficientNet-Lite0,
    batch 16, one thread); on 19M elements the 16-bit draws take 51 ms, the one-bit table 12 ms. The mask is a
    0/1 float tensor, because on CPU torch.where and masked_fill_ over a random bool mask run ~7x slower than
    arithmetic (a mispredicted branch per element).
    """
    if prob >= 1:
        return torch.ones_like(like)
    count, bits = like.numel(), _mask_bits(prob)
    layout = torch.empty_like(like, device="meta").stride()  # like's layout (channels_last too), else contiguous
    if bits <= 8:
        per_byte = 8 // bits
        num_bytes = -(-count // per_byte)
        words = torch.empty(-(-num_bytes // 8), dtype=torch.int64, device=like.device).random_(-(2**63), 2**63 - 1)
        table = _mask_table(prob, bits, like.dtype, like.device)
        flat = table.index_select(0, words.view(torch.uint8)[:num_bytes].int()).view(-1)
        return flat[:count].as_strided(like.shape, layout)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=like.device).random_(-(2**63), 2**63 - 1)
    threshold = round(prob * 65536) - 32768  # P(uniform int16 < threshold) = prob
    keep = torch.empty_strided(like.shape, layout, dtype=like.dtype, device=like.device)
    uniform = words.view(torch.int16)[:count].as_strided(like.shape, layout)  # the same layout
    return torch.lt(uniform, threshold, out=keep)


def inside_mask(clamped: torch.Tensor, unclamped: torch.Tensor) -> torch.Tensor:
    """1 where clamping left the element unchanged (it lies within the bounds), else 0, as a float tensor.

    Float, not bool: on CPU every use of a bool mask with a float tensor first copies it to float, and a
    comparison that writes bools ran 5-7x slower than the same comparison into a float tensor (50k elements:
    43-63 us plus 30-63 us for the copy, against 8 us)."""
    return torch.eq(clamped, unclamped, out=torch.empty_like(unclamped))


def keep_where(keep: torch.Tensor, full_precision: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """torch.where(keep, full_precision, quantized) for a 0/1 mask `keep`, without branches: lerp with weight 0
    or 1 returns either end exactly (finite values)."""
    return torch.lerp(quantized, full_precision, keep)


def qdrop_mix(quantized: torch.Tensor, full_precision: torch.Tensor, prob: float) -> torch.Tensor:
    """QDrop: each element takes its FP value with probability `prob`, its quantized value otherwise. Used at a
    unit's input and inside activation quantizers, with the one meaning of `GenieConfig.qdrop_prob`."""
    if prob <= 0:
        return quantized
    return keep_where(qdrop_keep(quantized, prob), full_precision, quantized)


def act_range_bounds(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def init_act_step(x: torch.Tensor, bits: int, signed: bool, method: str = "lp", max_elements: int = 1 << 20) -> float:
    """Per-tensor symmetric step: Lp-2.4 clip search on max|x| (or plain max|x| for `minmax`)."""
    flat = x.detach().float().flatten()
    if flat.numel() > max_elements:  # the error is estimated on a fixed subsample; the range uses all of x
        stride = -(-flat.numel() // max_elements)  # integer stride: exact for any size (no float indices)
        flat_sample = flat[::stride]
    else:
        flat_sample = flat
    q_min, q_max = act_range_bounds(bits, signed)
    max_abs = float(flat.abs().max())
    if not max_abs > 1e-12:  # all (near-)zero, e.g. a dead channel: any positive step quantizes it to 0
        return 1.0
    ratios = CLIP_RATIOS if method == "lp" else [1.0]
    best_step, best_err = max_abs / q_max, float("inf")
    for ratio in ratios:
        step = max_abs * ratio / q_max
        quantized = torch.clamp((flat_sample / step).round(), q_min, q_max) * step
        err = float((flat_sample - quantized).abs().pow(LP_NORM).mean())
        if err < best_err:
            best_step, best_err = step, err
    return best_step


class LogStep(nn.Module):
    """A learned positive step, stored as its logarithm.

    The reference learns the step itself with an absolute Adam lr (1e-4 for weights). Adam moves a parameter by
    about lr per update whatever its scale, so a 1.9e-3 step (common in 8-bit depthwise convs) moved by 5-100 %
    per update and could collapse onto a floor with no gradient, never to recover. In log space one update
    changes any step by the same relative amount (about lr), the step stays positive without a clamp, and its
    gradient never vanishes.
    """

    def __init__(self, step: torch.Tensor):
        super().__init__()
        self.log_step = nn.Parameter(step.detach().float().clamp(min=MIN_STEP).log())

    def forward(self) -> torch.Tensor:
        return self.log_step.exp()

    @torch.no_grad()
    def set(self, step: torch.Tensor | float) -> None:
        self.log_step.copy_(torch.as_tensor(step, dtype=torch.float32).clamp(min=MIN_STEP).log())


GAMMA, ZETA = -0.1, 1.1  # AdaRound's rectified sigmoid stretches sigmoid(V) to (GAMMA, ZETA), then clamps to [0, 1]


class _SoftRoundedWeight(torch.autograd.Function):
    """(W, h) with h = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1) and W = s * (clamp(B + zp + h, 0, L) - zp).

    The gradient in closed form: the same as autograd through those eight elementwise ops (clamp passes the
    gradient at its bounds, as torch.clamp does), in four passes over the weight instead of about twenty. A
    reconstruction step is mostly this elementwise work on the weights of a unit.
    """

    @staticmethod
    def forward(ctx, rounding, step, floor_plus_zero, zero_point, levels: int):
        sig = torch.sigmoid(rounding)
        unclamped = sig * (ZETA - GAMMA) + GAMMA
        soft = unclamped.clamp(0, 1)
        soft_live = inside_mask(soft, unclamped)
        codes = floor_plus_zero + soft
        centered = codes.clamp(0, levels)
        code_live = inside_mask(centered, codes)
        centered.sub_(zero_point)
        ctx.save_for_backward(sig, soft_live, code_live, centered, step)
        return centered * step, soft

    @staticmethod
    def backward(ctx, grad_weight, grad_soft):
        sig, soft_live, code_live, centered, step = ctx.saved_tensors
        grad_step = (grad_weight * centered).sum(dim=1, keepdim=True)
        grad = (grad_weight * step).mul_(code_live)
        if grad_soft is not None:
            grad.add_(grad_soft)
        grad.mul_(soft_live).mul_(sig * (1 - sig)).mul_(ZETA - GAMMA)
        return grad, grad_step, None, None, None


class _RoundingRegularizer(torch.autograd.Function):
    """sum(1 - |2h - 1|^beta) with its gradient -2 beta |2h - 1|^(beta - 1) sign(2h - 1) in closed form.

    |2h - 1| is computed once, and sign(c) * p as copysign(p, c): the same values in one pass, since p >= 0 and,
    for beta > 1, p = 0 where c = 0 (at beta = 1, p = 1 there and the product form's 0 is kept)."""

    @staticmethod
    def forward(ctx, soft, beta: float):
        centered = soft * 2 - 1
        magnitude = centered.abs()
        power = magnitude.pow(beta - 1)
        ctx.save_for_backward(power, centered)
        ctx.beta = beta
        return soft.numel() - torch.dot(power.flatten(), magnitude.flatten())

    @staticmethod
    def backward(ctx, grad):
        power, centered = ctx.saved_tensors
        signed = torch.copysign(power, centered) if ctx.beta > 1 else power.mul(centered.sign())
        return signed.mul_(-2 * ctx.beta * grad), None


class WeightQuantizer(nn.Module):
    """W_q = s * (clamp(B + h(V) + zp, 0, 2^b - 1) - zp): frozen floor B, learned step s, soft bits h(V).

    h(V) = clamp(sigmoid(V) * 1.2 - 0.1, 0, 1) (AdaRound's rectified sigmoid), initialized to the fractional
    part W/s0 - B so training starts from the unrounded weight; `hard=True` uses h = 1[V >= 0]. The step s is
    learned in log space (`LogStep`). The soft forward and the rounding regularizer run as closed-form autograd
    functions, sharing the soft bits of one step (`_SoftRoundedWeight`).
    """

    GAMMA, ZETA = GAMMA, ZETA

    def __init__(self, weight: torch.Tensor, bits: int, method: str = "lp"):
        super().__init__()
        self.bits = bits
        self.shape = tuple(weight.shape)
        rows = weight.detach().float().flatten(1)
        step, zero = init_weight_range(rows, bits, method)
        floor = (rows / step).floor()
        rest = (rows / step - floor).clamp(0, 1)
        # Inverse of the rectified sigmoid; rest in [0, 1) keeps it finite.
        p = ((rest - self.GAMMA) / (self.ZETA - self.GAMMA)).clamp(1e-6, 1 - 1e-6)
        self.register_buffer("floor", floor)
        self.register_buffer("zero_point", zero)
        # B + zp, read by every forward: made once, not once per step (an integer sum, so exact)
        self.register_buffer("floor_plus_zero", floor + zero, persistent=False)
        self.step = LogStep(step)
        self.rounding = nn.Parameter(torch.log(p / (1 - p)))
        self.hard = False
        self._soft: tuple | None = None  # (rounding version, soft bits) of the last soft forward

    def soft_bits(self) -> torch.Tensor:
        """h(V), from this step's soft forward when V has not changed since (one computation per step)."""
        if not torch.compiler.is_compiling() and self._soft is not None and self._soft[0] == self.rounding._version:
            return self._soft[1]
        return torch.clamp(torch.sigmoid(self.rounding) * (self.ZETA - self.GAMMA) + self.GAMMA, 0, 1)

    def soft_weight(self) -> torch.Tensor:
        """The soft forward by its definition, for autograd to differentiate: what torch.compile traces (it
        cannot trace the version check of the shared soft bits). `forward` runs `_SoftRoundedWeight`, the same
        function with its gradient in closed form."""
        codes = torch.clamp(self.floor_plus_zero + self.soft_bits(), 0, 2**self.bits - 1)
        return (self.positive_step() * (codes - self.zero_point)).view(self.shape)

    def codes(self) -> torch.Tensor:
        """Integer codes with hard rounding, in [0, 2^b - 1]."""
        bits = (self.rounding >= 0).to(self.floor.dtype)
        return torch.clamp(self.floor_plus_zero + bits, 0, 2**self.bits - 1)

    def positive_step(self) -> torch.Tensor:
        return self.step()

    def forward(self) -> torch.Tensor:
        if self.hard:
            return (self.positive_step() * (self.codes() - self.zero_point)).view(self.shape)
        if torch.compiler.is_compiling():
            return self.soft_weight()
        weight, soft = _SoftRoundedWeight.apply(self.rounding, self.positive_step(), self.floor_plus_zero,
                                                self.zero_point, 2**self.bits - 1)
        self._soft = (self.rounding._version, soft) if torch.is_grad_enabled() else None
        return weight.view(self.shape)

    def rounding_regularizer(self, beta: float | torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # the definition (beta may be a tensor there, so it is not a constant)
            return (1 - (self.soft_bits() * 2 - 1).abs().pow(beta)).sum()
        return _RoundingRegularizer.apply(self.soft_bits(), beta)


class _QuantizeWithQDrop(torch.autograd.Function):
    """qdrop_mix(round_ste(clamp(x / s, q_min, q_max)) * s, x, keep_prob), with its gradient in closed form.

    d/dx is 1 where the element kept its FP value or lies inside the grid (straight-through rounding; clamp
    passes the gradient at its bounds, as torch.clamp does), 0 elsewhere; d/ds is round(clamp(x/s)) - x/s inside
    the grid and the bound outside, for the quantized elements. Two passes backward instead of about fifteen: at
    224 px a reconstruction step is mostly this work on large activations.
    """

    @staticmethod
    def forward(ctx, x, step, q_min: int, q_max: int, keep_prob: float, grad_enabled: bool):
        # needs_input_grad says True under torch.no_grad too: the caller's grad mode decides what to keep
        scaled = x / step
        rounded = scaled.clamp(q_min, q_max)
        passes = inside_mask(rounded, scaled) if grad_enabled else None  # inside the grid
        rounded.round_()
        out = rounded * step
        d_step = torch.addcmul(rounded, scaled, passes, value=-1) if grad_enabled and ctx.needs_input_grad[1] \
            else None
        if keep_prob > 0:
            keep = qdrop_keep(x, keep_prob)
            out = keep_where(keep, x, out)
            if passes is not None:
                passes = torch.maximum(passes, keep)
            if d_step is not None:
                d_step = keep_where(keep, d_step.new_zeros(()), d_step)  # 0 where kept, unchanged elsewhere
        ctx.save_for_backward(passes, d_step)
        ctx.step_shape, ctx.step_dtype = step.shape, step.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        passes, d_step = ctx.saved_tensors
        grad_x = grad * passes if ctx.needs_input_grad[0] else None
        grad_step = None
        if d_step is not None:
            grad_step = torch.dot(grad.flatten().float(), d_step.flatten().float())
            grad_step = grad_step.to(ctx.step_dtype).reshape(ctx.step_shape)
        return grad_x, grad_step, None, None, None, None


class ActQuantizer(nn.Module):
    """Per-tensor symmetric activation quantizer with a learned step (LSQ, in log space: `LogStep`) and QDrop.

    Signed iff its calibration input had negatives (ReLU outputs use the whole unsigned grid). One instance
    may be shared by several ops that read the same tensor (a conv and its residual shortcut): it then
    quantizes that tensor once per forward and hands every reader the same result, QDrop mask included; given
    its own output back, it returns it unchanged.
    """

    def __init__(self, bits: int, signed: bool | None = None, method: str = "lp"):
        super().__init__()
        self.bits = bits
        self.signed = signed
        self.method = method
        self.step = LogStep(torch.ones(()))
        self.initialized = False
        self.qdrop_prob = 0.0  # chance that an element keeps its FP value; set > 0 during reconstruction only
        self.shared = False  # set when several ops read the same tensor through this quantizer
        self._cache: tuple | None = None
        self._traced: tuple | None = None  # the cache under torch.compile: see `traced_forward`

    def calibrate(self, x: torch.Tensor) -> None:
        if self.signed is None:
            self.signed = bool((x < 0).any())
        self.step.set(init_act_step(x, self.bits, self.signed, self.method))
        self.initialized = True

    @property
    def bounds(self) -> tuple[int, int]:
        return act_range_bounds(self.bits, bool(self.signed))

    def positive_step(self) -> torch.Tensor:
        return self.step()

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The definition (no QDrop), differentiated by autograd; `forward` runs `_QuantizeWithQDrop`."""
        q_min, q_max = self.bounds
        step = self.positive_step()
        return round_ste(torch.clamp(x / step, q_min, q_max)) * step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.calibrate(x)
        if torch.compiler.is_compiling():
            return self.traced_forward(x)
        state = (self.step.log_step._version, self.qdrop_prob, torch.is_grad_enabled())
        if self.shared and self._cache is not None:
            source, source_version, out, out_version, cached_state = self._cache
            if cached_state == state and ((x is source and x._version == source_version)
                                          or (x is out and x._version == out_version)):
                return out  # the same tensor again, or this quantizer's own output (a block input: block_input.py)
        q_min, q_max = self.bounds
        out = _QuantizeWithQDrop.apply(x, self.positive_step(), q_min, q_max, self.qdrop_prob,
                                       torch.is_grad_enabled())
        if self.shared:
            self._cache = (x, x._version, out, out._version, state)
        return out

    def traced_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` as torch.compile traces it: the definition and QDrop, differentiated by autograd (dynamo can
        trace neither `_QuantizeWithQDrop`'s saved state nor tensor versions). A shared quantizer still hands
        every reader one result: within a traced call the same tensor is the same object, so identity suffices,
        and the caller clears the cache around each call (`clear_cache`)."""
        if self.shared and self._traced is not None and (x is self._traced[0] or x is self._traced[1]):
            return self._traced[1]
        out = qdrop_mix(self.quantize(x), x, self.qdrop_prob)
        if self.shared:
            self._traced = (x, out)
        return out

    def clear_cache(self) -> None:
        self._cache = None
        self._traced = None

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"
