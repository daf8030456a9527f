#!/usr/bin/env bash
# The prepared GPU check: the CUDA tests, then the benchmark on the GPU, in under 6 minutes on one GPU.
#   bash scripts/gpu_check.sh [output folder]      (default: $OUT if set, else ./gpu_check)
# Installs nothing: it uses the project's .venv when there is one, else the python on PATH.
# Writes gpu_check.json and gpu_check.md (tests, steps/s, us per step, speed-ups against the plain
# PyTorch loop, peak GPU memory, GPU name) into the output folder. Without a GPU it prints one
# line and exits 0 having run nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU is visible; nothing run"
    exit 0
fi
DEST="${1:-${OUT:-gpu_check}}"
mkdir -p "$DEST"
started=$(date +%s)
# 1. the CUDA tests (200 s at most), with a JUnit report to count them
# (addopts reset: the CUDA tests are one module, and a Python without pytest-xdist must still run them)
timeout 200 "$PY" -m pytest -o addopts="-ra --strict-markers" -m cuda -q -p no:cacheprovider --junitxml="$DEST/cuda_tests.xml" 2>&1 \
    | tail -25 | tee "$DEST/cuda_tests.txt"
# 2. the benchmark on the GPU (150 s at most), sides alternating: the plain loop, microtrain eager, with
#    inspection off, and compiled (CUDA graphs), for the tiny MLP and the compute-bound 256->1024->256 one
timeout 150 "$PY" scripts/benchmark.py --device cuda --cases 1,2 --repeats 2 --startup-repeats 0 --command-repeats 0 \
    --stacked-repeats 0 --inspection-repeats 0 --json "$DEST/benchmark.json" 2>&1 | tail -30 | tee "$DEST/benchmark.txt"
"$PY" - "$DEST" "$started" <<'EOF'
import json, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

dest, started = Path(sys.argv[1]), float(sys.argv[2])
props = torch.cuda.get_device_properties(0)
result = {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
          "cuda": torch.version.cuda, "tests": None, "benchmark": [], "seconds": None}
junit = dest / "cuda_tests.xml"
if junit.is_file():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_names"] = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    result["tests"] = counts
bench = dest / "benchmark.json"
if bench.is_file():
    for case in json.loads(bench.read_text())["cases"]:
        rates = case["median_steps_per_s"]
        result["benchmark"].append({
            "case": case["case"], "steps_per_s": rates,
            "us_per_step": {k: 1e6 / v for k, v in rates.items()},
            "speedup_vs_plain": {k: v / rates["plain"] for k, v in rates.items() if k != "plain"},
            "gpu_memory_peak_mib": case["gpu_memory_peak_mib"], "compile_seconds": case.get("compile_seconds"),
        })
result["seconds"] = round(time.time() - started, 1)
(dest / "gpu_check.json").write_text(json.dumps(result, indent=2))
lines = [f"GPU check on {result['gpu']} ({result['gpu_memory_gib']} GiB), torch {result['torch']}, CUDA {result['cuda']}, "
         f"{result['seconds']} s", ""]
t = result["tests"]
lines.append(f"CUDA tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"
             + (f" (failed: {', '.join(t['failed_names'])})" if t["failed_names"] else "") if t else "CUDA tests: no report")
lines += ["", "| case | side | steps/s | us/step | vs plain loop | peak GPU MiB |", "|---|---|---|---|---|---|"]
for case in result["benchmark"]:
    for side, rate in case["steps_per_s"].items():
        ratio = case["speedup_vs_plain"].get(side)
        peak = case["gpu_memory_peak_mib"]
        lines.append(f"| {case['case']} | {side} | {rate:.0f} | {case['us_per_step'][side]:.0f} | "
                     f"{'1' if ratio is None else f'{ratio:.2f}'}x | {'' if peak is None else f'{peak:.0f}'} |")
(dest / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"written: {dest / 'gpu_check.json'}, {dest / 'gpu_check.md'}")
EOF
