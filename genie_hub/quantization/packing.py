"""Dense bit-packing of integer weight codes into int32 words (compressed-tensors style).

A conv weight is flattened to [out, in*kh*kw] and each row is packed along its last dim, so b-bit codes
take b/8 bytes per weight (2/3/4-bit: 1/4, 3/8, 1/2 byte); codes may straddle two int32 words.
"""

from __future__ import annotations

import torch

WORD_BITS = 32


def packed_width(numel_per_row: int, bits: int) -> int:
    return -(-numel_per_row * bits // WORD_BITS)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes [rows, n] (values < 2**bits) into int32 [rows, ceil(n*bits/32)]."""
    if codes.ndim != 2:
        raise ValueError(f"pack_codes expects a 2-D [rows, n] tensor, got shape {tuple(codes.shape)}")
    rows, n = codes.shape
    values = codes.to(torch.int64)
    if values.numel() and (values.min() < 0 or values.max() >= 2**bits):
        raise ValueError(f"codes out of range for {bits}-bit packing")
    positions = torch.arange(n, dtype=torch.int64, device=codes.device) * bits
    word, offset = positions // WORD_BITS, positions % WORD_BITS
    width = packed_width(n, bits)
    words = torch.zeros(rows, width + 1, dtype=torch.int64, device=codes.device)
    words.scatter_add_(1, word.expand(rows, n), (values << offset) & 0xFFFFFFFF)
    spill = values >> (WORD_BITS - offset)  # bits that continue in the next word (0 when none)
    words.scatter_add_(1, (word + 1).expand(rows, n), spill)
    words = words[:, :width]
    words = torch.where(words >= 2**31, words - 2**32, words)  # reinterpret uint32 as int32
    return words.to(torch.int32)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: int32 [rows, w] -> int64 codes [rows, n]."""
    if packed.ndim != 2 or packed.shape[1] != packed_width(n, bits):
        raise ValueError(f"packed tensor of shape {tuple(packed.shape)} cannot hold {n} {bits}-bit codes per row")
    words = packed.to(torch.int64) & 0xFFFFFFFF
    words = torch.cat([words, torch.zeros_like(words[:, :1])], dim=1)
    positions = torch.arange(n, dtype=torch.int64, device=packed.device) * bits
    word, offset = positions // WORD_BITS, positions % WORD_BITS
    low = words[:, word] >> offset
    high = words[:, word + 1] << (WORD_BITS - offset)
    return (low | high) & (2**bits - 1)
