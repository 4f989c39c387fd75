"""The ``delineo`` command: one verb per stage, the same flags everywhere.

User errors (:class:`~delineo.errors.DelineoError`) print one sentence and exit with status 2,
without a traceback unless ``--debug``; outputs are written atomically, so a failed command
leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from delineo.errors import DelineoError, InputError

log = logging.getLogger("delineo")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delineo", description="Deep-learning auto-delineation of medical images.")
    _add_common(parser)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="train, evaluate and predict on the embedded sample data")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    p.add_argument("--minutes", type=float, default=None, help="training budget in minutes (default from the demo experiment)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_common(p)

    p = sub.add_parser("train", help="train an experiment (one fold, or all folds)")
    p.add_argument("experiment", type=Path, help="experiment file (YAML or JSON)")
    p.add_argument("--fold", default="0", help="fold number, 'all' for every fold, 'none' for all data without validation")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs root folder (default: runs)")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder (default: runs/<name>/cache)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.epochs=3")
    p.add_argument("--no-evaluate", action="store_true", help="skip the evaluation after training")
    _add_common(p)

    p = sub.add_parser("evaluate", help="score a run folder, or a folder of predictions against references")
    p.add_argument("target", type=Path, help="run folder, or folder of predicted masks")
    p.add_argument("references", type=Path, nargs="?", help="folder of reference masks (with a predictions folder)")
    p.add_argument("--out", type=Path, default=None, help="output folder for metrics (folder mode)")
    _add_common(p)

    p = sub.add_parser("predict", help="segment new scans with a trained model")
    p.add_argument("model", type=Path, help="checkpoint (.pt) or run folder")
    p.add_argument("input", type=Path, help="image file (.nii, .nii.gz, .nrrd, .mha) or a folder of them")
    p.add_argument("output", type=Path, help="output file (single input) or folder")
    p.add_argument("--probabilities", action="store_true", help="also write the class probabilities")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (mirroring)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    _add_common(p)
    return parser


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet, args.debug)
    try:
        return int(COMMANDS[args.verb](args) or 0)
    except DelineoError as exc:
        if args.debug:
            raise
        print(f"delineo {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"delineo {args.verb}: interrupted", file=sys.stderr)
        return 130


def cmd_train(args: argparse.Namespace) -> int:
    from delineo.config import load_config
    from delineo.train.loop import train

    cfg = load_config(args.experiment, args.overrides)
    fold_arg = str(args.fold).lower()
    folds: list[Optional[int]]
    if fold_arg == "all":
        folds = list(range(cfg.data.folds))
    elif fold_arg == "none":
        folds = [None]
    else:
        try:
            folds = [int(fold_arg)]
        except ValueError:
            raise DelineoError(f"--fold {args.fold}: expected a number, 'all' or 'none'.") from None
    for fold in folds:
        run_dir = train(cfg, args.runs, fold, args.resume, args.cache, progress=not args.quiet)
        if fold is not None and not args.no_evaluate and _is_main_process():
            from delineo.evaluate.run import evaluate_run

            summary = evaluate_run(run_dir, progress=not args.quiet)
            print(f"{run_dir}: mean Dice {summary['mean_dice']:.4f}; report {run_dir / 'report.html'}")
        elif _is_main_process():
            print(f"{run_dir}: model {run_dir / 'checkpoints' / 'best.pt'}")
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.references is None:
        from delineo.evaluate.run import evaluate_run

        summary = evaluate_run(args.target, progress=not args.quiet)
        print(f"{args.target}: mean Dice {summary['mean_dice']:.4f}; report {Path(args.target) / 'report.html'}")
        return 0
    from delineo.evaluate.table import evaluate_folders

    out = args.out or Path(args.target).parent / "evaluation"
    summary = evaluate_folders(args.target, args.references, None, out)
    print(f"{args.target}: mean Dice {summary['mean_dice']:.4f} over {summary['n_cases']} cases; "
          f"metrics in {out / 'metrics'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from delineo.infer.run import predict_paths

    written = predict_paths(args.model, args.input, args.output, probabilities=args.probabilities,
                            tta=args.tta, device=args.device, progress=not args.quiet)
    for path in written:
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from delineo.demo import run_demo

    run_demo(args.out, minutes=args.minutes, overrides=args.overrides, progress=not args.quiet)
    return 0


def _add_lr_find_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("lr-find", help="learning-rate range test: plot loss against lr and suggest a value")
    p.add_argument("experiment", type=Path, help="experiment file (YAML or JSON)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set sampling.batch_size=8")
    p.add_argument("--out", type=Path, default=None, help="plot file (default: runs/<name>/lr_find.png)")
    p.add_argument("--steps", type=int, default=100, help="mini-batches in the sweep (default 100)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    p.add_argument("--fold", default="0", help="fold whose training cases are sampled, or 'none' for all")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs root folder (default: runs)")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder (default: runs/<name>/cache)")
    _add_common(p)
    return parser


_build_parser_without_lr_find = build_parser


def build_parser() -> argparse.ArgumentParser:  # noqa: F811 - the verbs above plus lr-find
    return _add_lr_find_parser(_build_parser_without_lr_find())


def cmd_lr_find(args: argparse.Namespace) -> int:
    from delineo.config import load_config
    from delineo.train.lr_find import lr_find_experiment

    cfg = load_config(args.experiment, args.overrides)
    fold_arg = str(args.fold).lower()
    try:
        fold = None if fold_arg == "none" else int(fold_arg)
    except ValueError:
        raise DelineoError(f"--fold {args.fold}: expected a number or 'none'.") from None
    if args.steps < 2 or not 0 < args.start < args.end:
        raise DelineoError("lr-find needs --steps >= 2 and 0 < --start < --end.")
    out = args.out or args.runs / cfg.name / "lr_find.png"
    lrs, _, suggestion = lr_find_experiment(cfg, args.runs, fold, args.cache, args.steps, args.start, args.end,
                                            str(out))
    if suggestion is None:
        print(f"{out}: no suggestion, the loss diverged after {len(lrs)} step(s); lower --start or --end.")
        return 1
    print(f"{out}: suggested learning rate {suggestion:.3g} (train.optimizer.lr)")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo,
            "lr-find": cmd_lr_find}

if __name__ == "__main__":
    sys.exit(main())
