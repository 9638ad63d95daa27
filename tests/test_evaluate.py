"""Metrics (checked against scikit-learn), evaluate on PyTorch and ONNX Runtime, profiling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from torch import nn

from condense.core.errors import ConfigError, InputFileError
from condense.data.base import ArrayDataset
from condense.evaluate import (
    classification_metrics,
    count_flops,
    count_parameters,
    evaluate,
    latency_table,
    measure_latency,
    predict_logits,
    profile,
)
from condense.export import export_onnx, onnx_session


def small_cnn(num_classes: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(scope="module")
def data() -> ArrayDataset:
    g = torch.Generator().manual_seed(1)
    return ArrayDataset.from_arrays(torch.randn(37, 1, 8, 8, generator=g), torch.randint(0, 6, (37,), generator=g))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = small_cnn().eval()
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    export_onnx(model, torch.randn(1, 1, 8, 8), path)
    return model, path


# ---- metrics ---------------------------------------------------------------------------------


def test_metrics_match_sklearn_with_a_class_never_predicted():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 6))
    logits[:, 5] = -1e9  # class 5 is never predicted (but occurs in the targets)
    y = rng.integers(0, 6, size=300)
    m = classification_metrics(logits, y, topk=(1, 3))
    pred = logits.argmax(1)
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert m["n"] == 300 and m["num_classes"] == 6
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision_macro"] == pytest.approx(p)
    assert m["recall_macro"] == pytest.approx(r)
    assert m["f1_macro"] == pytest.approx(f)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=list(range(6))).tolist()
    assert m["per_class"]["precision"][5] == 0.0 and m["per_class"]["support"][5] == int((y == 5).sum())
    json.dumps(m)


def test_macro_averages_skip_classes_absent_from_targets_and_predictions():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(50, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, size=50))  # class 3 may be predicted but never true
    m = classification_metrics(logits, y, num_classes=5)  # class 4: neither true nor predicted
    pred = logits.argmax(1).numpy()
    p, r, f, _ = precision_recall_fscore_support(y.numpy(), pred, average="macro", zero_division=0)
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx((p, r, f))
    assert len(m["confusion_matrix"]) == 5 and m["confusion_matrix"][4] == [0] * 5


def test_topk_by_hand():
    logits = np.array(
        [
            [0.1, 0.5, 0.3, 0.0],  # order 1,2,0,3 ; target 2 -> top2 yes, top1 no
            [0.9, 0.05, 0.03, 0.02],  # order 0,1,2,3 ; target 3 -> top3 no
            [0.2, 0.1, 0.3, 0.4],  # order 3,2,0,1 ; target 3 -> top1 yes
        ]
    )
    m = classification_metrics(logits, [2, 3, 3], topk=(1, 2, 3, 5))
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["top2_accuracy"] == pytest.approx(2 / 3)
    assert m["top3_accuracy"] == pytest.approx(2 / 3)
    assert "top5_accuracy" not in m and "top1_accuracy" not in m  # k >= classes is trivially 1


def test_metrics_reject_bad_input():
    with pytest.raises(ConfigError, match="class id 4"):
        classification_metrics(np.zeros((2, 3)), [0, 4], num_classes=4)
    with pytest.raises(ConfigError, match=r"\(N, C\)"):
        classification_metrics(np.zeros(3), [0, 1, 2])
    with pytest.raises(ConfigError, match="num_classes=2"):
        classification_metrics(np.zeros((2, 3)), [0, 1], num_classes=2)
    with pytest.raises(ConfigError, match="k >= 1"):
        classification_metrics(np.zeros((2, 3)), [0, 1], topk=(0,))


# ---- evaluate --------------------------------------------------------------------------------


def test_evaluate_torch_equals_onnx(exported, data):
    model, path = exported
    a = evaluate(model, data, batch_size=8)
    b = evaluate(path, data, batch_size=16)
    c = evaluate(onnx_session(path, threads=1), data)
    assert a["runtime"] == "torch" and b["runtime"] == c["runtime"] == "onnxruntime"
    assert a["accuracy"] == b["accuracy"] == c["accuracy"]
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert {"top5_accuracy", "precision_macro", "recall_macro", "f1_macro", "n", "loss"} <= set(a)
    torch.testing.assert_close(predict_logits(model, data), predict_logits(path, data), atol=1e-4, rtol=1e-3)
    json.dumps(a)


def test_evaluate_restores_train_mode_and_uses_eval_mode(data):
    model = small_cnn().train()
    first = predict_logits(model, data.inputs, batch_size=5)
    second = evaluate(model, data)
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(first, predict_logits(model, data))  # dropout off: deterministic
    assert 0.0 <= second["accuracy"] <= 1.0
    model.eval()
    evaluate(model, data)
    assert not model.training


def test_evaluate_errors(tmp_path, data):
    with pytest.raises(ConfigError, match="evaluation needs labelled data"):
        evaluate(small_cnn(), data.without_labels())
    with pytest.raises(InputFileError, match="not found"):
        evaluate(tmp_path / "missing.onnx", data)
    with pytest.raises(ConfigError, match="model outputs 3 logits"):
        evaluate(small_cnn(num_classes=3), data)
    with pytest.raises(ConfigError, match="nn.Module"):
        evaluate(42, data)


def test_fixed_batch_onnx_is_padded_and_profiled(tmp_path, data):
    model = small_cnn().eval()
    path = tmp_path / "fixed.onnx"
    export_onnx(model, torch.randn(4, 1, 8, 8), path, dynamic_batch=False)
    torch.testing.assert_close(predict_logits(path, data), predict_logits(model, data), atol=1e-4, rtol=1e-3)
    rep = profile(model, data.inputs[:1], runtimes="onnxruntime", onnx_path=path, batch_sizes=(1, 4), warmup=1, repeats=3)
    assert "skipped" in rep["latency"]["onnxruntime"]["1"]
    assert rep["latency"]["onnxruntime"]["4"]["p50_ms"] > 0


# ---- profiling -------------------------------------------------------------------------------


def test_count_flops_linear_and_conv():
    assert count_flops(nn.Linear(10, 5), torch.randn(1, 10)) == {"flops": 100, "macs": 50}
    conv = nn.Conv2d(3, 4, 3, padding=1)
    macs = 4 * 8 * 8 * 3 * 3 * 3  # out channels * out pixels * in channels * kernel area
    assert count_flops(conv, torch.randn(5, 3, 8, 8)) == {"flops": 2 * macs, "macs": macs}  # one sample


class _EncoderHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).mean(1))


def test_profile_counts_flops_through_transformer_fast_path():
    """Eval mode runs torch's fused `_transformer_encoder_layer_fwd`, which FlopCounterMode cannot
    see into; profile counts as if module by module (the reference: train mode, dropout forcing the
    unfused attention, which FlopCounterMode counts as bmm)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _EncoderHead()
    x = torch.randn(3, 8, 32)
    model.train()
    with torch.no_grad(), FlopCounterMode(display=False) as ref:
        model(x[:1])
    expected = ref.get_total_flops()
    assert expected > 100_000
    model.eval()
    rep = profile(model, x, runtimes=("torch",), batch_sizes=(1,), warmup=1, repeats=3)
    assert abs(rep["flops"] - expected) <= 0.05 * expected, (rep["flops"], expected)
    assert rep["macs"] == rep["flops"] // 2
    assert not model.training and torch.backends.mha.get_fastpath_enabled()  # state restored


def test_count_parameters_nonzero_and_buffers_excluded():
    lin = nn.Linear(10, 5)
    with torch.no_grad():
        lin.weight[:2].zero_()
    assert count_parameters(lin) == {"params": 55, "nonzero_params": 35}
    bn = nn.BatchNorm1d(4)  # 8 parameters (weight, bias = 0); 9 buffer elements not counted
    assert count_parameters(bn) == {"params": 8, "nonzero_params": 4}


def test_measure_latency_structure():
    calls = []
    lat = measure_latency(lambda: calls.append(sum(range(1000))), warmup=2, repeats=5)
    assert set(lat) >= {"p50_ms", "p90_ms", "mean_ms", "repeats"}
    assert lat["p90_ms"] >= lat["p50_ms"] > 0 and lat["repeats"] == 5 and len(calls) == 7
    assert measure_latency(lambda: None, warmup=1, repeats=3, min_time_s=0.01)["repeats"] > 3
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(lambda: None, repeats=1)


def test_profile_both_runtimes(exported, tmp_path):
    model, path = exported
    model.train()
    art = tmp_path / "artifact"
    (art / "sub").mkdir(parents=True)
    (art / "weights.bin").write_bytes(b"x" * 100)
    (art / "sub" / "meta.json").write_bytes(b"{}")
    threads_before = torch.get_num_threads()
    rep = profile(model, torch.randn(1, 1, 8, 8), batch_sizes=(1, 4), threads=1, artifact_path=art, warmup=1, repeats=3)
    assert torch.get_num_threads() == threads_before and model.training
    json.dumps(rep)
    assert rep["threads"] == 1 and rep["artifact_bytes"] == 102
    assert rep["params"] == count_parameters(model)["params"] and rep["macs"] == rep["flops"] // 2 > 0
    assert rep["onnx_exported"] and rep["onnx_bytes"] > 0 and rep["onnx_exporter"] == "dynamo"
    assert rep["environment"]["torch"] == torch.__version__ and rep["environment"]["onnxruntime"]
    for rt in ("torch", "onnxruntime"):
        for bs in ("1", "4"):
            e = rep["latency"][rt][bs]
            assert e["p90_ms"] >= e["p50_ms"] > 0 and e["repeats"] == 3 and e["batch_size"] == int(bs)
    assert len(latency_table(rep)) == 4

    given = profile(model, torch.randn(1, 1, 8, 8), runtimes=("onnxruntime",), onnx_path=path, batch_sizes=(2,), warmup=1, repeats=3)
    assert given["onnx_bytes"] == path.stat().st_size and not given["onnx_exported"]
    assert list(given["latency"]) == ["onnxruntime"]
    with pytest.raises(ConfigError, match="did you mean: onnxruntime"):
        profile(model, torch.randn(1, 1, 8, 8), runtimes=("onnxruntme",))
    with pytest.raises(InputFileError):
        profile(model, torch.randn(1, 1, 8, 8), runtimes=("torch",), artifact_path=tmp_path / "nope")
