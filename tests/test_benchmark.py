"""The benchmark measures the same math on both sides: the plain loop and microtrain agree bitwise."""

from dataclasses import replace

from microtrain.benchmark import CASES, markdown_table, measure, summarize


def test_benchmark_sides_train_identical_weights():
    case = replace(CASES[1], steps=(20, 60))
    result = summarize(measure(case, repeats=1))
    assert result["same_weights"] is True
    assert set(result["steps_per_s"]) == {"plain", "microtrain", "inspection_off"}
    assert result["ratio"] > 0 and result["samples_per_s"]["microtrain"] > 0
    table = markdown_table([result])
    assert "| MLP 3→64→1, batch 32 |" in table and "yes |" in table
