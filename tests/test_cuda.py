"""Real CUDA: runs, sweeps, precisions, compiled steps, stacked groups and resume on
``torch.device("cuda")``. Nothing here fakes ``torch.cuda``: without a visible GPU every test is
skipped (``conftest.py``), and ``scripts/gpu_check.sh`` runs them where a GPU is lent."""

import copy
import csv
import dataclasses
import io
import json
import resource

import pytest
import torch
from omegaconf import open_dict

from microtrain import device
from microtrain.training import train
from tests_helpers import checkpoint_weights, make_cfg, read_events, run_in_process, run_script

pytestmark = pytest.mark.cuda
SMALL = ["model=mlp", "model.hidden=16", "trainer.max_epochs=3"]


def cuda_cfg(*overrides: str):
    return make_cfg(*overrides, "device=cuda")  # after make_cfg's device=cpu: the last one wins


def final_weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in result.module.model.state_dict().items()}


def test_device_auto_picks_the_gpu_and_names_it():
    plan = device.resolve({"type": "auto", "precision": "32", "threads": "auto"})
    assert plan.accelerator == "cuda"
    assert torch.cuda.get_device_name(0) in plan.description and plan.description.startswith("cuda:")


def test_a_default_run_trains_on_the_gpu(tmp_path):
    result = train(cuda_cfg(), tmp_path)
    assert result.metrics["status"] == "ok" and result.device.startswith("cuda:")
    assert all(p.is_cuda for p in result.module.model.parameters())
    assert result.metrics["val_loss"] < 0.05  # as on the CPU (test_training)


def test_the_data_is_copied_to_the_gpu_once(tmp_path):
    result = train(cuda_cfg(*SMALL), tmp_path)
    data = result.module.trainer.datamodule
    assert data.copy_to is None  # a tiny set lives on the GPU: batches are cut there, no copy each step
    assert data.train[0].is_cuda and data.train[1].is_cuda and data.val[0].is_cuda


def test_a_set_too_large_for_the_gpu_streams_from_pinned_memory_with_the_same_result(tmp_path, monkeypatch):
    whole = train(cuda_cfg(*SMALL), tmp_path / "on_gpu")
    monkeypatch.setattr(device, "ON_DEVICE_LIMIT_FRACTION", 0.0)  # every set counts as too large
    streamed = train(cuda_cfg(*SMALL), tmp_path / "streamed")
    data = streamed.module.trainer.datamodule
    assert data.copy_to is not None and data.copy_to.type == "cuda" and not data.train[0].is_cuda
    a, b = final_weights(whole), final_weights(streamed)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_eager_on_the_gpu_matches_the_cpu(tmp_path):
    cpu = train(make_cfg(*SMALL), tmp_path / "cpu")
    gpu = train(cuda_cfg(*SMALL), tmp_path / "gpu")
    a, b = final_weights(cpu), final_weights(gpu)
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < 1e-4, worst  # 3 epochs of float32 rounding in other kernels (TF32 is off by default)
    assert gpu.metrics["val_loss"] == pytest.approx(cpu.metrics["val_loss"], rel=1e-3)


def test_the_compiled_step_records_cuda_graphs_and_matches_eager(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    eager = train(cuda_cfg(*SMALL), tmp_path / "eager")
    compiled = train(cuda_cfg(*SMALL, "loop.compile=true"), tmp_path / "compiled")
    assert "compile_seconds" in compiled.metrics  # the step really ran compiled
    # inductor counts each graph it declines to record ("skipping cudagraphs due to ...")
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    a, b = final_weights(eager), final_weights(compiled)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_trains_like_float32(tmp_path, precision):
    full = train(cuda_cfg(*SMALL), tmp_path / "32")
    mixed = train(cuda_cfg(*SMALL, f"device.precision={precision}"), tmp_path / precision)
    assert mixed.metrics["status"] == "ok"
    assert all(p.dtype == torch.float32 for p in mixed.module.model.parameters())  # master weights stay float32
    losses = [s.value for s in read_events(tmp_path / precision).Scalars("train_loss_step")]
    assert losses[-1] < 0.5 * losses[0]
    assert mixed.metrics["val_loss"] == pytest.approx(full.metrics["val_loss"], rel=0.2)


def test_bf16_mixed_jobs_stack_on_the_gpu(tmp_path):
    from microtrain.stack.train import train_group

    jobs = [[*SMALL, "device.precision=bf16-mixed", f"optimizer.lr={lr}", f"seed={seed}"] for lr, seed in ((0.01, 0), (0.03, 1))]
    metrics = train_group([cuda_cfg(*job) for job in jobs], [tmp_path / "a", tmp_path / "b"], [False, False])
    assert [m["status"] for m in metrics] == ["ok", "ok"]
    solo = train(cuda_cfg(*jobs[0]), tmp_path / "solo")
    stacked = checkpoint_weights(tmp_path / "a")
    ours = {k.removeprefix("model."): v for k, v in stacked.items()}
    assert max((ours[k].double() - v.double()).abs().max().item() for k, v in final_weights(solo).items()) < 1e-2


def test_16_mixed_jobs_stack_on_the_gpu_each_with_its_solo_runs_loss_scale(tmp_path):
    """Each stacked job's GradScaler state in its checkpoint is its solo twin's (the same scale
    and growth tracker: the same steps skipped), and a stacked resume goes on from it."""
    from microtrain.stack.train import train_group

    jobs = [[*SMALL, "device.precision=16-mixed", f"optimizer.lr={lr}", f"seed={seed}"] for lr, seed in ((0.01, 0), (0.03, 1))]
    metrics = train_group([cuda_cfg(*job) for job in jobs], [tmp_path / "a", tmp_path / "b"], [False, False])
    assert [m["status"] for m in metrics] == ["ok", "ok"]
    for k, folder in enumerate(("a", "b")):
        train(cuda_cfg(*jobs[k]), tmp_path / f"solo{k}")
        ours, theirs = (torch.load(tmp_path / f / "checkpoints" / "last.ckpt", weights_only=True) for f in (folder, f"solo{k}"))
        assert ours["MixedPrecision"] == theirs["MixedPrecision"]
        stacked = {k.removeprefix("model."): v for k, v in ours["state_dict"].items()}
        assert max((stacked[n].double() - theirs["state_dict"][f"model.{n}"].double()).abs().max().item() for n in stacked) < 1e-2
    longer = [[*job, "trainer.max_epochs=4"] for job in jobs]
    again = train_group([cuda_cfg(*job) for job in longer], [tmp_path / "a", tmp_path / "b"], [True, True])
    assert [m["status"] for m in again] == ["ok", "ok"] and again[0]["steps"] == 100


def test_gpu_memory_peak_is_logged(tmp_path):
    train(cuda_cfg(*SMALL), tmp_path)
    peaks = [s.value for s in read_events(tmp_path).Scalars("gpu_memory_peak_mib")]
    assert peaks and all(0 < p < torch.cuda.get_device_properties(0).total_memory / 2**20 for p in peaks)


def test_resume_on_the_gpu_is_bitwise(tmp_path, capsys):
    base = ["model=mlp", "model.hidden=16", "device=cuda", "trainer.enable_progress_bar=false"]
    code, _, err = run_in_process(capsys, "train.py", *base, "trainer.max_epochs=4", f"hydra.run.dir={tmp_path / 'whole'}")
    assert code == 0, err
    code, _, err = run_in_process(capsys, "train.py", *base, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'split'}")
    assert code == 0, err
    code, _, err = run_in_process(capsys, "train.py", "resume=true", "trainer.max_epochs=4", f"hydra.run.dir={tmp_path / 'split'}")
    assert code == 0, err
    a, b = checkpoint_weights(tmp_path / "whole"), checkpoint_weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_sweep_on_the_gpu(tmp_path):
    done = run_script(
        "train.py",
        "-m",
        *SMALL,
        "device=cuda",
        "optimizer.lr=0.01,0.1",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "summary.csv") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["ok", "ok"]


def test_a_stacked_sweep_of_64_jobs_on_one_gpu(tmp_path):
    lrs = ",".join(f"{0.002 * 1.25**i:.5f}" for i in range(16))
    done = run_script(
        "train.py",
        "-m",
        "hydra/launcher=stacked",
        *SMALL,
        "device=cuda",
        f"optimizer.lr={lrs}",
        "seed=0,1,2,3",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "stacked: 64 of 64 jobs in 1 group(s)" in done.stdout
    statuses = [json.loads(f.read_text())["status"] for f in tmp_path.glob("*/metrics.json")]
    assert len(statuses) == 64 and set(statuses) == {"ok"}


def test_1024_stacked_jobs_fit_one_gpu_within_the_memory_bound(tmp_path):
    from rich.console import Console

    from microtrain.stack import plan

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # each job's TensorBoard writer holds a file
    try:
        base = cuda_cfg("model=mlp", "model.hidden=16", "trainer.max_steps=20", "log.inspect=false")
        assert plan._jobs_that_fit(base, 1024) == 1024  # a quarter of the GPU's free memory holds all of them
        assert plan._jobs_that_fit(base, 10**12) < 10**12  # and the bound is the GPU's, not the request
        cfgs = []
        for k in range(1024):
            cfg = copy.deepcopy(base)
            with open_dict(cfg):
                cfg.optimizer.lr, cfg.seed = 0.001 * (1 + k % 64), k // 64
            cfgs.append(cfg)
        results, _ = plan.run_stacked(cfgs, [tmp_path / f"job{k}" for k in range(1024)], None, Console(file=io.StringIO()))
        assert [r["status"] for r in results] == ["ok"] * 1024
        assert json.loads((tmp_path / "job1023" / "metrics.json").read_text())["stacked"]["jobs"] == 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_benchmark_measures_both_sides_on_the_gpu():
    from benchmark_harness import CASES, measure, summarize

    result = summarize(measure(dataclasses.replace(CASES[1], steps=(50, 550)), 1, "cuda", compiled=False))
    assert result["device"] == "cuda" and result["gpu_memory_peak_mib"] > 0
    assert result["median_steps_per_s"]["plain"] > 0 and result["ratio"] > 0
