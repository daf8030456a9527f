"""Measure microtrain against a plain PyTorch loop: python scripts/benchmark.py [--repeats 5] [--json out.json]"""

import argparse
import json
import platform

import torch

from microtrain.console import quiet_libraries
from benchmark_inspection import inspection_check, inspection_line
from benchmark_stacked import stacked_check, stacked_table
from benchmark_harness import CASES, command_check, command_line, compiled_table, markdown_table, measure, summarize
from benchmark_startup import startup, startup_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per case (medians are reported)")
    parser.add_argument("--json", default="benchmark.json", help="where to write the raw numbers")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers, e.g. 0,1 (default all; none: only the stacked case)")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where both sides train (default: cuda when a GPU is visible)",
    )
    parser.add_argument("--startup-repeats", type=int, default=5, help="launches of each script for the start-up time (0 = skip)")
    parser.add_argument(
        "--command-repeats", type=int, default=3, help="repeats of scripts/train.py on its default data against the plain loop (0 = skip)"
    )
    parser.add_argument(
        "--stacked-repeats",
        type=int,
        default=1,
        help="repeats of the 64-job stacked sweep case against Hydra's basic and joblib launchers (0 = skip; ~5 min each)",
    )
    parser.add_argument(
        "--inspection-repeats",
        type=int,
        default=3,
        help="repeats of the default model=mlp run and a 100 000-step run with inspection on and off (0 = skip)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the loop.compile=true side (seconds of compiling per case)")
    args = parser.parse_args()
    import lightning  # noqa: F401 -- imported first: importing it resets its loggers' level

    quiet_libraries()  # no "GPU available: ..." lines for every run measured
    chosen = CASES if args.cases == "all" else [] if args.cases == "none" else [CASES[int(i)] for i in args.cases.split(",")]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible; use --device cpu")
    results = [summarize(measure(case, args.repeats, args.device, not args.no_compile)) for case in chosen]
    if results:
        print(markdown_table(results))
    if results and not args.no_compile:
        print(compiled_table(results))
    for r in results:
        if r["gpu_memory_peak_mib"] is not None:
            print(f"{r['case']}: GPU memory peak {r['gpu_memory_peak_mib']:.0f} MiB")
    start = startup(args.startup_repeats) if args.startup_repeats else None
    if start:
        print(startup_line(start))
    command = command_check(args.command_repeats, args.device) if args.command_repeats else None
    if command:
        print(command_line(command))
    compiled_command = None
    if args.command_repeats and not args.no_compile:
        compiled_command = command_check(args.command_repeats, args.device, extra=("loop.compile=true",))
        print(command_line(compiled_command))
    inspection = inspection_check(args.inspection_repeats, args.device) if args.inspection_repeats else None
    if inspection:
        print(inspection_line(inspection))
    stacked = stacked_check(args.stacked_repeats, args.device) if args.stacked_repeats else None
    if stacked:
        print(stacked_table(stacked))
    with open(args.json, "w") as handle:
        json.dump(
            {
                "machine": machine,
                "cases": results,
                "startup": start,
                "command": command,
                "compiled_command": compiled_command,
                "stacked": stacked,
                "inspection": inspection,
            },
            handle,
            indent=2,
        )
    print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
