"""The ``sinus-anomaly`` command: one entry point, one module per subcommand."""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import signal
import sys
import threading

from SinusAnomalyLib import __version__, dependencies
from SinusAnomalyLib.errors import SinusAnomalyError

# Subcommand name -> module in SinusAnomalyTraining.commands defining add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "synth": "Make a synthetic cohort of head MRIs with known sinus lesions.",
    "extract": "Locate both maxillary sinuses in a head MRI and write 64 mm crops.",
    "prepare": "Extract every scan of a cohort, cache the crops and build patient-level splits.",
    "train-cae": "Train the fold's convolutional autoencoder on its normal training sinuses.",
    "residuals": "Compute the CAE residual targets of every crop for a fold.",
    "pretrain": "Self-supervised pretraining for a fold: residual reconstruction (U-Net) or a baseline.",
    "finetune": "Fine-tune the classifier with a label fraction, with or without pretraining.",
    "evaluate": "Metrics, intervals, ROC/PR plots and report of a run's fine-tuned classifiers.",
    "run": "Run every stage for the configured folds, methods and label fractions, then evaluate.",
    "experiment": "The paper's comparison grid (methods x label fractions x folds, CAE ablation) and its report.",
    "export": "Export a finished run as a model bundle (.sabundle).",
    "classify": "Classify both maxillary sinuses of head MRIs with a model bundle.",
    "demo": "Run the pipeline on a small synthetic cohort (the README's main command).",
    "train-default": "Build the default model the extension ships, from synthetic heads of every real anatomy.",
    "setup": "Install the Python packages SinusAnomaly needs (torch, MONAI, ...), e.g. into 3D Slicer's Python.",
}
# Commands that run without torch and MONAI; every other one checks their versions first.
COMMANDS_WITHOUT_TORCH = {"synth", "extract", "prepare", "setup"}
# Top-level modules whose absence means "run setup" rather than a bug.
DEPENDENCY_MODULES = {"torch", "monai", "nibabel", "scipy", "sklearn", "tqdm", "matplotlib", "SimpleITK", "numpy"}


def _chosen_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), if any."""
    return next((word for word in argv if word in COMMANDS), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``command``, only that subcommand's module is imported.

    Importing every command would import every training dependency: a cold ``classify`` or
    ``--help`` should pay only for what it uses.
    """
    parser = argparse.ArgumentParser(
        prog="sinus-anomaly",
        description="SinusAnomaly: self-supervised detection of paranasal anomalies in the maxillary sinus on head MRI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=summary, description=summary)
            continue
        module = importlib.import_module(f"SinusAnomalyTraining.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=summary, description=(module.__doc__ or summary).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _missing_dependency_message(command: str, exc: ImportError) -> str | None:
    """The message for an ImportError of one of SinusAnomaly's dependencies, else None (a bug)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in DEPENDENCY_MODULES:
        return None
    return (f"sinus-anomaly {command}: error: the Python package '{name}' cannot be imported ({exc}); "
            f"install SinusAnomaly's dependencies with `{dependencies.SETUP_COMMAND}` (in 3D Slicer: "
            "`PythonSlicer SinusAnomalyTraining/slicer_script.py setup`)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _chosen_command(argv) or ""
    try:
        parser = build_parser(command)
    except ImportError as exc:
        message = _missing_dependency_message(command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command not in COMMANDS_WITHOUT_TORCH:
        try:
            found = dependencies.problems()
        except dependencies.UnsupportedPythonError as exc:
            print(f"sinus-anomaly {args.command}: error: {exc}", file=sys.stderr)
            return 2
        if found:
            print(f"sinus-anomaly {args.command}: error: " + dependencies.describe(found), file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.verbose:  # ours only: third-party debug output (matplotlib, pydot) would drown it
        for name in ("SinusAnomalyLib", "SinusAnomalyTraining"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    finished = False
    try:
        with terminate_as_interrupt():
            code = int(args._run(args) or 0)
        finished = True
        return code
    except SinusAnomalyError as exc:
        print(f"sinus-anomaly {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system problem (permissions, disk full): the path and the problem, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sinus-anomaly {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        message = _missing_dependency_message(args.command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sinus-anomaly {args.command}: interrupted; finished outputs are kept, re-run to resume", file=sys.stderr)
        return 130
    finally:
        _leave_process_group(synchronise=finished)


def _leave_process_group(synchronise: bool) -> None:
    """Destroy torchrun's process group if the command joined one: NCCL warns or hangs at exit otherwise
    (after a command that finished, once every rank has: :func:`runtime.cleanup`)."""
    runtime = sys.modules.get("SinusAnomalyTraining.runtime")  # imported only by the commands that use torch
    if runtime is not None:
        runtime.cleanup(synchronise=synchronise)


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (a plain ``kill``, a cluster scheduler, the Slicer module's Cancel) stops every command
    as Ctrl-C does: temporary files and folders are removed, finished outputs and checkpoints stay,
    exit code 130. The previous handler is restored after (tests call :func:`main` in-process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_and_exit(argv: list[str] | None = None) -> None:
    """Entry point of the ``sinus-anomaly`` script, ``python -m`` and the Slicer script.

    Freezes the garbage collector before exiting: the interpreter's final collection over the
    objects torch and MONAI create took about 1 s of a 7-9 s cold ``classify`` on two cores, and
    the operating system reclaims the memory anyway. (``main`` itself leaves the collector alone:
    tests call it in-process.)
    """
    code = main(argv)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run_and_exit()
