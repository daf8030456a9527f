"""Every bash command of the README and the docs works when pasted: each fenced ``bash`` block is
read by bash itself (its quoting, its redirections), and the commands that run here in seconds
run, in a folder of their own, their placeholders (a run folder, a sweep folder, your table)
filled from a real run this test makes first. The ones it skips say why."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests_helpers import ROOT, run_in_process

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Why a command is not run here (the first pattern it matches decides).
SKIPPED = {
    r"pip install|python3 -m venv": "sets up an environment (minutes; CI does it)",
    r"python -m pytest|^ruff |^mypy|&& mypy|mkdocs build": "CI runs it (.ci/run)",
    r"mkdocs serve|^tensorboard ": "starts a server (the TensorBoard server is tested in test_report_and_tensorboard.py)",
    r"slurm|device=cuda|gpus_per_node": "needs a SLURM cluster or a GPU",
    r"trainer.devices=2|num_nodes": "several processes or nodes",
    r"hparams_search=optuna|n_trials": "a search of many trials (test_sweeps.py runs a 3-trial one)",
    r"hydra/launcher=joblib": "parallel worker processes (test_sweeps.py runs them)",
    r"loop.compile=true": "compiles for several seconds (test_compiled.py)",
    r"seed=range\(0,16\)": "a 1,024-job sweep of ~50 s (test_stacked.py runs small stacked sweeps, test_cuda.py 1,024 jobs)",
}
PLACEHOLDER_RUN = re.compile(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d")
PLACEHOLDER_SWEEP = re.compile(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d")


def blocks() -> list[tuple[str, list[str]]]:
    """(where, its commands) for every bash block: a command per line, continuations joined, comments left out."""
    found = []
    for doc in DOCS:
        for number, block in enumerate(re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S)):
            lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
            commands = [line for line in lines if line and not line.startswith("#")]
            found.append((f"{doc.name}#{number + 1}", commands))
    return found


def why_skipped(command: str) -> str:
    return next((why for pattern, why in SKIPPED.items() if re.search(pattern, command)), "")


def argv_of(command: str, cwd: Path) -> list[str]:
    """The arguments bash passes the command (quotes removed, comments dropped), read by bash itself."""
    words = 'for word in "$@"; do printf "%s\\0" "$word"; done'
    done = subprocess.run(["bash", "-c", f"args() {{ {words}; }}; args {command}"], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, f"bash cannot read: {command}\n{done.stderr}"
    return done.stdout.split("\0")[:-1]


def test_every_block_is_read_and_each_skip_has_a_reason():
    found = blocks()
    assert len(found) >= 15 and all(commands for _, commands in found)
    skipped = {command: why_skipped(command) for _, commands in found for command in commands if why_skipped(command)}
    ran = [command for _, commands in found for command in commands if not why_skipped(command)]
    assert len(ran) >= 15, ran  # most of what the docs show runs here
    print("\n".join(f"skipped: {command[:90]}  ({why})" for command, why in skipped.items()))


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory) -> dict[str, Path]:
    """A table (houses.csv, new.csv), a run trained on it, and a small stacked sweep."""
    folder = tmp_path_factory.mktemp("placeholders")
    rows = ["area,rooms,city,price"] + [
        f"{50 + 7 * i},{1 + i % 4},{('north', 'south', 'east')[i % 3]},{100 + 3 * i + (i % 4) * 10}" for i in range(60)
    ]
    (folder / "houses.csv").write_text("\n".join(rows) + "\n")
    (folder / "new.csv").write_text("area,rooms,city\n80,2,north\n120,3,east\n")
    run, sweep = folder / "run", folder / "sweep"
    for args in (
        ["data=csv", f"data.path={folder / 'houses.csv'}", "data.target=price", "trainer.max_epochs=2", f"hydra.run.dir={run}"],
        ["-m", "hydra/launcher=stacked", "optimizer.lr=0.01,0.1", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"],
    ):
        assert subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], capture_output=True).returncode == 0
    return {"folder": folder, "run": run, "sweep": sweep}


def run_command(command: str, cwd: Path, capsys) -> tuple[int, str]:
    """A shell command through bash; ``python scripts/x.py`` and ``microtrain-*`` in this process
    (bash reads their arguments): each costs its work, not another import of torch and Lightning."""
    words = command.split()
    script = {
        "microtrain-train": "train.py",
        "microtrain-explain": "explain_step.py",
        "microtrain-predict": "predict.py",
        "microtrain-report": "report.py",
    }.get(words[0])
    if words[0] == "python" and words[1].startswith("scripts/"):
        script, command = words[1].removeprefix("scripts/"), " ".join(words[2:])
    elif script:
        command = " ".join(words[1:])
    else:
        done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stderr
    args = argv_of(command, cwd)
    time.sleep(1 - time.time() % 1)  # runs name their folders by the second: pasted by hand, seconds apart
    code, _, err = run_in_process(capsys, script, *args, cwd=cwd)
    return code, err


@pytest.mark.slow
@pytest.mark.parametrize("where, commands", blocks(), ids=[where for where, _ in blocks()])
def test_the_commands_of_the_docs_run(where, commands, placeholders, tmp_path, capsys):
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    for name in ("houses.csv", "new.csv"):
        (tmp_path / name).write_text((placeholders["folder"] / name).read_text())
    runnable = [c for c in commands if not why_skipped(c)]
    if not runnable:
        pytest.skip("; ".join(sorted({why_skipped(c) for c in commands})))
    for command in runnable:
        command = PLACEHOLDER_RUN.sub(str(placeholders["run"]), PLACEHOLDER_SWEEP.sub(str(placeholders["sweep"]), command))
        code, err = run_command(command, tmp_path, capsys)
        assert code == 0, f"{where}: {command}\n{err[-1500:]}"
