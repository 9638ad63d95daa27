"""Dynamic int8: PyTorch path, ONNX Runtime path (MatMulInteger), speed check that warns or refuses."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from condense.core.errors import ConfigError, InputFileError, RunError
from condense.export.onnx import export_onnx, onnx_session, ort_run
from condense.quantize import dynamic as dyn
from condense.quantize.dynamic import (
    DynamicConfig,
    check_dynamic_speed,
    export_dynamic_int8,
    measure_speedup,
    quantize_dynamic_onnx,
    quantize_dynamic_torch,
)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


class EmbedMLP(nn.Module):
    """Token ids -> embedding -> Linear: the Gather + MatMul shape of a BERT-family model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(100, 32)
        self.fc = nn.Linear(32, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids)).mean(1)


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    export_onnx(mlp(), torch.randn(1, 64), d / "fp32.onnx")
    quantize_dynamic_onnx(d / "fp32.onnx", d / "int8.onnx", target="avx2")  # 7-bit weights (reduce_range)
    return d / "fp32.onnx", d / "int8.onnx"


def test_onnx_dynamic_has_integer_ops_and_matches_fp32(mlp_files) -> None:
    fp32, int8 = mlp_files
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert "Gemm" not in ops  # ORT rewrote Gemm into MatMul before quantizing
    x = torch.randn(32, 64)
    ref = mlp()(x).detach().numpy()
    out = ort_run(onnx_session(int8), x)
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) <= 64  # cannot saturate on AVX2
    assert np.abs(out - ref).max() < 0.03 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size
    assert not list(int8.parent.glob(".*tmp*"))  # atomic write left no temporary file


def test_onnx_dynamic_embeddings_gather(tmp_path) -> None:
    model = EmbedMLP().eval()
    ids = torch.randint(0, 100, (2, 5))
    torch.onnx.export(model, (ids,), tmp_path / "e.onnx", input_names=["ids"], output_names=["y"],
                      dynamic_axes={"ids": {0: "b", 1: "t"}}, dynamo=False)
    quantize_dynamic_onnx(tmp_path / "e.onnx", tmp_path / "e8.onnx", op_types=["MatMul", "Gather"], target="avx2")
    g = onnx.load(str(tmp_path / "e8.onnx"))
    ops = [n.op_type for n in g.graph.node]
    assert "MatMulInteger" in ops and "Gather" in ops
    emb_inits = [i for i in g.graph.initializer if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) == 2]
    assert any(tuple(i.dims) == (100, 32) for i in emb_inits)  # the table is stored in 8 bits
    sess = onnx_session(tmp_path / "e8.onnx")
    out = sess.run(None, {"ids": ids.numpy()})[0]
    ref = model(ids).detach().numpy()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 1e-3


def test_onnx_dynamic_target_decides_the_weight_range(mlp_files, tmp_path) -> None:
    fp32, _ = mlp_files

    def widest(target: str, **kw) -> int:
        out = quantize_dynamic_onnx(fp32, tmp_path / f"{target}.onnx", target=target, **kw)
        proto = onnx.load(str(out))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["condense.int8_target"] == target
        return max(int(np.abs(onnx.numpy_helper.to_array(t).astype(int)).max()) for t in proto.graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2)

    assert widest("avx512-vnni") == 127  # full int8 grid where the sums are exact
    assert widest("avx2") <= 64
    assert widest("arm64") == 127


def test_torch_dynamic_path() -> None:
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the deprecation noise is silenced inside
        q = quantize_dynamic_torch(model, ignore=["4"])
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert isinstance(q[0], DynamicLinear) and type(q[4]) is nn.Linear
    assert type(model[0]) is nn.Linear
    x = torch.randn(16, 64)
    assert (q(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_quantize_verb_dynamic() -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from condense.quantize import quantize

    q = quantize(mlp(), DynamicConfig())
    assert isinstance(q[2], DynamicLinear)


def test_bad_inputs(tmp_path, mlp_files) -> None:
    with pytest.raises(InputFileError):
        quantize_dynamic_onnx(tmp_path / "missing.onnx", tmp_path / "o.onnx")
    with pytest.raises(ConfigError, match="op_types"):
        quantize_dynamic_onnx(mlp_files[0], tmp_path / "o.onnx", op_types=["Softmax"])
    with pytest.raises(ConfigError, match="weight_type"):
        quantize_dynamic_onnx(mlp_files[0], tmp_path / "o.onnx", weight_type="int4")
    with pytest.raises(ConfigError):
        DynamicConfig(op_types=[])
    assert not (tmp_path / "o.onnx").exists()


def test_measure_speedup_reports_medians(mlp_files) -> None:
    r = measure_speedup(*mlp_files, np.random.randn(8, 64).astype(np.float32), threads=1, repeats=6, warmup=1)
    assert r["fp32_ms"] > 0 and r["int8_ms"] > 0
    assert r["ratio"] == pytest.approx(r["int8_ms"] / r["fp32_ms"])


def test_slowdown_warns_or_refuses(monkeypatch, mlp_files) -> None:
    fake = {"fp32_ms": 1.0, "int8_ms": 6.0, "ratio": 6.0, "threads": 1.0, "repeats": 3.0}
    monkeypatch.setattr(dyn, "measure_speedup", lambda *a, **k: dict(fake))
    x = np.zeros((1, 64), np.float32)
    with pytest.warns(UserWarning, match=r"6\.00x"):
        assert check_dynamic_speed(*mlp_files, x)["ratio"] == 6.0
    with pytest.raises(RunError, match="slower than fp32"):
        check_dynamic_speed(*mlp_files, x, refuse_slowdown=True)
    fast = {**fake, "int8_ms": 0.5, "ratio": 0.5}
    monkeypatch.setattr(dyn, "measure_speedup", lambda *a, **k: dict(fast))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_dynamic_speed(*mlp_files, x, refuse_slowdown=True)


def test_export_dynamic_int8_refusal_removes_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(dyn, "measure_speedup", lambda *a, **k: {"fp32_ms": 1.0, "int8_ms": 3.0, "ratio": 3.0})
    with pytest.raises(RunError):
        export_dynamic_int8(mlp(), torch.randn(1, 64), tmp_path / "m8.onnx", DynamicConfig(refuse_slowdown=True))
    assert not (tmp_path / "m8.onnx").exists()
    res = export_dynamic_int8(mlp(), torch.randn(1, 64), tmp_path / "m8.onnx", check_speed=False)
    assert res["bytes"] < 0.35 * res["fp32_bytes"] and res["max_abs_diff"] < 0.05
