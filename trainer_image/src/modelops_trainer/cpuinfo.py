"""The CPU's model and flags, from /proc/cpuinfo: what decides whether bf16 is fast (precision.py)
and what a benchmark's machine record says (bench/harness.py). No torch here, so that a benchmark
that does not train can read them without importing it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: /proc/cpuinfo flags that decide how fast bf16 is, in the order they are reported.
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU model and its flags (from /proc/cpuinfo)."""

    model: str
    flags: frozenset[str]

    @classmethod
    def parse(cls, cpuinfo: str) -> CpuFeatures:
        """From the text of /proc/cpuinfo (its first processor)."""
        model, flags = "unknown", frozenset[str]()
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
        return cls(model, flags)

    @classmethod
    def read(cls, path: str = "/proc/cpuinfo") -> CpuFeatures:
        """This machine's; an empty set of flags where /proc/cpuinfo cannot be read."""
        try:
            return cls.parse(Path(path).read_text())
        except OSError:
            return cls("unknown", frozenset())

    @property
    def native_bf16(self) -> bool:
        """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    def bf16_flags(self) -> dict[str, bool]:
        """The flags of `BF16_FLAGS`: present or not."""
        return {f: f in self.flags for f in BF16_FLAGS}

    def vector_flags(self) -> list[str]:
        """The vector and matrix extensions present (avx2, avx512*, amx*), sorted: what a
        benchmark's figures depend on beyond the model name."""
        return sorted(f for f in self.flags if f == "avx2" or f.startswith(("avx512", "amx")))
