"""The ONNX side of quantization: what reads and rewrites ONNX graphs and runs them in ONNX Runtime.

The static int8 export (`onnx_int8`: QDQ nodes written by `qdq_graph` with the scales the torch
side calibrated), ONNX Runtime's dynamic int8 quantizer (`dynamic_onnx`), the exact float rewrites
of the transformer path (`onnx_smooth`: SmoothQuant, outlier split) and its file / session pieces
(`transformer_graph`), and running a file as another CPU would (`emulate`).

Named `graph`, not `onnx`: these files import the third-party `onnx` package throughout, and a
`condense.quantize.onnx` beside it reads as that package. These modules may import
`condense.quantize.modules` (the torch side) and the shared leaves `registry` and `attached`, never
the orchestrating modules at the package top. Nothing is imported here.
The old flat paths (`condense.quantize.onnx_int8`, ...) still work (`condense.quantize.moved`).
"""
