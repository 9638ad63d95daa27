"""Does a lazy image folder keep memory flat as the folder grows? One training epoch per size.

Writes N small PNG images (32x32 RGB, 10 classes: a class colour plus noise) in the image-folder
layout for each size (generated with a process pool; kept in --workdir and reused), then, for
each size, in a FRESH Python process: loads `imagefolder` with `lazy=True` (default
verify='header'), builds the zoo CNN and trains ONE epoch with `condense.train_model`
(batch 128, `num_workers` DataLoader worker processes). Recorded per run:

- main_peak_rss_mib: `getrusage(RUSAGE_SELF).ru_maxrss` of that process (the training process);
- workers_peak_rss_mib: `getrusage(RUSAGE_CHILDREN).ru_maxrss` after the epoch: the largest
  peak RSS of any terminated, waited-for child, i.e. of one DataLoader worker (workers are
  joined when the epoch's loader ends). It is the largest single worker, not a sum, and it
  counts the pages a worker shares with the main process after fork (torch's libraries) too;
- images_per_s: training images of the epoch (steps x batch; drop_last) / epoch wall time,
  timed by a callback from the epoch's start to its end (no validation);
- load_s: listing + header check of every file + normalisation sample, i.e. `load_dataset`.

    python benchmarks/data_scale.py [--sizes 20000 80000] [--eager-sizes 20000] [--repeats 2] [--workdir DIR]

Target: main-process peak RSS at 80k within 10 % of 20k, throughput no lower. The machine may be
shared: runs alternate sizes over --repeats rounds, the check compares each size's best
throughput and largest peak RSS, and every row records the load average before and after it.
Results: benchmarks/results/data_scale.json (with machine info, cpu count, load average).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

CLASSES = 10
SIZE = 32


def _write_chunk(job: tuple[str, int, int, int]) -> int:
    from PIL import Image

    root, label, start, stop = job
    rng = np.random.default_rng([label, start])
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 151) % 256], dtype=np.int16)
    folder = Path(root) / f"class{label}"
    for i in range(start, stop):
        noise = rng.integers(-48, 49, (SIZE, SIZE, 3), dtype=np.int16)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
    return stop - start


def generate(root: Path, n: int, procs: int) -> float:
    """Write n PNGs under root/class<k>/ (reused when a complete set is there). Returns seconds."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(n):
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    per = [n // CLASSES + (k < n % CLASSES) for k in range(CLASSES)]
    jobs = []
    for label, count in enumerate(per):
        (root / f"class{label}").mkdir(parents=True)
        jobs += [(str(root), label, s, min(s + 500, count)) for s in range(0, count, 500)]
    t0 = time.perf_counter()
    with Pool(procs) as pool:
        written = sum(pool.imap_unordered(_write_chunk, jobs))
    assert written == n
    marker.write_text(str(n))
    return time.perf_counter() - t0


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def child(root: str, lazy: bool, workers: int, batch_size: int, threads: int | None) -> dict:
    """One measurement in this (fresh) process; returns the row."""
    import torch

    import condense
    from condense.data import load_dataset
    from condense.train.callbacks import Callback

    class EpochTimer(Callback):
        def on_epoch_begin(self, state) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, state) -> None:
            self.seconds = time.perf_counter() - self.t0

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    splits = load_dataset("imagefolder", root=root, image_size=SIZE, lazy=lazy)
    load_s = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    model = condense.build_model("cnn", in_channels=3, image_size=SIZE, num_classes=CLASSES)
    timer = EpochTimer()
    cfg = condense.TrainConfig(epochs=1, batch_size=batch_size, num_workers=workers, progress="off", threads=threads)
    result = condense.train_model(model, splits.train, cfg, callbacks=[timer])
    images = result.steps * batch_size
    return {
        "images": sum(len(getattr(splits, s)) for s in ("train", "val", "test")),
        "mode": "lazy" if lazy else "eager",
        "train_images": len(splits.train),
        "epoch_images": images,
        "load_s": round(load_s, 2),
        "epoch_s": round(timer.seconds, 2),
        "images_per_s": round(images / timer.seconds, 1),
        "main_peak_rss_mib": _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "workers_peak_rss_mib": _mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
        "rss_after_imports_mib": _mib(rss_import),
        "peak_rss_after_load_mib": _mib(rss_loaded),
        "num_workers": workers if lazy else 0,
        "torch_threads": torch.get_num_threads(),
        "final_train_loss": round(float(result.history[-1]["train_loss"]), 4),
    }


def machine() -> dict:
    mem = ""
    with contextlib.suppress(OSError, StopIteration):
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    import torch

    from condense.core.cpu import cpu_record

    return {
        "cpu": cpu_record(), "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": mem.split(":", 1)[-1].strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000])
    ap.add_argument("--eager-sizes", type=int, nargs="*", default=[20_000],
                    help="sizes also run with the in-memory (eager) mode, for comparison")
    ap.add_argument("--workdir", default=None, help="where the images go (default: a temp folder, removed)")
    ap.add_argument("--workers", type=int, default=2, help="TrainConfig.num_workers")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None,
                    help="TrainConfig.threads (torch intra-op threads of the training process; default: torch's)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="rounds over all runs, alternating sizes; the check uses each size's best round")
    ap.add_argument("--gen-procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_scale.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, not args.eager, args.workers, args.batch_size, args.threads)))
        return

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="condense-data-scale-"))
    runs = ([(n, True) for n in args.sizes] + [(n, False) for n in args.eager_sizes]) * args.repeats
    rows, generated = [], {}
    try:
        for n in sorted(set(args.sizes) | set(args.eager_sizes)):
            generated[n] = round(generate(work / f"images{n}", n, args.gen_procs), 1)
            print(f"{n} images in {work / f'images{n}'} (generated in {generated[n]} s)", flush=True)
        for n, lazy in runs:
            load_before = os.getloadavg()
            cmd = [sys.executable, __file__, "--child", str(work / f"images{n}"), "--workers", str(args.workers),
                   "--batch-size", str(args.batch_size)] + ([] if lazy else ["--eager"])
            cmd += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["loadavg_before"] = [round(x, 2) for x in load_before]
            row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            rows.append(row)
            print(f"  {row['mode']:5s} {n:6d}: {row['images_per_s']:8.1f} img/s, main peak {row['main_peak_rss_mib']} MiB, "
                  f"worker peak {row['workers_peak_rss_mib']} MiB", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    check = {}
    lazy_sizes = sorted({r["images"] for r in rows if r["mode"] == "lazy"})
    if len(lazy_sizes) >= 2:
        def best(n: int, key: str, pick=max) -> float:
            return pick(r[key] for r in rows if r["mode"] == "lazy" and r["images"] == n)

        small, big = lazy_sizes[0], lazy_sizes[-1]
        rss = best(big, "main_peak_rss_mib") / best(small, "main_peak_rss_mib")  # max over rounds, each
        wrss = best(big, "workers_peak_rss_mib") / best(small, "workers_peak_rss_mib")
        speed = best(big, "images_per_s") / best(small, "images_per_s")  # best (least disturbed) round
        check = {"sizes": [small, big], "main_rss_ratio": round(rss, 4), "worker_rss_ratio": round(wrss, 4),
                 "throughput_ratio": round(speed, 4),
                 "median_main_rss_ratio": round(best(big, "main_peak_rss_mib", statistics.median)
                                                / best(small, "main_peak_rss_mib", statistics.median), 4),
                 "median_throughput_ratio": round(best(big, "images_per_s", statistics.median)
                                                  / best(small, "images_per_s", statistics.median), 4),
                 "target": "main peak RSS ratio <= 1.10 and throughput ratio >= 1.0 (largest vs smallest lazy size)",
                 "target_met": bool(rss <= 1.10 and speed >= 1.0)}
    result = {"machine": machine(), "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "generation_s": generated, "batch_size": args.batch_size, "threads": args.threads,
              "command": " ".join(["python", "benchmarks/data_scale.py", *sys.argv[1:]]), "rows": rows, "check": check}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    head = f"{'mode':5s} {'images':>7s} {'train':>6s} {'load s':>7s} {'epoch s':>8s} {'img/s':>8s} {'main MiB':>9s} {'worker MiB':>10s}"
    print(head)
    for r in rows:
        print(f"{r['mode']:5s} {r['images']:7d} {r['train_images']:6d} {r['load_s']:7.2f} {r['epoch_s']:8.2f} "
              f"{r['images_per_s']:8.1f} {r['main_peak_rss_mib']:9.1f} {r['workers_peak_rss_mib']:10.1f}")
    if check:
        print(json.dumps(check))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
