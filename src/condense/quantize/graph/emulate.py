"""Run an ONNX file in ONNX Runtime as another x86 CPU would, under QEMU's user-mode emulator.

ONNX Runtime picks its int8 kernels from the CPU's feature flags (`condense.core.cpu`). QEMU's
`qemu-x86_64 -cpu Haswell` runs this same Python and onnxruntime with the CPUID of an AVX2 CPU
without VNNI, so ORT takes its AVX2 kernels (`vpmaddubsw`, saturating int16 pair sums) and the
outputs are bit-for-bit what such a machine computes; only the timing is meaningless. This is how
condense checks, on any x86-64 machine, that an int8 file built for `avx2` is exact there
(tests/test_cpu_target.py, benchmarks/quant_digits.py, benchmarks/quant_minilm.py).

Needs the `qemu-x86_64` binary (Debian / Ubuntu package `qemu-user`); QEMU 7.2 or newer emulates AVX2.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from condense.core.errors import ConfigError, RunError

#: QEMU CPU models for the int8 targets that can be emulated (QEMU's TCG has no AVX-512).
QEMU_CPUS = {"avx2": "Haswell-v4", "x86-64": "Nehalem"}

_RUNNER = r"""
import sys, numpy as np, onnxruntime as ort
path, inp, out = sys.argv[1:4]
arrays = dict(np.load(inp))
n = 1 + max(int(k.split("__", 1)[0]) for k in arrays)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.log_severity_level = 3
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
res = [s.run(None, {k.split("__", 1)[1]: v for k, v in arrays.items() if k.split("__", 1)[0] == str(i)})[0]
       for i in range(n)]
np.savez(out, **{str(i): r for i, r in enumerate(res)})
"""


def qemu_binary() -> str | None:
    """Path of `qemu-x86_64` when it can run this Python (an x86-64 Linux machine), else None."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return shutil.which("qemu-x86_64")


def can_emulate(target: str) -> bool:
    return target in QEMU_CPUS and qemu_binary() is not None


def run_emulated(path: str | os.PathLike[str], feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
                 target: str = "avx2", timeout: float = 900.0) -> Any:
    """The first output of ONNX file `path` on `feeds` (one feed dict, or a list of them: one
    output each, all in one emulated process), computed by ORT on an emulated `target` CPU."""
    if target not in QEMU_CPUS:
        raise ConfigError(f"run_emulated: target {target!r} cannot be emulated; choose one of {', '.join(QEMU_CPUS)}")
    qemu = qemu_binary()
    if qemu is None:
        raise RunError("run_emulated needs qemu-x86_64 on an x86-64 Linux machine (apt-get install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="condense-emu-") as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        many = isinstance(feeds, list)
        np.savez(inp, **{f"{i}__{k}": np.ascontiguousarray(v) for i, f in enumerate(feeds if many else [feeds])
                         for k, v in f.items()})
        cmd = [qemu, "-cpu", QEMU_CPUS[target], sys.executable, "-c", _RUNNER, str(path), str(inp), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise RunError(f"emulated {target} run of {path} took more than {timeout:.0f} s") from e
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(line for line in proc.stderr.splitlines() if "TCG doesn't support" not in line)[-800:]
            raise RunError(f"emulated {target} run of {path} failed (exit {proc.returncode}): {tail}")
        with np.load(out) as got:
            res = [got[str(i)] for i in range(len(got.files))]
        return res if many else res[0]


def input_name(path: str | os.PathLike[str]) -> str:
    """The name of an ONNX file's first input (read without its external data)."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def agreement_of(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (%) and max |diff| of outputs `got` against `ref`."""
    got, ref = np.asarray(got), np.asarray(ref)
    return {"top1_agreement": float(100.0 * (got.argmax(-1) == ref.argmax(-1)).mean()),
            "max_abs_diff": float(np.abs(got - ref).max())}


def emulated_agreement(path: str | os.PathLike[str], inputs: Any, reference: np.ndarray,
                       target: str = "avx2") -> dict[str, float]:
    """`agreement_of` the outputs of `path` on an emulated `target` CPU and `reference` outputs (e.g.
    the PyTorch simulation's), for a single-input model fed `inputs`."""
    x = inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else np.asarray(inputs)
    return agreement_of(run_emulated(path, {input_name(path): x.astype(np.float32)}, target), reference)
