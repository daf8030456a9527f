"""Draw report.png for a run or a sweep: python scripts/report.py <folder> (the same as microtrain-report)."""

from microtrain.cli import report_main

if __name__ == "__main__":
    report_main()
