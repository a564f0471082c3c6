"""Which number format the forward passes use: fp32, or bfloat16 autocast where the hardware computes it natively.

bfloat16 keeps fp32's exponent range with an 8-bit mantissa: a convolution under `torch.autocast(..., bfloat16)`
reads and writes half the bytes and, on hardware with bf16 instructions (CUDA GPUs from Ampere on; Intel CPUs
with AMX, Intel and AMD CPUs with AVX512-BF16, ARM CPUs with BF16), runs them natively. Without those
instructions a CPU emulates bf16 and is slower than fp32, so headstart detects them instead of guessing
(`torch.cpu.get_capabilities`, cpuinfo underneath).

Only the forward pass is autocast: the loss, the gradients' accumulation into the fp32 weights and the optimizer
stay fp32 (autocast leaves the parameters in fp32; backward follows the forward's types).

`--precision` takes fp32, bf16 or auto, per use:
    inference   the frozen prefix's cached features, validation, test figures, predict, evaluate, probe
    training    the forward pass of a training step (its backward follows it)
`auto` is bf16 for a use where the hardware has it *and* accuracy parity with fp32 was measured for that use
(`AUTO_BF16`, from bench/precision.py; docs/performance.md has the table), fp32 otherwise.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from headstart.errors import HeadstartError

PRECISIONS = ("auto", "fp32", "bf16")
USES = ("inference", "training")
# What `auto` turns on where the hardware has bf16, per use: only where parity with fp32 was measured (bench/precision.py
# parity: test accuracy within 0.5 points in every cell and the same winner, hymenoptera and cifar 500/class). On the
# CPU it was measured on 2026-11-30 (docs/performance.md): inference held (0.0 and +0.07 points), training missed by
# one hymenoptera test image (-0.65 points). Auto stays fp32 on the CPU until the flip of inference can come with
# regenerated committed comparisons (compare refuses to mix runs whose auto resolved differently). CUDA GPUs autocast
# both, as headstart always did there.
AUTO_BF16 = {"cpu": {"inference": False, "training": False}, "cuda": {"inference": True, "training": True}}
# cpuinfo's names (torch.cpu.get_capabilities) of the instructions that compute bf16 natively, best first
CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16", "sve_bf16", "bf16")


def cpu_bf16_feature() -> str | None:
    """The CPU's native bf16 instruction set (e.g. 'amx_bf16', 'avx512_bf16'), or None where bf16 would be
    emulated (slower than fp32)."""
    capabilities = torch.cpu.get_capabilities()
    return next((name for name in CPU_BF16_FEATURES if capabilities.get(name) is True), None)


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively: a CPU with one of CPU_BF16_FEATURES, a CUDA GPU that supports it."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_bf16_feature() is not None
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def check_precision(requested: str) -> None:
    if requested not in PRECISIONS:
        raise HeadstartError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")


def resolve_precision(requested: str, device: torch.device | str, use: str = "inference") -> str:
    """'fp32' or 'bf16': what `requested` (fp32 | bf16 | auto) means for `use` on `device`. bf16 on hardware
    without it is refused (it would be slower and is not what was asked for); auto falls back to fp32 there."""
    check_precision(requested)
    device = torch.device(device)
    if requested == "fp32":
        return "fp32"
    native = has_native_bf16(device)
    if requested == "bf16":
        if not native:
            raise HeadstartError(f"--precision bf16: this {device.type.upper()} has no native bfloat16 "
                                 "(AMX or AVX512-BF16 on a CPU, an Ampere or later GPU); use --precision fp32 or auto")
        return "bf16"
    return "bf16" if native and AUTO_BF16.get(device.type, {}).get(use, False) else "fp32"


def precision_plan(requested: str, device: torch.device | str) -> dict[str, str]:
    """The resolved precision of every use, as config.json records it: {'inference': ..., 'training': ...}."""
    return {use: resolve_precision(requested, device, use) for use in USES}


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The forward pass's context: bf16 autocast on `device` when `precision` is 'bf16' (resolved), else nothing."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
