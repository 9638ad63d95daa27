"""One measured row per model: the same numbers for every stage of a run and of the demo."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from condense.artifacts import artifact_bytes, save
from condense.core.config import Config
from condense.core.errors import ConfigError
from condense.data.base import Splits
from condense.data.loader import example_inputs
from condense.distill.defaults import is_encoder
from condense.evaluate import evaluate, profile
from condense.evaluate.decoder import is_decoder
from condense.evaluate.timing import machine_load
from condense.export import deploy_precision, export_onnx


@dataclasses.dataclass
class MeasureConfig(Config):
    """How stages are measured: latency batch sizes, repeats and threads (recorded in each row)."""

    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 256])
    repeats: int = 20
    warmup: int = 5
    threads: int | None = None
    runtimes: list[str] = dataclasses.field(default_factory=lambda: ["torch", "onnxruntime"])

    def validate(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"measure.batch_sizes must be integers >= 1, got {self.batch_sizes}")
        if self.repeats < 3:
            raise ConfigError(f"measure.repeats must be >= 3 (medians need repeats), got {self.repeats}")


def measure_model(
    model: nn.Module,
    stage: str,
    folder: Path,
    splits: Splits,
    cfg: MeasureConfig | None = None,
    *,
    deployed_onnx: Path | None = None,
    metadata: dict[str, Any] | None = None,
    reference: nn.Module | Callable[[], nn.Module] | None = None,
) -> dict[str, Any]:
    """Save `model` into `folder`, export (or take) its ONNX, and measure it on the test split.

    `deployed_onnx` is the file a deployment runs (e.g. the int8 ONNX of a quantized model); by
    default a fp32 ONNX export with a parity check is written as `model.onnx`. An encoder (a
    sentence embedding model, no class scores) is scored by its agreement with `reference` (the
    run's first model, e.g. the uncompressed teacher): mean / min cosine and top-10 overlap of
    its test embeddings, in place of accuracy. A decoder (next-token logits) gets held-out
    perplexity and its token agreement / KL with `reference`.
    """
    cfg = cfg or MeasureConfig()
    folder.mkdir(parents=True, exist_ok=True)
    save(model, folder, **(metadata or {}))
    example = example_inputs(splits.test, 1)
    notes: list[str] = []
    if deployed_onnx is None:
        exported = export_onnx(model, example, folder / "model.onnx")
        onnx_path, onnx_diff = exported.path, exported.max_abs_diff
    else:
        onnx_path, onnx_diff = Path(deployed_onnx), None
    encoder = is_encoder(model)
    decoder = is_decoder(model)
    if (encoder or decoder) and reference is None:
        reference = model  # the first stage of an encoder / decoder run is its own reference
    elif (encoder or decoder) and not isinstance(reference, nn.Module):
        reference = reference()  # type: ignore[operator]
    ref = reference if (encoder or decoder) else None
    torch_metrics = evaluate(model, splits.test, reference=ref)
    onnx_metrics = evaluate(onnx_path, splits.test, threads=cfg.threads, reference=ref)
    prof = profile(model, example, runtimes=tuple(cfg.runtimes), batch_sizes=tuple(cfg.batch_sizes),
                   threads=cfg.threads, onnx_path=onnx_path, artifact_path=folder / "model.safetensors",
                   warmup=cfg.warmup, repeats=cfg.repeats)
    latency = {rt: {bs: v["p50_ms"] for bs, v in by.items() if "p50_ms" in v} for rt, by in prof["latency"].items()}
    p90 = {rt: {bs: v["p90_ms"] for bs, v in by.items() if "p90_ms" in v} for rt, by in prof["latency"].items()}
    simulated: dict[str, Any] = {}
    if deployed_onnx is not None and "torch" in latency and deploy_precision(model) == "int8":
        # the torch model is the fake-quant simulation (or a float model carrying the int8 plan):
        # its latency is no runtime's, so it is kept apart and never shown as the stage's latency
        simulated = {"simulation_latency_ms": {"torch": latency.pop("torch")},
                     "simulation_latency_p90_ms": {"torch": p90.pop("torch", {})}}
        notes.append("torch latency left out of the stage's latency: the PyTorch model of this stage is the int8 "
                     "simulation (fake-quant, or a float model carrying the int8 plan), not a deployment runtime "
                     "(kept as simulation_latency_ms); the deployed model is the int8 ONNX file run by onnxruntime")
    row = {
        "stage": stage,
        "accuracy": torch_metrics.get("accuracy"),
        "onnx_accuracy": onnx_metrics.get("accuracy"),
        "f1_macro": torch_metrics.get("f1_macro"),
        "params": prof["params"],
        "nonzero_params": prof["nonzero_params"],
        "bytes_safetensors": artifact_bytes(folder / "model.safetensors"),
        "bytes_onnx": artifact_bytes(onnx_path),
        "onnx_file": onnx_path.name,
        "flops": prof["flops"],
        "macs": prof["macs"],
        "onnx_max_abs_diff": onnx_diff,
        "latency_ms": latency,
        "latency_p90_ms": p90,
        "threads": prof.get("threads"),
        "load": machine_load(),  # right after the timing: the report flags latency taken on a busy machine
        "environment": prof.get("environment"),
        "notes": notes,
    }
    row.update(simulated)
    if encoder:
        r, o = torch_metrics["reference"], onnx_metrics["reference"]
        row.update(mean_cosine=r["mean_cosine"], min_cosine=r["min_cosine"], topk_overlap=r.get("topk_overlap"),
                   onnx_mean_cosine=o["mean_cosine"], onnx_min_cosine=o["min_cosine"])
    if decoder:
        row.update(perplexity=torch_metrics["perplexity"], token_agreement=torch_metrics["token_agreement"],
                   token_kl=torch_metrics["token_kl"], onnx_perplexity=onnx_metrics["perplexity"],
                   onnx_token_agreement=onnx_metrics["token_agreement"])
    if prof["nonzero_params"] < 0.9 * prof["params"]:
        notes.append(f"{prof['params'] - prof['nonzero_params']:,} weights are zero but stored densely: "
                     "bytes on disk and latency do not shrink from these zeros")
    meta = dict(metadata or {})
    meta["metrics"] = {**meta.get("metrics", {}), "test": torch_metrics, "onnx_test": onnx_metrics, "profile": prof}
    save(model, folder, **meta)
    return row
