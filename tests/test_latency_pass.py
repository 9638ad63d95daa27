"""Issue 27, item 4: latency the report can defend. Files are timed against their reference in
one interleaved pass, a pass whose p90/p50 or machine load says it is unreliable is measured once
more and flagged, the report states ratios from the pass, never shows the int8 simulation's torch
latency as a stage latency, and labels what its scatter plots put on the y axis. No assertion
here depends on real timings: a fake clock drives every duration."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from condense.evaluate.timing import interleaved_latency, judge, onnx_latency_pass, timed_pass
from condense.report import build_report, load_run, write_report
from condense.report.plots import quality_axis

QUIET = {"load_1min": 0.0, "cpus": 2}


class FakeClock:
    """A timer that only moves when a runner says how long it took."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def runner(self, ms: float, spike_every: int = 0, spike_ms: float = 0.0):
        calls = {"n": 0}

        def run(_feed):
            calls["n"] += 1
            slow = spike_every and calls["n"] % spike_every == 0
            self.t += (spike_ms if slow else ms) / 1e3

        run.calls = calls
        return run


def test_interleaved_pass_states_ratios_against_the_reference():
    clock = FakeClock()
    runs = {"fp32": clock.runner(2.0), "int8": clock.runner(1.0), "pruned": clock.runner(3.0)}
    res = timed_pass(runs, [None], reference="fp32", repeats=10, warmup=0, timer=clock, load=lambda: QUIET)
    assert res["reliable"] and res["measured"] == 1 and res["reasons"] == []
    assert res["ratios"] == pytest.approx({"fp32": 1.0, "int8": 0.5, "pruned": 1.5})
    assert res["timings"]["int8"]["wall_ms"] == pytest.approx(1.0) and res["timings"]["int8"]["p90_ms"] == pytest.approx(1.0)
    # every runner ran in every round (interleaved), not one block after another
    assert all(r.calls["n"] == 10 for r in runs.values())


def test_a_spread_pass_is_measured_again_and_flagged():
    clock = FakeClock()
    noisy = clock.runner(1.0, spike_every=3, spike_ms=50.0)  # a third of the calls 50x slower: p90/p50 = 50
    runs = {"fp32": clock.runner(1.0), "int8": noisy}
    t = interleaved_latency(runs, [None], repeats=12, warmup=0, timer=clock)
    assert t["int8"]["p90_ms"] / t["int8"]["wall_ms"] > 2
    assert any("int8: p90" in r for r in judge(t, QUIET))
    res = timed_pass(runs, [None], reference="fp32", repeats=12, warmup=0, timer=clock, load=lambda: QUIET)
    assert not res["reliable"] and res["measured"] == 2  # measured once more before stating anything
    assert res["earlier_reasons"] and "more than 2x" in res["reasons"][0]


def test_machine_load_flags_a_pass():
    clock = FakeClock()
    runs = {"a": clock.runner(1.0), "b": clock.runner(1.0)}
    res = timed_pass(runs, [None], reference="a", repeats=5, warmup=0, timer=clock,
                     load=lambda: {"load_1min": 7.5, "cpus": 2})
    assert not res["reliable"] and "machine load 7.50" in res["reasons"][-1] and res["measured"] == 2
    calm = timed_pass(runs, [None], reference="a", repeats=5, warmup=0, timer=clock, load=lambda: QUIET)
    assert calm["reliable"]


def _onnx(path: Path, width: int) -> Path:
    from condense.export import export_onnx

    torch.manual_seed(width)
    model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3)).eval()
    export_onnx(model, torch.randn(1, 8), path)
    return path


def test_onnx_pass_times_every_file_against_the_reference(tmp_path):
    files = {"teacher": _onnx(tmp_path / "t.onnx", 64), "student": _onnx(tmp_path / "s.onnx", 8)}
    out = onnx_latency_pass(files, "teacher", torch.randn(4, 8), batch_sizes=(1, 4), threads=1, repeats=5, warmup=1)
    assert sorted(out["batches"]) == [1, 4] and out["files"] == {"teacher": "t.onnx", "student": "s.onnx"}
    for res in out["batches"].values():
        assert set(res["timings"]) == {"teacher", "student"} and res["ratios"]["teacher"] == 1.0
        assert res["ratios"]["student"] == pytest.approx(res["timings"]["student"]["wall_ms"] / res["timings"]["teacher"]["wall_ms"])
    assert isinstance(out["reliable"], bool) and "load_1min" in out["load"]


# -- the report -------------------------------------------------------------------------------


def _row(stage: str, kind: str, lat: dict, **extra) -> dict:
    return {"stage": stage, "kind": kind, "accuracy": 0.9, "params": 1000, "nonzero_params": 1000,
            "bytes_safetensors": 4000, "bytes_onnx": 4100, "latency_ms": lat, "notes": [], **extra}


def _run(tmp_path: Path, *, reliable: bool, old_int8_torch: bool = False) -> Path:
    run = tmp_path / ("run-ok" if reliable else "run-bad")
    rows = [
        ("01-teacher", _row("teacher", "train", {"torch": {"1": 0.5}, "onnxruntime": {"1": 0.10}},
                            latency_p90_ms={"torch": {"1": 23.5}, "onnxruntime": {"1": 0.11}}, onnx_file="model.onnx")),
        ("02-int8", _row("int8", "quantize",
                         {"torch": {"1": 9.0}, "onnxruntime": {"1": 0.35}} if old_int8_torch else {"onnxruntime": {"1": 0.35}},
                         onnx_file="model.int8.onnx", bytes_onnx=1200,
                         **({} if old_int8_torch else {"simulation_latency_ms": {"torch": {"1": 9.0}}}))),
    ]
    for folder, row in rows:
        d = run / folder
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(row))
        (d / "DONE").write_text("")
    (run / "02-int8" / "model.int8.onnx").write_bytes(b"\1" * 1200)
    spread = 1.2 if reliable else 3.5
    lp = {"reference": "teacher", "threads": 1, "files": {"teacher": "model.onnx", "int8": "model.int8.onnx"},
          "batches": {"1": {"reference": "teacher", "reliable": reliable, "measured": 1 if reliable else 2,
                            "reasons": [] if reliable else ["int8: p90 0.42 ms is 3.5x the median 0.12 ms (more than 2x)"],
                            "timings": {"teacher": {"wall_ms": 0.10, "p90_ms": 0.11},
                                        "int8": {"wall_ms": 0.12, "p90_ms": 0.12 * spread}},
                            "ratios": {"teacher": 1.0, "int8": 1.2}}},
          "reliable": reliable,
          "warnings": [] if reliable else ["latency at batch 1 is unreliable after 2 interleaved passes (...)"]}
    (run / "report.json").write_text(json.dumps({"stages": [r["stage"] for _, r in rows], "latency_pass": lp}))
    return run


def test_report_states_ratios_from_the_pass(tmp_path):
    rep = build_report(_run(tmp_path, reliable=True))
    int8 = rep["stages"][1]
    assert int8["vs_first"]["latency:onnxruntime:1"] == pytest.approx(1.2)  # the pass's, not 0.35 / 0.10
    assert [i for i in int8["illusions"] if "slower" in i][0].count("timed together in the run's interleaved latency pass") == 1
    # the teacher's own torch timing (p90 47x its median) is flagged; its ORT timing was replaced by the pass
    warnings = rep["report"]["warnings"]
    assert any("“teacher”: torch latency at batch 1 is unreliable" in w for w in warnings)
    assert not any("onnxruntime latency" in w for w in warnings)
    # never the int8 simulation's torch latency as a stage latency
    assert "latency:torch:1" not in int8["vs_first"]


def test_unreliable_pass_is_flagged_and_claims_no_loss(tmp_path):
    run = _run(tmp_path, reliable=False)
    rep = build_report(run)
    assert any("unreliable after 2 interleaved passes" in w for w in rep["report"]["warnings"])
    assert not any("slower" in i for i in rep["stages"][1]["illusions"])
    paths = write_report(run, plots=False)
    md = paths.markdown.read_text()
    assert "Latency: deployed files timed together" in md and "UNRELIABLE (measured 2 times" in md
    assert "Latency: deployed files timed together" in paths.html.read_text()


def test_an_old_run_drops_the_simulation_torch_latency(tmp_path):
    run = load_run(_run(tmp_path, reliable=True, old_int8_torch=True))
    int8 = run.stages[1]
    assert "torch" not in int8.latency and int8.simulated["torch"] == {1: 9.0}
    assert any("int8 simulation (fake-quant)" in n for n in int8.notes)


def test_scatter_plots_label_what_they_plot(tmp_path):
    from condense.report.data import Stage

    enc = [Stage(index=i, name=f"s{i}", row={"mean_cosine": c}) for i, c in enumerate((1.0, 0.98))]
    assert quality_axis(enc, 100.0) == ("mean_cosine", 1.0, "mean cosine to the reference")
    cls = [Stage(index=0, name="t", row={"accuracy": 0.9})]
    assert quality_axis(cls, 100.0) == ("accuracy", 100.0, "accuracy (%)")
    dec = [Stage(index=0, name="t", row={"token_agreement": 0.7})]
    assert quality_axis(dec, 100.0)[2] == "token agreement with the reference"


def test_profile_flags_a_spread_timing_and_a_busy_machine():
    from condense.cli.measure import _profile_text
    from condense.evaluate.profile import _summary

    calm = _summary({"p50_ms": 1.0, "p90_ms": 1.5, "mean_ms": 1.1, "min_ms": 0.9, "repeats": 30}, 1)
    spiky = _summary({"p50_ms": 1.0, "p90_ms": 47.0, "mean_ms": 9.0, "min_ms": 0.9, "repeats": 30}, 1)
    assert calm["reliable"] and not spiky["reliable"] and spiky["p90_over_p50"] == 47.0
    text = _profile_text({"params": 1, "nonzero_params": 1, "flops": 2, "macs": 1, "threads": 1,
                          "latency": {"torch": {"1": calm, "256": spiky}, "onnxruntime": {"8": {"batch_size": 8, "skipped": "fixed batch"}}},
                          "load": {"load_1min": 5.0, "cpus": 2}})
    assert "UNRELIABLE (p90 47.0x p50)" in text and "fixed batch" in text and "machine load 5.00" in text
    assert text.count("UNRELIABLE") == 2
