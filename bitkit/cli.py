"""The ``bitkit`` command line; ``python -m bitkit`` is the same program.

Every command's options are declared here, in one file, so ``bitkit --help`` and
``bitkit COMMAND --help`` answer at once: nothing heavy (torch, papermill) is imported until a
command runs. A command's body is a public ``*_command(args)`` function in the module that holds
its logic, named here as ``"module:function"``: a newcomer finds a command's options in this
file and its code next to the logic it runs.

Conventions, as in pip, torchrun and papermill: ``--version``; ``-h``/``--help`` everywhere;
exit status 0 on success, 1 when the job itself failed (a notebook cell raised, training
diverged), 2 for a usage mistake (bad option, unknown name, bad value), with a one-line message
that names the problem and the fix instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from bitkit import __version__

# ------------------------------------------------------------------------------- the commands
# Defaults shown in --help are repeated from the modules that own them; tests/test_cli.py
# checks that they agree, so the help text cannot drift from the code.
DEFAULT_CELL_TIMEOUT = 3600
KERNEL = "bitkit"
HYPERRULE_BATCH = 512
HYPERRULE_LR = 0.003
BIT_BUCKET = "https://storage.googleapis.com/bit_models"
FETCH_SOURCES = ("auto", "hub", "bucket")


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="R26x0.25", metavar="NAME",
                   help="model name (see bitkit.models.list_models()); default R26x0.25")
    p.set_defaults(handler="bitkit.demo:demo_command")


def _weights(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="which BiT architecture a weights file holds",
                          description="Read a checkpoint (.npz, .safetensors, .pt) and print the "
                          "ResNet-v2 it holds. A file that is not a BiT ResNet is an error.")
    info.add_argument("path", help="the weights file")
    info.set_defaults(handler="bitkit.weights:info_command")
    conv = sub.add_parser("convert", help="convert between .npz, .safetensors and .pt",
                          description="Load a checkpoint and write it in another format.")
    conv.add_argument("src", help="the weights file to read")
    conv.add_argument("dst", help="output path; its suffix (.npz, .safetensors, .pt) picks the "
                      "format")
    conv.add_argument("--timm-names", action="store_true",
                      help="write timm's parameter names (for timm.create_model)")
    conv.set_defaults(handler="bitkit.weights:convert_command")
    fetch = sub.add_parser(
        "fetch", help="download a released checkpoint once and print its path",
        description="Download a released BiT checkpoint into the cache and print its path; a "
        "file already there needs no network. BiT-M upstream and BiT-M fine-tuned on "
        "ILSVRC-2012 come from the Hugging Face Hub (timm's copies, in the Hugging Face cache "
        "$HF_HUB_CACHE), the rest (BiT-S, VTAB-1k runs) from Google's bucket, resumable and "
        "md5-checked. Offline (no network, HF_HUB_OFFLINE=1) the error says how to download "
        "the file by hand.")
    fetch.add_argument("name", nargs="?", metavar="NAME",
                       help="a released name: BiT-M-R50x1, BiT-S-R101x3, BiT-M-R50x1-ILSVRC2012, "
                       "BiT-M-R50x1-run0-caltech101, ... (--list shows them)")
    fetch.add_argument("--list", action="store_true",
                       help="list the released names and where each comes from, and exit")
    fetch.add_argument("--cache-dir", metavar="DIR",
                       help="folder for the files (default $BITKIT_WEIGHTS or "
                       "~/.cache/bitkit/weights)")
    fetch.add_argument("--source", choices=FETCH_SOURCES, default="auto",
                       help="auto (default): the Hub where the name is there, else or on failure "
                       "Google's bucket; hub or bucket: only that one")
    fetch.add_argument("--base-url", metavar="URL",
                       help=f"a mirror of Google's bucket (default {BIT_BUCKET})")
    fetch.set_defaults(handler="bitkit.weights:fetch_command")


def _hyperrule(p: argparse.ArgumentParser) -> None:
    p.add_argument("card", nargs="?", metavar="DATASET",
                   help="a data card name (`bitkit cards`): its training-set and image size")
    p.add_argument("--train-size", type=int, metavar="N",
                   help="number of training examples (k-shot: k * classes); overrides the card")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="image height and width in pixels; overrides the card")
    p.add_argument("--batch-size", type=int, default=HYPERRULE_BATCH, metavar="B",
                   help=f"global batch size (default {HYPERRULE_BATCH}, the paper's)")
    p.add_argument("--batch-split", type=int, default=1, metavar="K",
                   help="micro-batches per step (gradient accumulation; exact with GroupNorm)")
    p.add_argument("--base-lr", type=float, default=HYPERRULE_LR, metavar="LR",
                   help=f"learning rate at batch 512 (default {HYPERRULE_LR}, the paper's)")
    p.add_argument("--rescale-for-batch", action="store_true",
                   help="NOT BiT: scale lr and steps linearly when batch != 512")
    p.add_argument("--json", action="store_true", help="print the recipe as JSON")
    p.set_defaults(handler="bitkit.hyperrule:hyperrule_command")


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="RUN.yaml",
                   help="the run file (see docs/distributed.md)")
    p.set_defaults(handler="bitkit.runfile:train_command")


def _cards(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show one card in full")
    p.add_argument("--group", metavar="GROUP",
                   help="only list this group (e.g. embedded-natural, vtab-natural)")
    p.set_defaults(handler="bitkit.data.cards:cards_command")


def _notebook_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", help="path to a .ipynb (e.g. notebooks/00_quickstart.ipynb)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a parameter (value read as YAML: 3, 0.1, 1e-4, true, [1, 2], text)")
    p.add_argument("-f", "--parameters-file", metavar="PARAMS.yaml",
                   help="a YAML mapping of parameters (-p wins over it)")
    p.add_argument("--cell-timeout", type=int, default=DEFAULT_CELL_TIMEOUT, metavar="SECONDS",
                   help=f"fail a cell that runs longer than this (default {DEFAULT_CELL_TIMEOUT})")
    p.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel name (default {KERNEL})")
    p.add_argument("--quiet", action="store_true", help="do not echo cell output while running")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also write every training run's TensorBoard event files under DIR "
                   "(needs the tensorboard extra)")


def _run(p: argparse.ArgumentParser) -> None:
    _notebook_options(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<notebook name>)")
    p.add_argument("--solutions", action="store_true",
                   help="also run the worked solutions (solutions/<notebook>.md beside it) after "
                   "the lesson's cells, in the same kernel")
    p.set_defaults(handler="bitkit.runs:run_command")


def _prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lesson", metavar="NN", help="only the models lesson NN uses (e.g. 02)")
    p.add_argument("--list", action="store_true",
                   help="list the shared models, their lessons and whether they are cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler="bitkit.lesson:prepare_command")


def _sweep(p: argparse.ArgumentParser) -> None:
    _notebook_options(p)
    p.add_argument("-g", "--grid", nargs=2, action="append", metavar=("NAME", "V1,V2,..."),
                   help="an axis of the grid: comma-separated values, each read as YAML; "
                   "bracket list values: -g tasks '[world-objects, digits],[world-count]'")
    p.add_argument("--search", type=int, metavar="N",
                   help="the first N supplementary-A random-search trials (bitkit.hyperrule)")
    p.add_argument("--search-seed", type=int, default=0, metavar="SEED",
                   help="seed of the random search (default 0)")
    p.add_argument("--steps-scale", type=float, default=1.0, metavar="X",
                   help="multiply each trial's steps, and BiT-HyperRule's in the notebook, so "
                   "both keep supplementary A's ratio (e.g. 0.01 for a CPU-sized search)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default runs/<notebook>-sweep)")
    p.add_argument("--sbatch", action="store_true",
                   help="write a SLURM array script (and per-run params) instead of running")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="GPUs per array task (with --sbatch; default 1)")
    p.add_argument("--collect", action="store_true",
                   help="only print the table of an existing sweep folder (e.g. after SLURM)")
    p.set_defaults(handler="bitkit.runs:sweep_command")


#: (name, one-line help, description, options), in the order ``bitkit --help`` lists them.
COMMANDS: list[tuple[str, str, str, Callable[[argparse.ArgumentParser], None]]] = [
    ("demo", "the smallest end-to-end job: model, weights round trip, parameter table",
     "Build a model, write and read back the released .npz layout, print its parameters.",
     _demo),
    ("weights", "fetch, inspect and convert checkpoints (.npz, safetensors, timm)",
     "Download, inspect and convert BiT checkpoints.", _weights),
    ("hyperrule", "print BiT-HyperRule's hyper-parameters for a task, with reasons",
     "BiT-HyperRule (paper 3.3) for a dataset card, or for N training images of H x W "
     "pixels (--train-size, --image-size).", _hyperrule),
    ("train", "train as a YAML run file says (torchrun-ready)",
     "Run `fit` as a YAML run file describes; the same command runs under torchrun / srun "
     "for data-parallel training: torchrun --nproc-per-node=8 -m bitkit train --config RUN.yaml",
     _train),
    ("cards", "list and validate the data cards",
     "List and validate the data cards (data_cards/*.yaml and $BITKIT_CARD_PATH).", _cards),
    ("run", "execute a notebook headless (papermill) with parameters",
     "Execute a lesson notebook with papermill. The output folder receives the executed "
     "notebook, an HTML export, metrics.json and parameters.yaml.", _run),
    ("prepare", "build the upstream models the lessons share (run once before class)",
     "Pre-train, once, every upstream model the lessons use with their defaults "
     "(bitkit.lesson.SHARED_UPSTREAMS), into the cache ($BITKIT_CACHE or ~/.cache/bitkit); "
     "a model already there is not trained again.", _prepare),
    ("sweep", "run a notebook over a parameter grid or random-search trials",
     "Fan a notebook out over a grid (-g) or the supplementary-A random search (--search N), "
     "one run after another here, or as a SLURM array (--sbatch).", _sweep),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitkit", description="Big Transfer (BiT) workbench: models, training, analysis.",
        epilog="Run `bitkit COMMAND --help` for a command's options.")
    parser.add_argument("-V", "--version", action="version", version=f"bitkit {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary, description, add_options in COMMANDS:
        add_options(sub.add_parser(name, help=summary, description=description))
    return parser


def _handler(spec: str) -> Callable[[argparse.Namespace], int | None]:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(_handler(args.handler)(args) or 0)
    # user mistakes: a message, no traceback (FileExistsError: bitkit will not replace a file of
    # the user's, bitkit.fileio.ForeignFilesError)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        # str(KeyError("msg")) is "'msg'" (its repr): print the message itself.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"bitkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
