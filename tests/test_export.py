"""fp32 ONNX export: dynamic batch, parity check, atomic writes, exporter fallback, sessions."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from condense.core.errors import InputFileError, RunError
from condense.export import ExportParityError, export_onnx, onnx_session
from condense.export import onnx as onnx_mod


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    )


class ExportsDifferently(nn.Module):
    """Adds 1 to its output only while being exported: the ONNX file cannot match eager PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            y = y + 1.0
        return y


def _run(path, x: torch.Tensor) -> np.ndarray:
    return onnx_session(path).run(None, {"input": x.numpy()})[0]


def test_export_dynamic_batch_single_file_and_silent(tmp_path, capfd, recwarn):
    model = small_cnn().train()
    example = torch.randn(1, 1, 8, 8)
    path = tmp_path / "out" / "model.onnx"
    res = export_onnx(model, example, path)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert len(recwarn) == 0
    assert model.training  # mode restored
    assert res.exporter == "dynamo" and res.fallback_reason is None
    assert res.path == path and res.bytes == path.stat().st_size > 0
    assert res.checked_batches == [1, 3]
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-4
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # self-contained, no temp left
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    model.eval()
    for n in (1, 7):
        x = torch.randn(n, 1, 8, 8)
        with torch.no_grad():
            ref = model(x).numpy()
        got = _run(path, x)
        assert got.shape == (n, 5)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_parity_failure_raises_and_leaves_no_file(tmp_path):
    model = ExportsDifferently()
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportParityError) as info:
        export_onnx(model, torch.randn(1, 6), path)
    msg = str(info.value)
    assert "bad.onnx" in msg and "atol=0.0001" in msg and "max abs diff 1" in msg
    assert isinstance(info.value, RunError)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_keeps_previous_file(tmp_path, monkeypatch):
    # the legacy exporter is quicker, and the model differs under it too
    def legacy(model, inputs, path, opset, external, output_name):
        onnx_mod.export_torchscript(model, inputs, path, opset, output_name)

    monkeypatch.setattr(onnx_mod, "_export_dynamo", legacy)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous good export")
    with pytest.raises(ExportParityError):
        export_onnx(ExportsDifferently(), torch.randn(2, 6), path)
    assert path.read_bytes() == b"previous good export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_fallback_to_torchscript_exporter(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot trace this")

    monkeypatch.setattr(onnx_mod, "_export_dynamo", broken)
    model = small_cnn().eval()
    path = tmp_path / "legacy.onnx"
    res = export_onnx(model, torch.randn(1, 1, 8, 8), path)
    assert res.exporter == "torchscript"
    assert "dynamo cannot trace this" in (res.fallback_reason or "")
    assert res.checked_batches == [1, 3] and res.max_abs_diff <= 1e-4
    assert _run(path, torch.randn(7, 1, 8, 8)).shape == (7, 5)


def test_both_exporters_failing_is_a_run_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("nope")

    monkeypatch.setattr(onnx_mod, "_export_dynamo", broken)
    monkeypatch.setattr(onnx_mod, "export_torchscript", broken)
    with pytest.raises(RunError, match="both exporters"):
        export_onnx(small_cnn(), torch.randn(1, 1, 8, 8), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_external_data_for_large_models(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_mod, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    model = small_cnn().eval()
    path = tmp_path / "big.onnx"
    res = export_onnx(model, torch.randn(1, 1, 8, 8), path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["big.onnx", "big.onnx.data"]
    assert res.bytes == sum((tmp_path / f).stat().st_size for f in files)
    assert onnx_mod.onnx_file_bytes(path) == res.bytes
    assert _run(path, torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_onnx_session_missing_and_corrupt(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        onnx_session(tmp_path / "missing.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(InputFileError, match="corrupt.onnx"):
        onnx_session(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        onnx_session(empty)
