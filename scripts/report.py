"""Draw report.png for a run or a sweep from its TensorBoard logs: python scripts/report.py <folder>"""

import sys

from microtrain.errors import MicrotrainError


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    from microtrain.report import write_report

    try:
        print(f"report: {write_report(sys.argv[1])}")
    except MicrotrainError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
