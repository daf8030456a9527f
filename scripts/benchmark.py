"""Measure microtrain against a plain PyTorch loop: python scripts/benchmark.py [--repeats 5] [--json out.json]"""

import argparse
import json

from microtrain.benchmark import CASES, markdown_table, measure, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per case (medians are reported)")
    parser.add_argument("--json", default="benchmark.json", help="where to write the raw numbers")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers, e.g. 0,1 (default all)")
    args = parser.parse_args()
    chosen = CASES if args.cases == "all" else [CASES[int(i)] for i in args.cases.split(",")]
    results = [summarize(measure(case, args.repeats, ["device=cpu"])) for case in chosen]
    print(markdown_table(results))
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
