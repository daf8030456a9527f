"""What each TensorBoard tag is called, so the tabs open on what matters.

TensorBoard's Scalars, Time Series and Histograms tabs group tags by the part before the first
``/`` and sort the groups by name. microtrain's own names (``val_loss``, ``grad_norm/fc1.weight``,
the keys of ``metrics.json``) become tags with a numbered group, so the loss comes first, then
validation metrics, then what each layer does, most telling first:

==========================  ==================================  ================================
name in microtrain          TensorBoard tag                     what it is
==========================  ==================================  ================================
train_loss_step             1_loss/train                        mean of every N-step window
val_loss, train_loss        1_loss/val, 1_loss/train_epoch      per epoch
train_loss_full, ...        1_loss/train_full, ...              least squares: full-split loss
val_<metric>                2_validation/<metric>               r2, mae, acc, ...
update_ratio/<p>            3_update_ratio/<p>                  ‖Δw‖/‖w‖ of a step
grad_norm/<p>               4_grad_norm/<p>
weight_norm/<p>             5_weight_norm/<p>
dead_units/<layer>, ...     6_units/dead/<layer>, ...           dead ReLU, saturated tanh/sigmoid
hessian_top_eigenvalue      7_curvature/hessian_top_eigenvalue  with log.curvature=true
lr                          8_optimizer/lr
samples_per_s, epoch, ...   9_speed/samples_per_s, ...
nonfinite/<what>            0_nonfinite/<what>                  NaN and Inf counts: first, when any
weights/<p>, grads/<p>      1_weights/<p>, 2_grads/<p>          histograms
preactivations/<layer>      3_preactivations/<layer>            histograms (MLP)
activations/<layer>         4_activations/<layer>               histograms (MLP)
==========================  ==================================  ================================

Everything that reads events back (``report``, the tests) goes through ``Events``, which
speaks microtrain's names, so the table above is the only place that knows the tags.
"""

from pathlib import Path
from typing import Any

NAMES = {
    "train_loss_step": "1_loss/train",
    "val_loss": "1_loss/val",
    "train_loss": "1_loss/train_epoch",
    "train_loss_full": "1_loss/train_full",
    "train_loss_optimum": "1_loss/train_optimum",
    "optimality_gap": "1_loss/optimality_gap",
    "hessian_top_eigenvalue": "7_curvature/hessian_top_eigenvalue",
    "edge_of_stability": "7_curvature/edge_of_stability_2_over_lr",
    "gradient_noise_scale": "7_curvature/gradient_noise_scale",
    "lr": "8_optimizer/lr",
    "samples_per_s": "9_speed/samples_per_s",
    "gpu_memory_peak_mib": "9_speed/gpu_memory_peak_mib",
    "epoch": "9_speed/epoch",
}
GROUPS = {
    "update_ratio": "3_update_ratio",
    "grad_norm": "4_grad_norm",
    "weight_norm": "5_weight_norm",
    "dead_units": "6_units/dead",
    "saturated_units": "6_units/saturated",
    "nonfinite": "0_nonfinite",
    "weights": "1_weights",
    "grads": "2_grads",
    "preactivations": "3_preactivations",
    "activations": "4_activations",
    "final": "final",  # the HParams metrics: one point each, at the run's last step
}
VALIDATION = "2_validation/"
TEST = "2_test/"  # the test split's metrics, on the best checkpoint at the run's end
_TAGS = {tag: name for name, tag in NAMES.items()}
_GROUP_NAMES = sorted(((tag, name) for name, tag in GROUPS.items()), key=lambda pair: -len(pair[0]))


def tensorboard_tag(name: str) -> str:
    """The tag microtrain writes for one of its names (names it does not know pass unchanged)."""
    if name in NAMES:
        return NAMES[name]
    group, sep, rest = name.partition("/")
    if sep and group in GROUPS:
        return f"{GROUPS[group]}/{rest}"
    if name.startswith("val_"):
        return VALIDATION + name[len("val_") :]
    if name.startswith("test_"):
        return TEST + name[len("test_") :]
    return name


def name_of(tag: str) -> str:
    """The inverse of ``tensorboard_tag``."""
    if tag in _TAGS:
        return _TAGS[tag]
    if tag.startswith(VALIDATION):
        return "val_" + tag[len(VALIDATION) :]
    if tag.startswith(TEST):
        return "test_" + tag[len(TEST) :]
    for prefix, group in _GROUP_NAMES:
        if tag.startswith(prefix + "/"):
            return f"{group}/{tag[len(prefix) + 1 :]}"
    return tag


def layout(parameters: list[str], layers: list[str], curvature: bool, validation: bool = True, test: bool = False) -> dict[str, dict[str, list]]:
    """The Custom Scalars tab (``SummaryWriter.add_custom_scalars``): train and validation loss
    on one chart first, then one chart per quantity with every parameter on it (the update
    ratios, whose healthy range is ~1e-3, read best on the chart's log scale toggle); the
    validation and test charts only where the run has those splits (no empty chart).

    Charts match tags by regular expression, so one layout fits every run of a sweep."""
    loss: dict[str, list] = {"train and validation loss": ["Multiline", [r"^1_loss/(train|val)$"]]}
    if validation:
        loss["validation metrics"] = ["Multiline", [r"^2_validation/"]]
    if test:
        loss["test metrics (best checkpoint, at the end)"] = ["Multiline", [r"^2_test/"]]
    charts: dict[str, dict[str, list]] = {
        "loss": loss,
        "parameters (log scale reads best)": {
            "update ratio ‖Δw‖/‖w‖": ["Multiline", [r"^3_update_ratio/"]],
            "gradient norm": ["Multiline", [r"^4_grad_norm/"]],
            "weight norm": ["Multiline", [r"^5_weight_norm/"]],
        },
    }
    if layers:
        charts["hidden units"] = {"dead or saturated fraction": ["Multiline", [r"^6_units/"]]}
    if curvature:
        charts["curvature"] = {
            "top Hessian eigenvalue and 2/lr": ["Multiline", [r"^7_curvature/(hessian_top_eigenvalue|edge_of_stability)"]],
            "gradient noise scale": ["Multiline", [r"^7_curvature/gradient_noise_scale$"]],
        }
    charts["optimizer"] = {"learning rate": ["Multiline", [r"^8_optimizer/lr$"]]}
    return charts


class Events:
    """A run's TensorBoard events read back with TensorBoard's own ``EventAccumulator``, by
    microtrain's names: ``Events(run).Scalars("val_loss")``."""

    def __init__(self, folder: Path):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        self.folder = events_folder(Path(folder))
        self._events = EventAccumulator(str(self.folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
        self._events.Reload()

    def Tags(self) -> dict[str, Any]:  # noqa: N802 -- EventAccumulator's own spelling
        tags = dict(self._events.Tags())
        for kind in ("scalars", "histograms"):
            tags[kind] = [name_of(t) for t in tags[kind]]
        return tags

    def Scalars(self, name: str) -> list:  # noqa: N802
        return self._events.Scalars(tensorboard_tag(name))

    def Histograms(self, name: str) -> list:  # noqa: N802
        return self._events.Histograms(tensorboard_tag(name))

    @property
    def accumulator(self) -> Any:
        return self._events

    def __getattr__(self, name: str) -> Any:  # the rest of EventAccumulator, with TensorBoard's tags
        return getattr(self._events, name)


EVENTS = "tensorboard"  # the subfolder of a run folder that holds its event files


def events_folder(run_dir: Path) -> Path:
    """Where a run's event files are: ``<run>/tensorboard``, so that ``tensorboard --logdir <run>``
    names the run ``tensorboard`` and a sweep's runs ``<job>/tensorboard`` (event files in the
    folder TensorBoard is pointed at make a run named ".")."""
    return Path(run_dir) / EVENTS
