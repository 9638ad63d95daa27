"""`condense report`: a fake run folder in the recipe runner's layout -> HTML / Markdown / JSON.

The fake run has four stages: a trained baseline, a magnitude-pruned stage whose zeros are still
stored densely (and whose name is a script tag), an int8 ONNX export that is slower than fp32, and
a fake-quantized (QAT) stage never converted. Headless Chromium renders the HTML (skipped only when
/usr/bin/chromium is missing).
"""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import markupsafe
import pytest

from condense.core.errors import InputFileError
from condense.report import load_run, write_report
from condense.report.data import Stage
from condense.report.illusions import (
    channels_not_multiple_of_8,
    detect,
    fake_quant_not_converted,
    int8_slower,
    masks_not_removed,
    not_smaller_on_disk,
)
from condense.report.markdown import md_escape

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(stage: str, kind: str, acc: float, params: int, nonzero: int, st: int, onnx: int, lat: dict, **extra) -> dict:
    return {"stage": stage, "kind": kind, "accuracy": acc, "params": params, "nonzero_params": nonzero,
            "bytes_safetensors": st, "bytes_onnx": onnx, "flops": 2 * nonzero * 20, "macs": nonzero * 20,
            "latency_ms": lat, "notes": [], **extra}


def _stage(run: Path, folder: str, row: dict, *, edits=(), curves=None, int8_bytes=None, done=True) -> None:
    d = run / folder
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(row))
    (d / "condense.json").write_text(json.dumps({"format": "condense-artifact/1", "architecture": {"name": "cnn"},
                                                 "edits": list(edits)}))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    if curves is not None:
        (d / "checkpoint").mkdir()
        (d / "checkpoint" / "metrics.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curves))
    if int8_bytes is not None:
        (d / "model.int8.onnx").write_bytes(b"\1" * int8_bytes)
    if done:
        (d / "DONE").write_text("")


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    (run / "recipe.yaml").write_text(f"# recipe\nstages:\n  - kind: prune\n    name: \"{EVIL}\"\n")
    curves = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_accuracy": 0.5 + 0.09 * e, "lr": 1e-3}
              for e in range(1, 6)]
    curves.append({"epoch": 5, "train_loss": 0.39, "val_loss": 0.43, "val_accuracy": 0.95, "lr": 1e-3})  # resumed epoch
    _stage(run, "01-train", _row("teacher", "train", 0.97, 100_000, 100_000, 400_000, 410_000,
                                 {"torch": {"1": 0.50, "256": 20.0}, "onnxruntime": {"1": 0.10, "256": 8.0}}),
           curves=curves)
    _stage(run, "02-prune", _row(
        EVIL, "prune", 0.96, 100_000, 50_000, 400_120, 410_050,
        {"torch": {"1": 0.52, "256": 21.0}, "onnxruntime": {"1": 0.11, "256": 8.2}},
        notes=["<b>bold?</b> & done"],
        per_layer={"conv1": {"sparsity": 0.5, "channels": 13}, "fc": {"sparsity": 0.5, "channels": 32}},
        sensitivity={"conv1": [[0.1, 0.97], [0.3, 0.95], [0.5, 0.90]], "fc": [[0.1, 0.97], [0.3, 0.96], [0.5, 0.96]]},
    ), edits=[{"kind": "prune_masks", "params": {"modules": ["conv1", "fc"]}},
              {"kind": "prune_unmask", "params": {"modules": ["conv1", "fc"]}}])
    _stage(run, "03-quantize", _row(
        "int8 onnx", "quantize", 0.955, 100_000, 50_000, 401_000, 412_000,
        {"torch": {"1": 0.70, "256": 30.0}, "onnxruntime": {"1": 0.15, "256": 6.0}},
        per_layer={"conv1": {"bits": 8}, "fc": {"bits": 8}},
        int8_vs_fp32={"threads": 2, "batches": {"1": {"fp32_ms": 0.10, "int8_ms": 0.15, "int8_over_fp32": 1.5},
                                                 "256": {"fp32_ms": 8.0, "int8_ms": 6.0, "int8_over_fp32": 0.75}}},
    ), edits=[{"kind": "quantize_static", "params": {}}], int8_bytes=120_000)
    _stage(run, "04-qat", _row(
        "fake int4", "quantize", 0.95, 100_000, 50_000, 402_000, 413_000,
        {"torch": {"1": 0.90, "256": 35.0}, "onnxruntime": {"1": 0.12, "256": 9.0}},
    ), edits=[{"kind": "qat", "params": {}}])
    (run / "report.json").write_text(json.dumps({"stages": ["01-train", "02-prune", "03-quantize", "04-qat"],
                                                 "threads": 2}))
    return run


@pytest.fixture(scope="module")
def written(fake_run):
    paths = write_report(fake_run)
    return paths, paths.html.read_text(encoding="utf-8")


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m, validate=True) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


# -- content ------------------------------------------------------------------------------------
def test_html_has_table_escaped_names_and_no_script(written) -> None:
    paths, html = written
    assert paths.html.name == "report.html" and paths.markdown.exists() and paths.json.exists()
    assert '<table class="numbers">' in html
    for text in ("teacher", "fake int4", "int8 onnx", "97.00%", "391 KiB", "117 KiB", "×0.5"):
        assert text in html, text
    assert EVIL not in html and "<script" not in html.lower()
    assert str(markupsafe.escape(EVIL)) in html  # the stage name, shown as text
    assert "&lt;b&gt;bold?&lt;/b&gt; &amp; done" in html  # a note
    assert "Content-Security-Policy" in html and "script-src" not in html  # default-src 'none' forbids scripts


def test_every_illusion_is_named_in_words(written) -> None:
    paths, html = written
    data = json.loads(paths.json.read_text())
    found = {(x["stage_index"], x["code"]) for x in data["report"]["illusions"]}
    assert found == {(1, "masks_not_removed"), (1, "channels_not_multiple_of_8"), (2, "int8_slower"),
                     (3, "fake_quant_not_converted")}, found
    for x in data["report"]["illusions"]:
        assert str(markupsafe.escape(x["message"])) in html, x["message"]
    masks = next(x for x in data["report"]["illusions"] if x["code"] == "masks_not_removed")["message"]
    assert "50.0% of its parameters to zero" in masks and "dense zeros" in masks
    slow = next(x for x in data["report"]["illusions"] if x["code"] == "int8_slower")["message"]
    assert "at batch 1 it takes 0.150 ms against 0.100 ms in fp32, 1.50x slower" in slow and "batch 256" not in slow
    chans = next(x for x in data["report"]["illusions"] if x["code"] == "channels_not_multiple_of_8")["message"]
    assert "conv1: 13" in chans and "fc" not in chans


def test_images_are_valid_pngs(written) -> None:
    from PIL import Image

    _paths, html = written
    imgs = _images(html)
    # size, latency, per-layer (prune, int8), training curves, sensitivity
    assert len(imgs) == 6, len(imgs)
    for raw in imgs:
        assert raw.startswith(PNG_MAGIC)
        im = Image.open(io.BytesIO(raw))
        im.verify()
        assert im.size[0] >= 300 and im.size[1] >= 150


def test_json_and_markdown_carry_the_same_numbers(written, fake_run) -> None:
    paths, _html = written
    data = json.loads(paths.json.read_text())
    assert data["threads"] == 2  # top-level keys of the input report.json are kept
    st = data["stages"]
    assert [s["stage"] for s in st] == ["teacher", EVIL, "int8 onnx", "fake int4"]
    assert [s["dir"] for s in st] == ["01-train", "02-prune", "03-quantize", "04-qat"]
    assert st[1]["vs_first"]["nonzero_params"] == pytest.approx(0.5)
    assert st[1]["accuracy_delta_pt"] == pytest.approx(-1.0)
    assert st[2]["bytes_onnx_int8"] == 120_000 and "bytes_onnx_int8" not in st[2]["vs_first"]  # stage 1 has none
    assert st[2]["vs_first"]["latency:onnxruntime:256"] == pytest.approx(0.75)
    assert st[2]["bytes_onnx_deployed"] == 120_000 and "bytes_onnx_deployed" in st[2]["pareto"]
    assert [c["epoch"] for c in st[0]["curves"]] == [1, 2, 3, 4, 5] and st[0]["curves"][-1]["val_accuracy"] == 0.95
    assert data["report"]["pareto"]["bytes_safetensors"] == ["teacher"]
    md = paths.markdown.read_text()
    assert "| # | stage | kind | accuracy |" in md
    assert "| 2 | &lt;script&gt;alert(1)&lt;/script&gt; | prune | 96.00% (-1.00 pt) | 100,000 (×1) | 50,000 (×0.5) | 400,120 (×1) |" in md
    assert "<script" not in md
    for x in data["report"]["illusions"]:
        assert md_escape(x["message"]) in md


def test_report_reads_its_own_output_again(written, fake_run, tmp_path) -> None:
    paths, _ = written
    first = json.loads(paths.json.read_text())
    again = write_report(fake_run, out=tmp_path / "r2" / "again.html", plots=False)
    assert again.html.name == "again.html" and again.markdown.name == "again.md" and again.json.name == "again.json"
    second = json.loads(again.json.read_text())
    assert second["report"]["illusions"] == first["report"]["illusions"]
    assert [s["vs_first"] for s in second["stages"]] == [s["vs_first"] for s in first["stages"]]


def test_demo_layout_and_unfinished_stage(tmp_path) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "checkpoint").mkdir()
    (teacher / "checkpoint" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.8}\n{"epoch": 2, "tr')
    rows = [_row("teacher", "train", 0.9, 1000, 1000, 4000, 4100, {"torch": {"1": {"p50_ms": 0.2, "p90_ms": 0.3}}}),
            _row("student", "distill", 0.88, 200, 200, 900, 1000, {"torch": {"1": {"p50_ms": 0.1}}})]
    rows[0]["artifact"] = str(teacher)
    (tmp_path / "report.json").write_text(json.dumps({"stages": rows}))
    run = load_run(tmp_path)
    assert run.layout == "demo" and [s.name for s in run.stages] == ["teacher", "student"]
    assert run.stages[0].latency == {"torch": {1: 0.2}} and len(run.stages[0].curves) == 1
    assert any("not a JSON line" in w for w in run.warnings)
    paths = write_report(tmp_path / "report.json", plots=False)
    html = paths.html.read_text()
    assert "None detected" in html and "data:image/png" not in html

    runner = tmp_path / "runner"
    _stage(runner, "01-a", _row("a", "train", 0.9, 10, 10, 40, 41, {}), done=False)
    (runner / "report.json").write_text(json.dumps({"stages": [{"dir": "01-a", "started": "t0"}], "seed": 3}))
    rep = load_run(runner)
    assert rep.stages[0].done is False and "did not finish" in rep.warnings[0]
    out = json.loads(write_report(runner, plots=False).json.read_text())
    assert out["seed"] == 3 and out["stages"][0]["started"] == "t0" and out["stages"][0]["done"] is False
    with pytest.raises(InputFileError, match="nothing to report"):
        load_run(tmp_path / "runner" / "01-a")


# -- detectors on their own ---------------------------------------------------------------------
def _s(i: int, name: str, **row) -> Stage:
    from condense.report.data import normalize_latency

    st = Stage(index=i, name=name, row=row, kind=row.get("kind"))
    st.latency = normalize_latency(row.get("latency_ms"))
    return st


def test_detectors() -> None:
    base = _s(0, "base", params=100, nonzero_params=100, bytes_safetensors=400, bytes_onnx=420)
    smaller = _s(1, "pruned", kind="prune", params=100, nonzero_params=50, bytes_safetensors=250, bytes_onnx=260)
    assert masks_not_removed(smaller, base) is None  # zeros really removed from the files
    flagged = _s(1, "masked", kind="prune", params=100, nonzero_params=100, bytes_safetensors=300, masked=True)
    flagged.flags["masked"] = True
    assert "still carries pruning masks" in masks_not_removed(flagged, base).message

    fact = _s(1, "lowrank", kind="factorize", params=120, nonzero_params=120, bytes_safetensors=480, bytes_onnx=500)
    x = not_smaller_on_disk(fact, base, "factorize")
    assert x is not None and "none of its files is smaller" in x.message and "400 bytes" in x.message
    assert not_smaller_on_disk(fact, base, "finetune") is None  # not a compressing stage

    fq = _s(1, "q", kind="quantize", bytes_safetensors=400)
    assert fake_quant_not_converted(fq, base, "quantize") is not None
    export = _s(2, "export", kind="export", bytes_safetensors=400)
    export.bytes_onnx_int8 = 120
    assert fake_quant_not_converted(fq, base, "quantize", [export]) is None  # converted by a later stage
    fq.bytes_onnx_int8 = 120
    assert fake_quant_not_converted(fq, base, "quantize") is None

    pair = _s(1, "q2", kind="quantize", latency_ms={"onnxruntime": {"1": 0.1}, "onnxruntime_int8": {"1": 0.3}})
    assert "0.300 ms against 0.100 ms" in int8_slower(pair, base, True).message
    vs_prev = _s(1, "q3", kind="quantize", latency_ms={"onnxruntime": {"1": 0.05, "64": 4.0}})
    vs_prev.bytes_onnx_int8 = 100
    base.latency = {"onnxruntime": {1: 0.1, 64: 2.0}}
    msg = int8_slower(vs_prev, base, True).message
    assert "at batch 64 it takes 4.000 ms against 2.000 ms" in msg and "batch 1 " not in msg

    cut = _s(1, "cut", kind="prune")
    cut.edits = [{"kind": "prune_channels", "params": {"groups": [{"root": "conv", "size": 32, "keep": list(range(12))},
                                                                   {"root": "conv2", "size": 32, "keep": list(range(16))}]}}]
    msg = channels_not_multiple_of_8(cut, base).message
    assert "conv: 12" in msg and "conv2" not in msg and "(16)" in msg

    # what the runner writes: no per_layer in the row, bits and channels in the edit log
    from condense.report.data import per_layer_from_edits

    assert per_layer_from_edits(cut.edits + [
        {"kind": "quantize_static", "params": {"layers": {"conv": {"weight_bits": 8}}}},
        {"kind": "qat", "params": {"layers": {"fc": {"bits": 4, "act_bits": 8}}}}]) == {
        "conv": {"channels": 12, "bits": 8}, "conv2": {"channels": 16}, "fc": {"bits": 4}}

    # a sibling student is compared with the teacher, not with the student trained alone
    teacher = _s(0, "teacher", kind="train", bytes_safetensors=1000)
    alone = _s(1, "student alone", bytes_safetensors=100)
    kd = _s(2, "student distilled", kind="distill", bytes_safetensors=100)
    assert detect([teacher, alone, kd]) == []


# -- headless Chromium --------------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium not found at /usr/bin/chromium (Debian package `chromium`; .ci/run installs it)",
)


def _chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env={"HOME": str(tmp), "PATH": "/usr/bin:/bin"})


@needs_chromium
def test_chromium_screenshot_is_not_blank_and_shows_plots(written, tmp_path) -> None:
    from PIL import Image

    paths, _ = written
    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, paths.html.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1200,2000")
    assert shot.exists(), f"no screenshot; chromium exit {res.returncode}: {res.stderr[-2000:]}"
    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 2000)
    colors = im.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, "screenshot looks blank"
    white = next((n for n, c in colors if c == (255, 255, 255)), 0)
    assert white < 0.95 * im.size[0] * im.size[1]
    # matplotlib's first colour (#1f77b4) fills stage 1's markers; the page's CSS never uses it
    blue = sum(n for n, (r, g, b) in colors if abs(r - 31) <= 3 and abs(g - 119) <= 3 and abs(b - 180) <= 3)
    assert blue >= 30, "no plot pixels in the screenshot"


@needs_chromium
def test_chromium_decodes_every_image(written, tmp_path) -> None:
    """A copy of the report with a counting script (the report itself has none, and its CSP forbids
    scripts) sets the title to 'loaded/total' after the load event; --dump-dom prints the DOM."""
    paths, html = written
    n = len(_images(html))
    probe = (
        "<script>window.addEventListener('load', function () {"
        " var im = Array.from(document.images);"
        " document.title = 'IMG ' + im.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length"
        " + '/' + im.length; });</script>"
    )
    copy = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html).replace("</body>", probe + "</body>")
    page = tmp_path / "probe.html"
    page.write_text(copy, encoding="utf-8")
    res = _chromium(tmp_path, page.as_uri(), "--dump-dom", "--virtual-time-budget=5000")
    m = re.search(r"<title>IMG (\d+)/(\d+)</title>", res.stdout)
    assert m, f"probe did not run; chromium exit {res.returncode}: {res.stderr[-2000:]}"
    assert (int(m.group(1)), int(m.group(2))) == (n, n)


def test_chromium_binary_is_usable_or_absent() -> None:
    """Guard against a broken install being skipped silently: if the binary exists it must run."""
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not found at /usr/bin/chromium (Debian package `chromium`)")
    out = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Chromium" in out.stdout
