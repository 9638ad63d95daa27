"""The torch side of quantization: what runs on `nn.Module`s and tensors.

Quantization math and observers (`primitives`, `observers`, `groups`, `packing`), fake-quant
wrappers and BatchNorm folding (`fake_quant`, `fold`), the calibration reader (`calibration`), and
the methods that rewrite a PyTorch model: static PTQ (`ptq`), QAT (`qat`, `lsq`, `qat_convert`,
`qat_fit`), weight-only (`weight_only`, `gptq`, `mixed`).

Layering inside `condense.quantize`: these modules import nothing from `quantize.graph` and, at the
package top, only the shared leaves `registry` (QUANTIZERS) and `attached` (what a quantized model
carries); `quantize.graph` (the ONNX side) may import them; the top (`dynamic`, `transformer*`,
`schemes`, the `quantize()` verb) orchestrates both. Nothing is imported here: import the module
you need. The old flat paths (`condense.quantize.ptq`, ...) still work (`condense.quantize.moved`).
"""
