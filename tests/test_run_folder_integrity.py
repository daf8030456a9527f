"""Run folders handed over by someone else, copied, moved, linked, tampered with or resumed wrongly:
nothing they name is run, nothing outside them is written, and no stale or foreign file is used."""

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microtrain.errors import ConfigError
from microtrain.predict import predict_file
from tests_helpers import ROOT, files_of, run_in_process

pytestmark = pytest.mark.slow
QUICK = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished diabetes run (it has a test split, so it tests its best checkpoint)."""
    folder = tmp_path_factory.mktemp("integrity") / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "data=diabetes", *QUICK, f"hydra.run.dir={folder}"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return folder


def copy_of(run: Path, where: Path) -> Path:
    subprocess.run(["cp", "-r", str(run), str(where)], check=True)
    return where


HOSTILE = {
    "callback Path.write_text": ("callbacks", {"pwn": {"_target_": "pathlib.Path.write_text", "self": "{marker}", "data": "ran"}}),
    "nested numpy.load": (
        "optimizer",
        {"_target_": "torch.optim.SGD", "lr": 0.1, "params": {"_target_": "numpy.load", "file": "{marker}", "allow_pickle": True}},
    ),
    "Path.unlink as optimizer": ("optimizer", {"_target_": "pathlib.Path.unlink", "self": "{marker}"}),
    "attribute chain out of torch.optim": ("optimizer", {"_target_": "torch.optim.optimizer.torch.save", "obj": 1, "f": "{marker}"}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_config_is_refused_on_resume_predict_and_report_with_nothing_run(finished, tmp_path, capsys, case):
    import yaml

    run = copy_of(finished, tmp_path / "run")
    marker = tmp_path / "marker.txt"
    marker.write_text("untouched")
    section, value = HOSTILE[case]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[section] = json.loads(json.dumps(value).replace("{marker}", str(marker)))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    before = files_of(run)
    code, _, err = run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=3", f"hydra.run.dir={run}")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "nothing was run" in err and "trust_run_config=true" in err
    code, _, err = run_in_process(capsys, "predict.py", f"run={run}", f"data.path={run / 'data_info.json'}")
    assert code == 2 and "nothing was run" in err
    from microtrain.report import write_report

    assert write_report(run).is_file()  # drawn without the landscape, whose panel says why (it would build from config.yaml)
    assert marker.read_text() == "untouched"
    assert {k: v for k, v in files_of(run).items() if k != "report.png"} == before


def test_a_callback_target_that_is_not_a_callback_class_is_never_called(tmp_path, capsys):
    marker = tmp_path / "marker.txt"
    code, _, err = run_in_process(
        capsys,
        "train.py",
        "+callbacks.pwn._target_=pathlib.Path.write_text",
        f"+callbacks.pwn.self={marker}",
        "+callbacks.pwn.data=ran",
        f"hydra.run.dir={tmp_path / 'run'}",
        *QUICK,
    )
    assert code == 2 and "callbacks.pwn._target_=pathlib.Path.write_text is not a Lightning callback class" in err
    assert not marker.exists()


def test_links_in_a_run_folder_are_never_written_through(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path / "run")
    outside = {}
    for name in (".lock", "train.log", "history.jsonl", "metrics.json.partial", "config.yaml.partial", "checkpoints/last.ckpt.partial"):
        target = tmp_path / f"outside_{name.replace('/', '_')}"
        target.write_text("precious")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(target)
        outside[target] = "precious"
    code, _, err = run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=3", f"hydra.run.dir={run}")
    assert code == 2 and "is a symbolic link" in err and err.strip().splitlines() == [err.strip()]
    assert all(path.read_text() == text for path, text in outside.items())
    assert not (run / "config.yaml").is_symlink() and not (run / "metrics.json").is_symlink()


def test_a_copied_run_folder_resumes_and_tests_against_its_own_checkpoints(finished, tmp_path, capsys):
    copied = copy_of(finished, tmp_path / "copied")
    code, _, err = run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=3", f"hydra.run.dir={copied}")
    assert code == 0, err
    metrics = json.loads((copied / "metrics.json").read_text())
    assert Path(metrics["test_checkpoint"]).parent == copied / "checkpoints"
    saved = torch.load(copied / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    assert all(str(copied) in str(state.get("best_model_path", copied)) for state in saved.values())
    moved = tmp_path / "moved"
    copied.rename(moved)
    code, _, err = run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=4", f"hydra.run.dir={moved}")
    assert code == 0, err
    assert Path(json.loads((moved / "metrics.json").read_text())["test_checkpoint"]).parent == moved / "checkpoints"


def test_predict_refuses_a_tampered_checkpoint_and_names_a_good_one(finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    best = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["state_dict"]["model.weight"] *= 10  # the checksum still says the old weights
    torch.save(checkpoint, best)
    rows = tmp_path / "rows.csv"
    info = json.loads((run / "data_info.json").read_text())
    with open(rows, "w", newline="") as handle:
        csv.writer(handle).writerows([info["features"], [0.0] * len(info["features"])])
    with pytest.raises(
        ConfigError,
        match=r"best.ckpt is damaged \(its weights do not match their checksum\); "
        r"checkpoints/last.ckpt is good: predict from it with checkpoint=last",
    ):
        predict_file(run, str(rows))
    best.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="best.ckpt is damaged \\(it does not load"):
        predict_file(run, str(rows))
    assert predict_file(run, str(rows), checkpoint="last")[0].is_file()


def test_a_failed_resume_leaves_the_folder_byte_identical(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path / "run")
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("name: linear", "name: mlp\n  hidden: 8\n  activation: relu", 1))
    before = files_of(run)
    code, _, err = run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=3", f"hydra.run.dir={run}")
    assert code == 2 and "holds another model than" in err and "nothing was written" in err
    assert files_of(run) == before


def test_a_run_that_ends_before_its_first_validation_ends_ok(tmp_path, capsys):
    code, out, err = run_in_process(
        capsys,
        "train.py",
        "data=diabetes",
        "trainer.max_epochs=1",
        "+trainer.check_val_every_n_epoch=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.enable_progress_bar=false",
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["test_checkpoint"] is None and "test_r2" in metrics
    assert "test (checkpoint none, the final weights)" in out


def test_the_printed_resume_command_of_a_sweep_job_runs_as_printed(tmp_path):
    """A sweep job's folder is named like optimizer.lr=0.01,trainer.max_epochs=300: '=' and ','
    that Hydra's grammar reads as a sweep unless the printed command quotes them for it."""
    from microtrain.run.folder import hydra_override

    job = tmp_path / "sweep" / "optimizer.lr=0.01,trainer.max_epochs=3"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "trainer.max_epochs=1", f'hydra.run.dir="{job}"', "trainer.enable_progress_bar=false"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    command = f"{shlex.quote(sys.executable)} {ROOT / 'scripts' / 'train.py'} resume=true trainer.max_epochs=2 {hydra_override('hydra.run.dir', job)}"
    again = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((job / "metrics.json").read_text())["epochs"] == 2
    rows = job / "rows=1,2.csv"  # a path Hydra would read as a sweep too
    rows.write_text("x0,x1,x2\n0.1,0.2,0.3\n")
    predicted = subprocess.run(
        f"{shlex.quote(sys.executable)} {ROOT / 'scripts' / 'predict.py'} {hydra_override('run', job)} {hydra_override('data.path', rows)}",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert (job / "predictions.csv").read_text().startswith("x0,x1,x2,predicted_y0")


def test_a_model_too_large_for_the_machine_is_refused_before_it_is_built(tmp_path, capsys):
    code, _, err = run_in_process(capsys, "train.py", "model=mlp", "model.hidden=1000000000", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and "this model has 5,000,000,001 parameters and training it needs about" in err
    assert "choose a smaller model.hidden or data.batch_size" in err and not (tmp_path / "run").exists()


def test_explain_turns_an_unexpected_error_into_one_line(tmp_path, capsys, monkeypatch):
    """A fault inside the step (injected: the real path no longer has one that this test knew of;
    optimizer.lr=1e300, which overflowed there, is refused by the optimizer's trial step)."""
    code, _, err = run_in_process(capsys, "explain_step.py", "optimizer.lr=1e300", f"hydra.run.dir={tmp_path / 'refused'}")
    assert (
        code == 2
        and err.strip()
        == "error: optimizer torch.optim.SGD cannot take a step with these settings: value cannot be converted to type float without overflow"
    )
    from microtrain.explain import step

    def fails(*args, **kwargs):
        raise RuntimeError("a fault inside the step")

    monkeypatch.setattr(step, "check_first_step", fails)
    code, out, err = run_in_process(capsys, "explain_step.py", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "Traceback" not in out + err
    assert "the traceback is in" in err and "Traceback" in (tmp_path / "run" / "explain_step.log").read_text()


def test_two_stacked_sweeps_into_one_folder_the_second_is_refused(tmp_path):
    args = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "-m",
        "hydra/launcher=stacked",
        "optimizer.lr=0.01,0.02",
        "trainer.max_epochs=100000",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path}",
    ]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # runs until killed
    try:
        import time

        deadline = time.time() + 60
        while not (tmp_path / ".lock").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (tmp_path / ".lock").exists() and first.poll() is None
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert first.poll() is None  # the first still held the folder while the second was refused
        assert second.returncode == 2 and "is in use by a run still going" in second.stderr and "hydra.sweep.dir" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_config_files_are_the_text_omegaconf_writes():
    """run.folder.yaml_text (libyaml's emitter) against OmegaConf.to_yaml: a run's config, Hydra's
    own config of a job (enums), and strings that read back as other types unless quoted."""
    from dataclasses import dataclass, field
    from enum import Enum
    from typing import Optional

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from microtrain.run.folder import yaml_text
    from tests_helpers import CONF

    class Mode(Enum):
        RUN = 1

    @dataclass
    class Tricky:
        mode: Mode = Mode.RUN
        texts: list = field(
            default_factory=lambda: [
                "1e5",
                "yes",
                "Off",
                "yEs",
                "null",
                "",
                "nan",
                "-3",
                "0x1",
                "a: b",
                "é",
                "${x}",
                "1_000",
                "~",
                "two\nlines",
            ]
        )
        value: float = 1e-5
        missing: str = "???"
        nothing: Optional[int] = None

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose("train", overrides=["model=mlp", "optimizer.lr=0.01"], return_hydra_config=True)

    @dataclass
    class WithPath:  # libyaml cannot represent a Path: OmegaConf writes it
        path: Path = Path("/tmp/x")

    beyond_the_first_plane = OmegaConf.create({"emoji": "😀"})  # libyaml would escape it: OmegaConf writes it
    for cfg in (hydra_cfg, OmegaConf.structured(Tricky), OmegaConf.structured(WithPath), beyond_the_first_plane):
        assert yaml_text(cfg) == OmegaConf.to_yaml(cfg)
        assert OmegaConf.load(__import__("io").StringIO(yaml_text(cfg))) == OmegaConf.create(OmegaConf.to_yaml(cfg))


@pytest.mark.parametrize(
    "value", ["/tmp/plain-1.5", "/tmp/ünï", "/tmp/ünï cödé", "/tmp/lr=0.1,seed=2", 'a "quoted" \\" name', "ends in \\", "$HOME `x` 'y'"]
)
def test_a_printed_override_reads_back_as_its_value_through_bash_and_hydras_grammar(value):
    """Printed commands (resume, predict) and the Python API's arguments: Hydra's grammar reads
    only ASCII letters unquoted, and a backslash before a quote or at the end is its escape."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from microtrain.run.folder import hydra_override, hydra_value

    parser = OverridesParser.create()
    assert parser.parse_override(f"run={hydra_value(value)}").value() == value  # the API: no shell between
    (through_bash,) = shlex.split(hydra_override("run", value))  # bash's reading of the printed word
    assert parser.parse_override(through_bash).value() == value
