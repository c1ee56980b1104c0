#!/usr/bin/env python3
"""Gathers the figures of a scripts/gpu-check.sh run (its $OUT folder) into one JSON object:
steps and exit codes, the device check, the 2,000-step run's test PSNR, training images/s of
ours and the PyTorch reference with their ratios, the data-parallel (NCCL) probes, sampling
and FID-feature rates, peak GPU memory. Standard library only (it runs on the GPU machine).

  python3 scripts/gpu_check_summary.py OUT_DIR > OUT_DIR/summary.json
"""
import json
import os
import sys


def json_lines(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return rows


def last(path):
    rows = json_lines(path)
    return rows[-1] if rows else None


def probe_expected(scenario, n, row):
    """What vq-dist-probe's rank holds after SCENARIO in a world of n: rank r starts with
    a = [r + 1, 2r, 1], b = [10r, 5] (vq-dist-probe.rs)."""
    if scenario == "sum":
        return [n * (n + 1) / 2, n * (n - 1), n, 5.0 * n * (n - 1), 5.0 * n]
    if scenario == "broadcast":
        return [1.0, 0.0, 1.0, 0.0, 5.0]
    # A barrier changes nothing: each rank keeps its own values.
    r = row.get("rank", -1)
    return [r + 1.0, 2.0 * r, 1.0, 10.0 * r, 5.0]


def main():
    out = sys.argv[1]
    p = lambda name: os.path.join(out, name)
    steps = json_lines(p("steps.jsonl"))
    summary = {
        "machine": open(p("machine.txt")).read().strip().splitlines() if os.path.exists(p("machine.txt")) else None,
        "steps": steps,
        "failed_steps": [s["step"] for s in steps if s.get("rc", 0) != 0 or s.get("status") == "skipped"],
        "device": last(p("device.out")),
    }
    tests = {}
    for s in steps:
        if s["step"].startswith("test-"):
            passed = failed = None
            try:
                for line in open(p(s["step"] + ".out")):
                    if line.startswith("test result:"):
                        words = line.replace(";", "").split()
                        passed = int(words[words.index("passed") - 1])
                        failed = int(words[words.index("failed") - 1])
            except (OSError, ValueError):
                pass
            tests[s["step"][5:]] = {"rc": s.get("rc"), "passed": passed, "failed": failed}
    summary["tests"] = tests
    train = None
    if os.path.exists(p("train-summary.json")):
        train = json.load(open(p("train-summary.json")))
    summary["train"] = train
    bench = []
    for batch in (32, 128, 512):
        row = {"batch_size": batch}
        for key in ("ours-f32", "reference-f32", "ours-bf16", "reference-bf16cl"):
            r = last(p(f"bench-{key}-b{batch}.out"))
            row[key] = r["images_per_s"] if r else None
            if r and r.get("peak_memory_bytes"):
                row[key + "-peak-bytes"] = r["peak_memory_bytes"]
        if row["ours-f32"] and row["reference-f32"]:
            row["ratio_f32"] = row["ours-f32"] / row["reference-f32"]
        if row["ours-bf16"] and row["reference-bf16cl"]:
            row["ratio_bf16_vs_reference_bf16_channels_last"] = row["ours-bf16"] / row["reference-bf16cl"]
        best_ours = max(filter(None, [row["ours-f32"], row["ours-bf16"]]), default=None)
        best_ref = max(filter(None, [row["reference-f32"], row["reference-bf16cl"]]), default=None)
        if best_ours and best_ref:
            row["ratio_best_vs_best"] = best_ours / best_ref
        bench.append(row)
    summary["training_images_per_s"] = bench
    dist = {}
    for s in steps:
        if s["step"].startswith("dist-") and not s["step"].startswith("dist-train"):
            rows = json_lines(p(s["step"] + ".out"))
            dist[s["step"]] = {
                "rc": s.get("rc"),
                "ranks": rows,
                "values_ok": bool(rows) and all(
                    r.get("values") == probe_expected(s["step"].rsplit("-", 1)[1], len(rows), r)
                    for r in rows
                ),
            }
    if os.path.exists(p("dist-train-distributed.json")):
        dist["train"] = {
            "distributed": json.load(open(p("dist-train-distributed.json"))),
            "summary": json.load(open(p("dist-train-summary.json")))
            if os.path.exists(p("dist-train-summary.json")) else None,
        }
    summary["data_parallel"] = dist
    summary["sampling"] = json_lines(p("sampling.out")) or open(p("sampling.out")).read().splitlines() if os.path.exists(p("sampling.out")) else None
    summary["fid_features"] = json_lines(p("fid-features.out"))
    peak = None
    try:
        for line in open(p("gpu-memory.csv")):
            parts = line.strip().split(",")
            if len(parts) == 2:
                mib = float(parts[1])
                peak = mib if peak is None else max(peak, mib)
    except (OSError, ValueError):
        pass
    summary["peak_gpu_memory_mib"] = peak
    json.dump(summary, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
