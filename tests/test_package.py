"""microtrain as an installed package: the wheel carries the configs, the console commands run
from any folder, and users add configs of their own with --config-dir."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests_helpers import ROOT, run_in_process

SRC = ROOT / "src" / "microtrain"


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"microtrain" + "".join(f".{part}" for part in p.parent.relative_to(SRC).parts) for p in SRC.rglob("__init__.py")}
    assert found | {"microtrain.conf", "hydra_plugins.microtrain_stacked"} == listed
    assert not (ROOT / "src" / "hydra_plugins" / "__init__.py").exists()  # a namespace package, as Hydra finds plugins


@pytest.mark.slow
def test_the_wheel_trains_from_another_folder_without_the_source_tree(tmp_path):
    """A non-editable install: the wheel unpacked alone on the path, run away from the checkout."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "wheel").glob("microtrain-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True, capture_output=True
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = "import microtrain, sys; print(microtrain.__file__); sys.argv[1:] = sys.argv[1:]; from microtrain.cli import train_main; train_main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "model=mlp", "trainer.max_epochs=1", "hydra.run.dir=run"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(str(tmp_path / "site"))  # the wheel's copy, not the checkout
    assert json.loads((work / "run" / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_console_commands_and_python_m_run_from_any_folder(tmp_path):
    bin_dir = Path(sys.executable).parent
    train = subprocess.run(
        [str(bin_dir / "microtrain-train"), "trainer.max_epochs=1", "hydra.run.dir=run"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "run" / "train.log").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    module = subprocess.run([sys.executable, "-m", "microtrain", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert module.returncode == 0 and "microtrain-train [group=option ...]" in module.stdout, module.stderr
    report = subprocess.run([str(bin_dir / "microtrain-report"), "run"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert report.returncode == 0 and (tmp_path / "run" / "report.png").is_file(), report.stderr
    for command in ("microtrain-explain", "microtrain-predict"):
        assert (bin_dir / command).is_file()


def test_users_add_their_own_configs_with_config_dir(capsys, tmp_path):
    mine = tmp_path / "my_configs"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "wide.yaml").write_text("defaults:\n  - mlp\n  - _self_\nhidden: 8\nactivation: tanh\n")
    code, out, err = run_in_process(
        capsys,
        "train.py",
        f"--config-dir={mine}",
        "model=wide",
        "trainer.max_epochs=1",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.enable_progress_bar=false",
    )
    assert code == 0, err
    assert "hidden=8" in out and "activation=tanh" in out


def test_no_tracked_file_over_1_mb_outside_the_readme_pictures():
    """No wheels, downloads or binaries committed by mistake (two wheels, 53 MB, once were)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    large = [
        name for name in tracked if name and not name.startswith("docs/images/") and (ROOT / name).is_file() and (ROOT / name).stat().st_size > 2**20
    ]
    assert not large and not [name for name in tracked if name.endswith(".whl")], large


def test_the_commands_import_torch_only_inside_the_start_up_pause():
    """``microtrain.cli`` itself imports no torch or Lightning: each command imports them inside
    the garbage collector's pause (``console.start_up_collection_paused``), which an import outside
    it, with the command module, skipped (a 64-job stacked sweep took ~0.45 s longer)."""
    code = "import sys, microtrain.cli, hydra_plugins.microtrain_stacked.stacked_launcher; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_start_up_defers_scipy_signal_and_a_later_import_gets_the_real_module():
    """torchmetrics imports ``scipy.signal`` (0.6 s) with Lightning only to alias ``hamming``:
    the start-up pause hands it a stand-in, so no command pays for it. A read of anything else
    from the stand-in, during the start-up or after it, gives scipy's own; so does a later import."""
    code = """
import sys
from microtrain.console import start_up_collection_paused
with start_up_collection_paused():
    import lightning.pytorch, torchmetrics
    import scipy.signal as during
    deferred_seen = type(sys.modules["scipy.signal"]).__name__
print("after start-up:", "scipy.signal" in sys.modules, deferred_seen)
assert [round(x, 6) for x in during.hamming(3)] == [0.08, 1.0, 0.08]  # what torchmetrics checks for, scipy's own
assert during.butter(2, 0.3)[0].shape == (3,)  # anything else read from the stand-in: scipy's own function
import scipy, scipy.signal
assert type(scipy.signal).__name__ == "module" and scipy.signal is sys.modules["scipy.signal"] and scipy.signal.butter is during.butter
print("real:", scipy.signal.windows.hamming(3).tolist())
"""
    submodule = """
import sys
from microtrain.console import start_up_collection_paused
with start_up_collection_paused():
    import lightning.pytorch
    from scipy.signal.windows import hamming  # a submodule imported during the start-up: the real one's
print("real:", hamming(3).tolist(), type(sys.modules["scipy.signal"]).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "after start-up: False _DeferredSignal" in done.stdout and "real: [0.08" in done.stdout, done.stdout
    done = subprocess.run([sys.executable, "-c", submodule], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "real: [0.08" in done.stdout and " module" in done.stdout, done.stdout + done.stderr
