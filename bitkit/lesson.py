"""Glue shared by the lesson notebooks: parameter checks, the upstream model, metrics.json.

A notebook's ``parameters`` cell is set by a student, by ``bitkit run -p ...`` or by a sweep, so
the cell right after it calls :func:`check_parameters`: a typo fails there, in the first cells,
with a message that names the parameter and the fix, instead of twenty minutes later deep inside
torch. :func:`save_metrics` writes the headline numbers next to the executed notebook
(``$BITKIT_RUN_DIR`` under ``bitkit run``, else the working directory).

No UI imports here (the library never imports widgets): :func:`setup` only sets plotly's renderer by name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitkit import data, inputs, models
from bitkit.data.cards import UnknownDataset
from bitkit.inputs import Invalid

RUN_DIR_ENV = "BITKIT_RUN_DIR"
QUIET_ENV = "BITKIT_RUN_QUIET"
METRICS = "metrics.json"

#: plotly's interactive mimetype for JupyterLab (and VS Code) plus an HTML fragment without
#: plotly.js for the HTML export, which carries plotly.js once (``bitkit.runs.export_html``):
#: figures show live, in the saved notebook and in its export, with no network, and a saved
#: lesson stays small (plotly's "notebook" renderer would store its 4.8 MB plotly.js in it).
PLOTLY_RENDERER = "plotly_mimetype+bitkit_html"


class ParameterError(inputs.InputError):
    """A notebook parameter has a value that cannot work; the message says which and why."""


def setup() -> None:
    """Call once at the top of a lesson: plotly figures that survive headless execution."""
    import plotly.io as pio
    from plotly.io import base_renderers

    pio.renderers["bitkit_html"] = base_renderers.HtmlRenderer(
        connected=False, include_plotlyjs=False, global_init=False)
    pio.renderers.default = PLOTLY_RENDERER


def progress() -> bool:
    """Progress bars on, except in headless batch runs (``bitkit run`` sets the variable)."""
    return os.environ.get(QUIET_ENV, "0") != "1"


# --------------------------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------------------------


# Each check is a bitkit.inputs rule (value -> value, raising inputs.Invalid), the same checker
# run files, data cards and TrainConfig use; check_parameters turns a failure into the
# notebook's message.
_whole = inputs.integer


def _task(value: Any) -> str:
    """A card name or a local dataset path that ``bitkit.data.load`` can open."""
    if not isinstance(value, str) or not value:
        raise Invalid("a dataset card name (`bitkit cards`) or a local path", value)
    if os.sep in value or value.startswith((".", "~")) or Path(value).expanduser().exists():
        if not Path(value).expanduser().exists():
            raise Invalid("", problem="no such file or folder")
        return value
    try:
        card = data.get_card(value)
    except UnknownDataset as e:  # its str() is the message: the closest names, `bitkit cards`
        raise Invalid("", problem=str(e)) from None
    if not card.available:
        raise Invalid("", problem=f"{card.title} cannot be loaded ({card.source.kind}); pick a "
                      "member dataset or another card")
    if card.num_classes is None or card.multi_label:
        raise Invalid("", problem="lessons fine-tune single-label classification tasks")
    return value


def _model(value: Any) -> str:
    try:
        models.get_config(str(value))
    except ValueError as e:
        raise Invalid("", problem=str(e)) from None
    return str(value)


def _weights(value: Any) -> str | None:
    if value in (None, ""):
        return None
    p = Path(str(value)).expanduser()
    if not p.is_file():
        raise Invalid("", problem="no such file; download a released checkpoint, e.g. "
                      "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz, and give its "
                      "path (or None to pre-train on the embedded upstream world)")
    if p.suffix not in (".npz", ".safetensors", ".pt", ".pth"):
        raise Invalid("a .npz (released BiT), .safetensors or .pt file", value)
    return str(p)


def _upstream(value: Any) -> str:
    try:
        card = data.get_card(str(value))
    except UnknownDataset as e:  # its str() is the message: the closest names, `bitkit cards`
        raise Invalid("", problem=str(e)) from None
    if card.group != "embedded-upstream":
        raise Invalid("", problem="lessons pre-train on an embedded upstream world "
                      f"({', '.join(data.list_cards('embedded-upstream'))}); for a real upstream "
                      "use released weights instead (parameter weights)")
    return str(value)


def _processes(value: Any) -> int:
    n = _whole(1)(value)
    if n > 1:
        import torch

        gpus = torch.cuda.device_count()
        if gpus and n > gpus:
            raise Invalid("", problem=f"this machine has {gpus} GPU(s); use at most that many "
                          "processes (one per GPU)")
    return n


_DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def _device_name(value: Any) -> str:
    if value not in ("auto", "cpu", "cuda") and not str(value).startswith("cuda:"):
        raise Invalid(_DEVICES, value)
    return str(value)


def _device(value: Any) -> str:
    name = _device_name(value)
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise Invalid("", problem="no CUDA GPU is visible here; use 'auto' or 'cpu'")
    return name


def _whole_list(low: int) -> inputs.Rule:
    return inputs.list_of(_whole(low), single=True,
                          what=f"a non-empty list of whole numbers >= {low}, e.g. [1, 5, 10]")


#: What each common lesson parameter must be. A notebook passes the ones it has.
CHECKS: dict[str, inputs.Rule] = {
    "task": _task, "tasks": inputs.list_of(_task, single=True, what="a list of dataset card "
                                           "names or local paths"),
    "model": _model, "weights": _weights, "upstream": _upstream,
    "upstream_size": _whole(64), "upstream_steps": _whole(5), "upstream_sizes": _whole_list(64),
    # steps = None: the recipe's own schedule (BiT-HyperRule's 500 to 20k steps), on a GPU
    "upstream_batch": _whole(2), "steps": inputs.optional(_whole(5)), "batch_size": _whole(2),
    "train_size": inputs.optional(_whole(1)), "test_size": inputs.optional(_whole(1)),
    "shots": _whole_list(1), "seeds": _whole_list(0), "seed": _whole(0),
    "processes": _processes, "device": _device, "variant": inputs.one_of("S", "M", "L"),
    "threshold": inputs.number(0, 1), "trials": _whole(1), "search_size": _whole(10),
    "k": _whole(1),
    # a fine-tuning lr grid every arm of a comparison chooses from (experiments.sweep_lr)
    # a list, not a bare number: the lessons iterate over it (a bare 0.1 would fail mid-run)
    "lrs": inputs.list_of(inputs.number(1e-6, 10),
                          what="a non-empty list of learning rates, e.g. [0.01, 0.03, 0.1]"),
    "val_size": _whole(1),
    # peak upstream lr; None: BiT's 0.03 x batch/256 (experiments.pretrain's base_lr)
    "upstream_lr": inputs.optional(inputs.number(1e-6, 10)),
}

#: Checks that read this machine's hardware; a job written for a cluster (``bitkit sweep
#: --sbatch``) checks only the form of these values, since the GPUs are on the nodes.
HARDWARE_FREE = {"processes": _whole(1), "device": _device_name}


def parameter_error(name: str, value: Any, problem: Invalid) -> ParameterError:
    """The notebook's message for a bad parameter: the value, the problem and where to fix it."""
    why = problem.problem or f"must be {problem.expected}"
    item = f" (item {'.'.join(map(str, problem.path))})" if problem.path else ""
    return ParameterError(f"parameter {name} = {inputs.shown(value)}{item}: {why} (set it in the "
                          f"parameters cell, or `bitkit run NOTEBOOK -p {name} VALUE`)")


def _check_split_size(out: dict[str, Any], params: dict[str, Any]) -> None:
    """``train_size`` (plus ``val_size`` when a lesson holds those out of the same split) must
    fit in the task's training split, or a lesson fails minutes in, after pre-training."""
    if not isinstance(out.get("train_size"), int) or not isinstance(out.get("task"), str):
        return
    try:
        available = data.get_card(out["task"]).train_size
    except UnknownDataset:  # a local path: its size is known once loaded
        return
    wanted = out["train_size"] + (out.get("val_size") or 0)
    if available and wanted > available:
        held = f" + val_size {out['val_size']}" if out.get("val_size") else ""
        raise parameter_error("train_size", params["train_size"], Invalid("", problem=(
            f"train_size{held} = {wanted} examples, but {out['task']!r} has {available:,} "
            f"training examples; use at most {available - (out.get('val_size') or 0):,}")))


def check_parameters(**params: Any) -> dict[str, Any]:
    """Check every given parameter (names from :data:`CHECKS`) and return them normalised.

    Raises :class:`ParameterError` naming the first bad one. Cross-checks: ``weights`` must fit
    ``model``; ``train_size`` (+ ``val_size``) must fit in ``task``'s training split.
    """
    out = {}
    for name, value in params.items():
        if name not in CHECKS:
            raise TypeError(f"check_parameters does not know {name!r}"
                            f"{inputs.did_you_mean(name, CHECKS)}; known: {', '.join(CHECKS)}")
        try:
            out[name] = CHECKS[name](value)
        except Invalid as e:
            raise parameter_error(name, value, e) from None
    _check_split_size(out, params)
    if out.get("weights") and "model" in out:
        from bitkit import weights as w

        arch, want = w.describe(out["weights"]), models.get_config(out["model"])
        if (arch.units, arch.width) != (want.units, want.width):
            raise parameter_error("weights", params["weights"], Invalid(
                "", problem=f"holds a {arch.name} but model is {out['model']!r}; set "
                f"model={arch.name!r}"))
    return out


# --------------------------------------------------------------------------------------------
# The upstream model
# --------------------------------------------------------------------------------------------


def upstream_model(model: str, *, weights: str | None = None, upstream: str = "world-upstream",
                   size: int = 50_000, steps: int = 600, batch_size: int = 128, seed: int = 0,
                   base_lr: float | None = None, observers: tuple = ()) -> models.ResNetV2:
    """The pre-trained starting point of a lesson.

    With ``weights`` (a released ``.npz`` such as BiT-M-R50x1.npz): that checkpoint, head
    included (``keep_head=True``), like the pre-trained model otherwise. Otherwise BiT's
    upstream recipe on the embedded world, cached by its settings, so every lesson with the
    same settings reuses the model the quickstart trained. Lesson 08 predicts upstream classes
    with this head; transfer (``experiments.finetune``, :func:`transfer`) replaces it by a
    zero-initialised one.
    """
    from bitkit import experiments

    if weights:
        from bitkit import weights as w

        arch = w.describe(weights)
        print(f"upstream model: {arch.name} from {weights} (its own head of "
              f"{arch.num_classes or 'no'} classes kept)")
        return models.create(model, num_classes=arch.num_classes, weights=weights, keep_head=True)
    print("upstream model:", describe_upstream(model, upstream, size=size, steps=steps,
                                               batch_size=batch_size, seed=seed, base_lr=base_lr))
    return experiments.pretrain(model, upstream, size=size, steps=steps, batch_size=batch_size,
                                seed=seed, base_lr=base_lr, observers=observers,
                                progress=progress())


def describe_upstream(model: str, upstream: str = "world-upstream", *, size: int = 50_000,
                      steps: int = 600, batch_size: int = 128, seed: int = 0,
                      base_lr: float | None = None, variant: str = "S",
                      **train_overrides: Any) -> str:
    """One line saying how a lesson's upstream model is (or was) trained.

    Lessons share pre-trained models, so each says which one it uses: a learner who compares
    numbers across lessons, or who reads in lesson 02 that another setting trains better, can
    see exactly what the shared model is.
    """
    from bitkit import hyperrule

    recipe = hyperrule.upstream(size, variant=variant, batch_size=batch_size,
                                epochs=steps * batch_size / size)
    lr = recipe.schedule.base_lr if base_lr is None else base_lr
    why = "BiT's upstream rule, 0.03 x batch/256" if base_lr is None else "given"
    overrides = dict(train_overrides)
    decay = overrides.pop("weight_decay", recipe.weight_decay)
    extra = "".join(f", {k}={v!r}" for k, v in overrides.items())
    return (f"{model} pre-trained on {upstream}: {size:,} images, {steps:,} SGD steps at batch "
            f"{batch_size} ({steps * batch_size / size:.2g} epochs), peak lr {lr:g} ({why}), "
            f"weight decay {decay:g}, BiT-{variant}'s schedule compressed to those steps, "
            f"seed {seed}{extra}")


#: The pre-trained models the lessons share with their default parameters. ``bitkit prepare``
#: builds every one once (cached by settings, like any ``experiments.pretrain`` run), so a
#: class can run the lessons without waiting for pre-training: a teacher runs it before class.
#: Each entry: ``experiments.pretrain`` arguments plus ``lessons``, the lessons that use it.
SHARED_UPSTREAMS: list[dict[str, Any]] = [
    dict(model="R14x0.25", upstream="world-upstream", size=50_000, steps=600, batch_size=128,
         seed=0, lessons=["02", "04", "05", "06", "07", "09"]),
    # lesson 02's grid (model x upstream size at the standard budget) and its 3x budget, at the
    # lesson's peak lr 0.1 (a short run learns little at the rule's 0.015; lesson 02 explains)
    *(dict(model=m, upstream="world-upstream", size=n, steps=600, batch_size=128, seed=0,
           base_lr=0.1, lessons=(["02", "08"] + (["00", "03"] if n == 50_000 else []))
           if m == "R14x0.25" else ["02"])
      for m in ("R14x0.25", "R26x0.25") for n in (5_000, 50_000)),
    # lesson 08's third point: the same recipe on only 1,000 distinct upstream images
    dict(model="R14x0.25", upstream="world-upstream", size=1_000, steps=600, batch_size=128,
         seed=0, base_lr=0.1, lessons=["08"]),
    dict(model="R14x0.25", upstream="world-upstream", size=50_000, steps=1_800, batch_size=128,
         seed=0, base_lr=0.1, lessons=["02"]),
]


def prepare(*, only: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Build every model of :data:`SHARED_UPSTREAMS` that is not cached yet (``only``: those a
    lesson, e.g. ``"02"``, uses). Returns one row per model: its settings, whether it was
    built now or found in the cache, and the seconds it took."""
    import time

    from bitkit import experiments

    rows = []
    only = None if only is None else str(only).zfill(2)
    wanted = [u for u in SHARED_UPSTREAMS if only is None or only in u["lessons"]]
    if only is not None and not wanted:
        known = sorted({n for u in SHARED_UPSTREAMS for n in u["lessons"]})
        raise ValueError(f"no shared upstream model is used by lesson {only!r}; lessons with "
                         f"shared models: {', '.join(known)}")
    for i, spec in enumerate(wanted, 1):
        settings = {k: v for k, v in spec.items() if k != "lessons"}
        cached = experiments.is_pretrained(**settings)
        line = describe_upstream(**settings)
        print(f"[{i}/{len(wanted)}] {'cached' if cached else 'building'}: {line} "
              f"(lessons {', '.join(spec['lessons'])})", flush=True)
        started = time.perf_counter()
        experiments.pretrain(**settings, progress=progress)
        rows.append({**spec, "cached": cached, "seconds": time.perf_counter() - started})
    return rows


def prepare_command(args: Any) -> int:
    """``bitkit prepare [--lesson NN] [--list]``: build the lessons' shared upstream models."""
    from bitkit import experiments

    if args.list:
        for spec in SHARED_UPSTREAMS:
            settings = {k: v for k, v in spec.items() if k != "lessons"}
            state = "cached" if experiments.is_pretrained(**settings) else "not built"
            print(f"{state:>9}  lessons {', '.join(spec['lessons'])}: "
                  f"{describe_upstream(**settings)}")
        return 0
    rows = prepare(only=args.lesson, progress=not args.quiet)
    built = [r for r in rows if not r["cached"]]
    print(f"{len(rows)} shared upstream model(s) ready ({len(built)} built now in "
          f"{sum(r['seconds'] for r in built) / 60:.1f} min); cache: "
          f"{os.environ.get('BITKIT_CACHE') or '~/.cache/bitkit'}")
    return 0


# --------------------------------------------------------------------------------------------
# Self-checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """A multiple-choice question of a lesson's self-check (shown by ``widgets.SelfCheck``).

    The answer can come from the learner's own run (``answer="yes" if gain > 0 else "no"``), so
    the check asks what *this* run showed, not what a textbook says it should; ``why`` is the
    explanation shown once the learner has answered, with the run's numbers in it.
    """

    text: str
    choices: tuple[str, ...]
    answer: str
    why: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(str(c) for c in self.choices))
        if len(self.choices) < 2 or len(set(self.choices)) != len(self.choices):
            raise ValueError(f"Question {self.text!r}: give at least two different choices, "
                             f"got {list(self.choices)}")
        if self.answer not in self.choices:
            raise ValueError(f"Question {self.text!r}: the answer {self.answer!r} is not one of "
                             f"the choices {list(self.choices)}")

    def is_right(self, choice: str) -> bool:
        """Whether ``choice`` is the answer; a choice the question does not offer is an error."""
        if choice not in self.choices:
            raise ValueError(f"{choice!r} is not a choice of {self.text!r}; choose one of "
                             f"{list(self.choices)}")
        return choice == self.answer


def answer_key(questions: Sequence[Question]) -> list[dict[str, Any]]:
    """A self-check's questions and answers for ``metrics.json`` (tests check the answers
    against the run's numbers; a teacher collects them with the rest)."""
    return [{"question": q.text, "choices": list(q.choices), "answer": q.answer}
            for q in questions]


# --------------------------------------------------------------------------------------------
# metrics.json
# --------------------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else None
    return v


def metrics_path() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV) or ".") / METRICS


def save_metrics(metrics: Mapping[str, Any]) -> Path:
    """Write the lesson's headline numbers to ``metrics.json`` next to the executed notebook."""
    path = metrics_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(metrics), indent=2) + "\n")
    return path


def image_grid(images: Any) -> Any:
    """uint8 images (N, 3, H, W) or (N, H, W, 3) -> (N, H, W, 3) numpy, for ``px.imshow``."""
    import numpy as np

    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 3 and a.shape[-1] != 3:
        a = a.transpose(0, 2, 3, 1)
    return a


def image_source(image: Any, max_side: int | None = None, quality: int = 85) -> str:
    """A uint8 image (3, H, W) or (H, W, 3) as a JPEG data URI for ``go.Image(source=...)``:
    a figure then stores kilobytes of JPEG instead of every pixel value as JSON text (a 320 px
    photo as ``z=`` weighs ~300 KB in the figure, twice in a saved notebook)."""
    import base64
    import io

    from PIL import Image

    (a,) = image_grid([image])
    picture = Image.fromarray(a)
    if max_side is not None:
        picture.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------------------------
# Transfer in one process or many (torchrun)
# --------------------------------------------------------------------------------------------


def transfer(task: str, start: models.ResNetV2 | str, *, processes: int = 1,
             out_dir: str | os.PathLike, observers: tuple = (), **kwargs: Any) -> Any:
    """``experiments.finetune`` in this kernel, or under ``torchrun`` with ``processes`` ranks.

    With several processes the run is written as a run file (docs/distributed.md): the start
    weights go to ``out_dir/start.pt``, ``bitkit.distributed`` launches ``torchrun``, and its
    progress streams back to ``observers`` through ``metrics.jsonl``; the trained weights are
    then read from the run's checkpoint and evaluated here. GroupNorm makes the result the same
    update as one process with the same global batch (paper 4.3). Several processes train on the
    task's whole train split (run files name a split, not a subset).
    """
    from bitkit import experiments

    if processes == 1:
        # Record the files fit is about to create, so a later run with several processes into
        # the same folder may replace them (it removes only recorded files: bitkit.fileio).
        from bitkit.fileio import record_written
        from bitkit.train import CHECKPOINT_FILE, METRICS_FILE

        new = [f for f in (CHECKPOINT_FILE, METRICS_FILE) if not (Path(out_dir) / f).exists()]
        if new:
            record_written(out_dir, TORCHRUN_WRITER, new)
        return experiments.finetune(task, start, out_dir=out_dir, observers=observers,
                                    progress=progress(), **kwargs)
    return _transfer_torchrun(task, start, processes, Path(out_dir), observers, **kwargs)


def _transfer_torchrun(task: str, start: models.ResNetV2 | str, processes: int, out: Path,
                       observers: tuple, *, train_size: int | None = None,
                       test_size: int | None = None, steps: int | None = None,
                       batch_size: int = 64, seed: int = 0, **train: Any) -> Any:
    import torch
    import yaml

    from bitkit import checkpoint, hyperrule, runfile
    from bitkit.evaluate import predict
    from bitkit.experiments import TransferRun
    from bitkit.fileio import atomic_write, atomic_write_text, clear_written, record_written
    from bitkit.train import CHECKPOINT_FILE, METRICS_FILE, FitResult

    if train_size is not None:
        raise ParameterError(f"parameter train_size = {train_size!r}: runs with processes > 1 "
                             "train on the whole train split; set train_size = None")
    raw = data.load(task, "train")
    recipe = hyperrule.hyperrule(raw.card, train_size=len(raw), batch_size=batch_size)
    if steps is not None:
        recipe = recipe.shortened(steps)
    if raw.card.resolution is not None:
        recipe = recipe.at_resolution(*raw.card.resolution, why="the card's teaching resolution")
    # A fresh run (resuming is for the same job, not a rerun), in a folder that may be the
    # user's: only what an earlier run of this function recorded writing there is removed. Other
    # files stay, since they cannot be mistaken for this run's (the run reads and writes only the
    # names below); an unrecorded file of one of those names (a one-process run's checkpoint, a
    # user's) is refused, never deleted -- the trainer would resume from it or overwrite it.
    outputs = ["start.pt", "run.yaml", "launch.log", METRICS_FILE, CHECKPOINT_FILE]
    clear_written(out, TORCHRUN_WRITER, what="a torchrun lesson run", outputs=outputs,
                  legacy=lambda folder: _torchrun_before_records(folder, outputs))
    record_written(out, TORCHRUN_WRITER, outputs)
    if isinstance(start, str):
        torch.manual_seed(seed)
        start = models.create(start, num_classes=raw.num_classes)
    atomic_write(out / "start.pt", lambda f: torch.save(start.state_dict(), f))
    train = {k: v for k, v in train.items() if k != "resume"}
    # No keep_head in the run file: the run loads start.pt with transfer semantics, so its head
    # (the upstream classifier, or a scratch model's zeros) becomes a zero head for the task,
    # exactly what experiments.finetune's reset_head gives the one-process path.
    spec = {"model": start.name, "weights": str(out / "start.pt"), "num_classes": raw.num_classes,
            "train_data": f"{task}:train", "out_dir": str(out), "recipe": "hyperrule",
            "recipe_args": {"batch_size": batch_size},
            "resolution": [recipe.resize, recipe.crop],
            "train": {"schedule": recipe.schedule.to_dict(), "seed": seed,
                      "progress": False, **train}}
    atomic_write_text(out / "run.yaml", yaml.safe_dump(spec, sort_keys=False))
    job = runfile.launch(out / "run.yaml", nproc_per_node=processes)
    job.follow(list(observers))
    state = checkpoint.load(out / CHECKPOINT_FILE)
    net = models.create(start.name, num_classes=raw.num_classes)
    net.load_state_dict(state["model"])
    test = data.load(task, raw.card.eval_split)
    if test_size is not None:
        test = data.SubsetDataset(test, range(min(test_size, len(test))))
    report = predict(net, data.preprocess(test, train=False, resize=recipe.resize,
                                          crop=recipe.crop), progress=progress(),
                     class_names=raw.class_names)
    result = FitResult(step=int(state["step"]), reason=f"torchrun x {processes}")
    return TransferRun(task, len(raw), net, recipe, result, report)


#: How :func:`_transfer_torchrun` signs its files in ``.bitkit-written.json`` (bitkit.fileio).
TORCHRUN_WRITER = "bitkit.lesson.transfer"


def _torchrun_before_records(out: Path, outputs: list[str]) -> list[str]:
    """A folder this function filled before it kept records: its ``run.yaml`` is ours, i.e. a
    run file whose ``out_dir`` is this very folder and whose weights are its ``start.pt``."""
    import yaml

    try:
        spec = yaml.safe_load((out / "run.yaml").read_text())
        ours = (isinstance(spec, dict) and spec.get("recipe") == "hyperrule"
                and Path(spec["out_dir"]).resolve() == out.resolve()
                and Path(spec["weights"]).resolve() == (out / "start.pt").resolve())
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return []
    return outputs if ours else []


# --------------------------------------------------------------------------------------------
# Released files and ImageNet's class names (lesson 09)
# --------------------------------------------------------------------------------------------


def imagenet_class_names() -> list[str]:
    """The 1,000 ILSVRC-2012 class names: ``names[i]`` names output ``i`` of a 1,000-class head.

    Read offline from torchvision (a bitkit dependency). The order is ILSVRC-2012's standard
    one, its WordNet ids sorted (n01440764 "tench" first, n15075141 "toilet tissue" last): the
    label order of TFDS's ``imagenet2012`` (Google's TF2 and JAX BiT code) and of torchvision's
    ``ImageFolder`` over the synset folders (their PyTorch code), so the order of the released
    ``*-ILSVRC2012.npz`` heads' outputs, and of the ``ilsvrc2012_wordnet_lemmas.txt`` list the
    official BiT colab names its predictions with. torchvision gives one short name per class.
    """
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != 1000 or names[0] != "tench" or names[-1] != "toilet tissue":
        raise RuntimeError("torchvision's ImageNet categories are not ILSVRC-2012's 1,000 classes "
                           "in the standard (sorted WordNet id) order")
    return names


def how_to_get(name: str) -> str:
    """How to get the released file ``name`` (e.g. ``"BiT-M-R50x1-ILSVRC2012"``), for a lesson to
    print: its URL, the ``bitkit weights fetch`` line, and the download by hand."""
    from bitkit import weights as w

    src = w.source_of(name)
    return (f"{src.name}.npz ({src.about}): {src.url}\n"
            f"  with network:    bitkit weights fetch {src.name}    (downloads it once, prints "
            f"its path)\n  without network, on a machine with internet access:\n"
            f"{w.manual_download(src.name)}")


def _finetuned_weights(value: Any) -> str | None:
    """A released ILSVRC-2012 fine-tuned file: a 1,000-class head whose outputs have names."""
    from bitkit import weights as w

    if value not in (None, "") and not Path(str(value)).expanduser().is_file():
        name = "BiT-M-R50x1-ILSVRC2012"
        raise Invalid("", problem=f"no such file; download {w.RELEASE_URL}/{name}.npz (`bitkit "
                      f"weights fetch {name}`) and give its path, or None to predict with the "
                      "embedded model's own classes")
    path = _weights(value)
    if path is None:
        return None

    try:
        arch = w.describe(path)
    except ValueError as e:  # damaged, or not a BiT checkpoint: the loader's own message
        raise Invalid("", problem=str(e)) from None
    if arch.num_classes != 1000:
        raise Invalid("", problem=f"holds a head of {arch.num_classes or 'no'} classes; ImageNet "
                      "class names need a file fine-tuned on ILSVRC-2012 (1,000 classes), e.g. "
                      "BiT-M-R50x1-ILSVRC2012.npz (BiT-M-R50x1.npz is the 21,843-class upstream "
                      "model: pass it as weights)")
    return path


CHECKS.update({"finetuned_weights": _finetuned_weights, "download": inputs.boolean()})
