"""What keeps a tiny model's short epochs cheap still does its job: checkpoints, curves, the bar."""

import gc
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from microtrain.run import checkpoints
from microtrain.run import folder as run_folder
from microtrain.run.checkpoint_io import AtomicCheckpointIO
from microtrain.engine.module import Trainee
from microtrain.engine.build import steps_per_call
from microtrain.monitor.scalars import ScalarBuffer
from microtrain.training import train
from tests_helpers import make_cfg, read_events, run_in_process

# 1000 synthetic rows, no validation: epochs of 32 steps (the last batch has 8 rows)
SHORT_EPOCHS = ["model=mlp", "data.val_fraction=0"]


@pytest.fixture
def checkpoint_writes(monkeypatch):
    """global_step of every checkpoint written."""
    steps: list[int] = []
    save = AtomicCheckpointIO.save_checkpoint

    def counting(self, checkpoint, path, storage_options=None):
        steps.append(checkpoint["global_step"])
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counting)
    write_all = run_folder.write_all_atomic

    def counting_stacked(files):  # a stack's (a solo run's: a stack of one) checkpoints, written in one batch
        write_all(files)
        steps.extend(torch.load(path, weights_only=True)["global_step"] for path, _ in files if str(path).endswith(".ckpt"))

    monkeypatch.setattr(run_folder, "write_all_atomic", counting_stacked)
    return steps


def test_budget_zero_writes_last_ckpt_after_every_epoch(tmp_path, checkpoint_writes):
    train(make_cfg(*SHORT_EPOCHS, "trainer.max_epochs=6", "checkpoint.budget=0"), tmp_path)
    assert checkpoint_writes == [32, 64, 96, 128, 160, 192]


@pytest.mark.parametrize("limit, final", [("trainer.max_epochs=6", 192), ("trainer.max_steps=110", 110)])
def test_a_tight_budget_still_writes_the_first_and_the_final_epoch(tmp_path, checkpoint_writes, limit, final):
    result = train(make_cfg(*SHORT_EPOCHS, limit, "checkpoint.budget=1e-12"), tmp_path)
    assert checkpoint_writes == [32, final]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == final
    weights = result.module.state_dict()
    assert all(torch.equal(saved["state_dict"][k], weights[k]) for k in weights)


@pytest.fixture
def step_clock(monkeypatch, checkpoint_writes):
    """The checkpoint budget's clock, in work done rather than wall time (which a loaded machine
    bends): each training step takes 1 ms and each checkpoint write 1 ms."""
    clock = SimpleNamespace(steps=0, writes=0)
    step, save = Trainee.training_step, AtomicCheckpointIO.save_checkpoint

    def timed_step(self, *args):
        step(self, *args)
        clock.steps = self.loop.step_count

    def timed_save(self, *args, **kwargs):
        save(self, *args, **kwargs)
        clock.writes += 1

    monkeypatch.setattr(Trainee, "training_step", timed_step)
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", timed_save)
    write_all = run_folder.write_all_atomic

    def timed_write_all(files):
        write_all(files)
        clock.writes += 1

    monkeypatch.setattr(run_folder, "write_all_atomic", timed_write_all)
    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(perf_counter=lambda: (clock.steps + clock.writes) * 1e-3))
    return clock


def test_default_budget_skips_writes_on_millisecond_epochs_only(tmp_path, checkpoint_writes, step_clock):
    # a write of 1 ms is due once 50 ms (2 %) were trained since the last: with 32-step epochs,
    # every other epoch, and always the first and the final one
    train(make_cfg(*SHORT_EPOCHS, "trainer.max_epochs=40"), tmp_path / "short")
    assert checkpoint_writes == [*range(32, 1280, 64), 1280]
    checkpoint_writes.clear()
    # epochs of 800 steps take far longer than 50 writes: every one is written
    train(make_cfg(*SHORT_EPOCHS, "data.n_samples=25600", "trainer.max_epochs=3"), tmp_path / "long")
    assert checkpoint_writes == [800, 1600, 2400]


def test_the_default_budget_skips_writes_of_a_real_tiny_run(tmp_path, checkpoint_writes):
    """On the wall clock: a tiny model's 32-step epochs (a few ms) are far shorter than 50 writes."""
    train(make_cfg(*SHORT_EPOCHS, "trainer.max_epochs=40"), tmp_path)
    assert checkpoint_writes[0] == 32 and checkpoint_writes[-1] == 1280 and len(checkpoint_writes) < 40


def test_with_validation_best_and_last_are_both_kept(tmp_path):
    result = train(make_cfg("model=mlp", "trainer.max_epochs=4"), tmp_path)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert result.best_checkpoint == str(folder / "best.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 100


def test_checkpoint_holds_each_parameter_once(tmp_path):
    train(make_cfg(*SHORT_EPOCHS, "trainer.max_epochs=1"), tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert sorted(saved["state_dict"]) == ["model.fc1.bias", "model.fc1.weight", "model.fc2.bias", "model.fc2.weight"]


@pytest.mark.parametrize("kind", ["SummaryWriter", "EventFile"])
def test_scalar_buffer_writes_in_bursts_with_the_recorded_times(tmp_path, kind):
    """A real SummaryWriter, or monitor.events.EventFile (no thread, no open file: stacked jobs),
    read back by TensorBoard's reader: the values of one step are one event, with the wall time
    they were recorded at; histograms ride along."""
    from torch.utils.tensorboard import SummaryWriter

    from microtrain.monitor.events import EventFile

    folder = tmp_path / "tensorboard"
    writer = SummaryWriter(str(folder)) if kind == "SummaryWriter" else EventFile(folder)
    buffer = ScalarBuffer(max_items=3, max_seconds=1000)
    buffer.add("a", 1.0, 1)
    recorded = time.time()
    buffer.add("b", 2.0, 1)
    buffer.flush(writer)
    writer.flush()
    assert not read_events(tmp_path).Tags()["scalars"]  # fewer than max_items, too recent: held
    buffer.add("a", 3.0, 2)
    buffer.add_histogram("h", 0.0, 1.0, 4, 2.0, 1.5, [0.5, 1.0], [2, 2], 2)
    buffer.flush(writer)
    writer.flush()
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("a")] == [(1, 1.0), (2, 3.0)]
    assert [(e.step, e.value) for e in events.Scalars("b")] == [(1, 2.0)]
    assert abs(events.Scalars("b")[0].wall_time - recorded) < 0.5
    assert events.Histograms("h")[0].histogram_value.num == 4
    buffer.add("c", 4.0, 4)
    buffer.flush(writer, force=True)
    writer.close()
    assert read_events(tmp_path).Scalars("c")[0].value == 4.0


def test_curves_keep_every_epoch_and_the_last_step(tmp_path):
    train(make_cfg(*SHORT_EPOCHS, "trainer.max_epochs=20"), tmp_path)
    events = read_events(tmp_path)
    assert [s.step for s in events.Scalars("train_loss")] == [32 * (i + 1) for i in range(20)]
    steps = [s.step for s in events.Scalars("train_loss_step")]
    assert steps == sorted(set(steps)) and steps[-1] == 640
    # a point at the first call's end (32-step calls here) after each multiple of log.every_n_steps:
    # the same grid for a resumed run as for an uninterrupted one
    assert [s // 50 for s in steps[:-1]] == list(range(1, 640 // 50 + 1)) and all(s % 50 < 32 for s in steps[:-1])
    assert len(events.Scalars("samples_per_s")) >= 1


def test_progress_bar_is_one_bar_over_the_run_redrawn_sparingly(capsys, tmp_path):
    code, out, err = run_in_process(capsys, "train.py", *SHORT_EPOCHS, "device=cpu", f"hydra.run.dir={tmp_path}", "trainer.max_epochs=30")
    assert code == 0
    bar = out + err
    assert "960/960" in bar and "step=960" in bar and "Epoch 29" in bar
    assert bar.count("it/s") < 30  # not redrawn at every one of the 30 epochs
    assert gc.isenabled()  # start-up paused the collector, training runs with it


@pytest.mark.parametrize(
    "hidden, batch, every, expected",
    [
        (64, 32, None, 128),  # the 3->64->1 MLP: 10 k multiply-adds a step
        (64, 32, 10, 2),  # step checkpoints land on call boundaries
        (1024, 1024, None, 4),  # ~0.5 G a step: a call of 4 steps
        (4096, 4096, None, 1),
    ],
)
def test_steps_per_call_auto_follows_the_work_per_step(hidden, batch, every, expected):
    width = 256 if hidden >= 1024 else 3
    model = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width if hidden >= 1024 else 1))
    cfg = make_cfg(f"data.batch_size={batch}", *([f"checkpoint.every_n_steps={every}"] if every else []))
    splits = SimpleNamespace(train=(torch.zeros(batch * 2, width), torch.zeros(batch * 2, 1)))
    assert steps_per_call(cfg, model, splits) == expected


FAULTS_OF_A_REUSED_BLOCK = """
import ctypes, resource, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "kept":
    from microtrain.memory import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 40 << 20  # over glibc's largest dynamic mmap threshold (32 MB): mapped and unmapped each time by default
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # touches every page, as an activation tensor's writes do
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_spares_the_page_faults_of_a_reused_block():
    """microtrain.memory: a freed block is reused from the heap rather than mapped again, so
    its pages fault once, not at every reuse (10 reuses of 40 MB: ~100 k faults by default)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    faults = {
        how: int(subprocess.run([sys.executable, "-c", FAULTS_OF_A_REUSED_BLOCK, src, how], capture_output=True, text=True, check=True).stdout)
        for how in ("default", "kept")
    }
    pages = (40 << 20) // 4096
    assert faults["default"] > 8 * pages  # every reuse faults its pages in again
    assert faults["kept"] < 2 * pages  # the first use only
