"""Replacement modules (QuantWrapper, QATWrapper, LowRank) keep the face of the layer they replace:
third-party forward code that reads `.weight`, `.stride`, `.in_features`, ... keeps working."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condense
from condense.core.taps import fused_fastpath_off
from condense.lowrank import FactorizeConfig, LowRank, factorize
from condense.lowrank.modules import empty_lowrank
from condense.models import MODELS
from condense.quantize import QuantizeConfig, QuantWrapper, quantize
from condense.quantize.primitives import QuantSpec
from condense.quantize.qat import QATWrapper
from condense.quantize.weight_only import QuantizedLinear

CONV_FACE = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


class EncoderHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x).mean(1))


class TfPadConv(nn.Module):
    """Reads its conv's hyper-parameters in forward, like HF MobileNetV2's `apply_tf_padding`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=0)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        sh, sw = self.conv.stride
        kh, kw = self.conv.kernel_size
        dh, dw = self.conv.dilation
        pad_h = max((kh - 1) * dh + 1 - (h % sh or sh), 0)
        pad_w = max((kw - 1) * dw + 1 - (w % sw or sw), 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return self.head(self.conv(x).mean((2, 3)))


def test_static_int8_of_a_transformer_encoder_runs_off_the_fused_path():
    model = EncoderHead().eval()
    x = torch.randn(16, 8, 32)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="out_proj"):  # MHA reads out_proj's weight itself: left in float
        q = quantize(copy.deepcopy(model), QuantizeConfig(), calibration=[x[:8], x[8:]])
    lin1 = q.enc.layers[0].linear1
    assert isinstance(lin1, QuantWrapper)
    assert lin1.weight is lin1.module.weight and lin1.bias is lin1.module.bias
    assert (lin1.in_features, lin1.out_features) == (32, 64)
    assert not hasattr(lin1, "stride")
    q.eval()
    with torch.no_grad():
        y = q(x)
    err = (y - ref).abs().max().item()
    assert 0 < err < 0.1 * ref.abs().max().item()  # quantized (not the fused float path), and close
    # the wrappers' own forward ran: the same as with torch's fused fast path switched off (a fused
    # kernel would have read the float weights through the face and skipped the quantizers)
    with torch.no_grad(), fused_fastpath_off():
        slow = q(x)
    torch.testing.assert_close(y, slow)
    assert all(".module." in k or "_fq." in k or not k.startswith("enc.layers.0.linear1")
               for k in q.state_dict())


def test_wrappers_report_the_wrapped_layers_face():
    conv = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=1, padding_mode="reflect")
    lin = nn.Linear(6, 5)
    wspec, aspec = QuantSpec.weight(8), QuantSpec.activation(8)
    for wrap in (lambda m: QuantWrapper(m, wspec, aspec), lambda m: QATWrapper(m, 8, 8)):
        wc, wl = wrap(conv), wrap(lin)
        for name in (*CONV_FACE, "weight", "bias"):
            assert getattr(wc, name) is getattr(conv, name) or getattr(wc, name) == getattr(conv, name), name
        assert (wl.in_features, wl.out_features, wl.weight is lin.weight, wl.bias is lin.bias) == (6, 5, True, True)
        assert not hasattr(wl, "kernel_size") and not hasattr(wc, "in_features")
        with pytest.raises(AttributeError, match="wrapping Linear"):
            _ = wl.stride
        assert not hasattr(wl, "no_such_thing")
        assert "weight" not in dict(wl.named_parameters(recurse=False))
        assert set(wl.state_dict()) >= {"module.weight", "module.bias"}


def test_lowrank_reports_the_replaced_layers_face_and_dense_weight():
    conv = nn.Conv2d(6, 8, (3, 5), stride=(2, 1), padding=(1, 2))
    x = torch.randn(2, 6, 9, 9)
    for form, rank in (("channel", [3]), ("spatial", [3]), ("tucker2", [3, 4])):
        lr = empty_lowrank(conv, form, rank)
        for p in lr.parameters():
            nn.init.normal_(p)
        for name in CONV_FACE:
            assert getattr(lr, name) == getattr(conv, name), (form, name)
        assert lr.weight.shape == conv.weight.shape and lr.bias is lr.up.bias
        torch.testing.assert_close(lr(x), F.conv2d(x, lr.weight, lr.bias, conv.stride, conv.padding), atol=1e-4, rtol=1e-4)
        assert not hasattr(lr, "in_features")
    lin = nn.Linear(12, 10)
    lr = empty_lowrank(lin, "linear", [4])
    assert (lr.in_features, lr.out_features) == (12, 10) and not hasattr(lr, "stride")
    torch.testing.assert_close(lr.weight, lr.up.weight @ lr.down.weight)
    assert list(lr.state_dict()) == ["down.weight", "up.weight", "up.bias"]


def test_factorize_a_model_whose_forward_reads_the_conv_stride(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS._items, "test_tf_pad_conv", TfPadConv)
    model = condense.build_model("test_tf_pad_conv").eval()
    x = torch.randn(4, 8, 11, 11)
    f = factorize(copy.deepcopy(model), FactorizeConfig(method="svd", rank=4, targets=["conv"]), example_inputs=x)
    assert isinstance(f.conv, LowRank)
    assert (f.conv.stride, f.conv.kernel_size, f.conv.in_channels) == (model.conv.stride, model.conv.kernel_size, 8)
    with torch.no_grad():
        y = f(x)
    assert y.shape == (4, 4)
    condense.save(f, tmp_path / "f")
    g = condense.load(tmp_path / "f")
    assert isinstance(g.conv, LowRank) and g.conv.stride == (2, 2)
    with torch.no_grad():
        assert torch.equal(g(x), y)


def test_weight_only_linear_keeps_the_linear_face():
    lin = nn.Linear(256, 16)
    q = QuantizedLinear.from_linear(lin, bits=4, group_size=64)
    assert (q.in_features, q.out_features, q.bias.shape) == (256, 16, (16,))
    assert q.weight.shape == lin.weight.shape and q.weight.dtype == torch.float32
    torch.testing.assert_close(q.weight, q.dequantized_weight())
    x = torch.randn(3, 256)
    torch.testing.assert_close(q(x), F.linear(x, q.weight, q.bias))
    assert "weight" not in q.state_dict() and not hasattr(q, "stride")
