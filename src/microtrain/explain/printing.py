"""Print a StepReport the way the notebooks print tensors: full values when small, statistics when large."""

import torch
from rich.console import Console

from microtrain.explain.step import StepReport

FULL_TENSOR_LIMIT = 64  # elements


def show(tensor: torch.Tensor) -> str:
    if tensor.numel() <= FULL_TENSOR_LIMIT:
        body = torch.round(tensor.double(), decimals=4).tolist()
        return str(body)
    t = tensor.double()
    return f"shape {list(t.shape)}  mean {t.mean():.4g}  std {t.std():.4g}  min {t.min():.4g}  max {t.max():.4g}  norm {t.norm():.4g}"


def print_report(report: StepReport, console: Console) -> None:
    console.print(f"one step on the first batch ({report.batch_rows} rows) with {report.optimizer}")
    console.print(f"prediction (forward): {show(report.prediction)}")
    console.print(f"loss before the step: {report.loss:.6g}")
    if report.clipping:
        console.print(f"clipping: {report.clipping}", markup=False)
    for name, before in report.params_before.items():
        console.print(f"\n[bold]{name}[/bold]  shape {list(before.shape)}")
        console.print(f"  before  {show(before)}")
        console.print(f"  grad    {show(report.grads[name])}")
        if name in report.closed_form_grads:
            console.print(f"  grad by closed form  {show(report.closed_form_grads[name])}")
        console.print(f"  update  {show(report.params_after[name] - before)}")
        console.print(f"  after   {show(report.params_after[name])}")
        rule = report.rules[name]
        if rule is None:
            console.print("  rule    no rule known for this optimizer; the update above is after − before")
        else:
            verdict = "holds" if rule.holds else "[red]DOES NOT HOLD[/red]"
            console.print(f"  rule    {rule.rule}: {verdict} (max |diff| {rule.max_abs_diff:.2e})")
    console.print(f"\nloss after the step:  {report.loss_after:.6g}")
    if report.chain:
        console.print("\nthe chain rule, layer by layer (backward, from the forward values):")
        for term in report.chain:
            console.print(f"  {term.name:<28} {show(term.value)}", markup=False)
            console.print(f"  {'':<28} = {term.formula}", markup=False)
        console.print(f"  parameter gradients from the chain against autograd: max |diff| {report.chain_vs_autograd:.2e}")
    if report.gradcheck_skipped:
        console.print(f"\ngradient check: {report.gradcheck_skipped}")
    if report.gradcheck:
        console.print("\ngradient check: autograd vs central differences (float64, h=1e-6)")
        for check in report.gradcheck:
            verdict = "pass" if check.passed else "[red]FAIL[/red]"
            console.print(f"  {check.name:<12} max abs error {check.max_abs_error:.2e}  rel error {check.rel_error:.2e}  {verdict}")
