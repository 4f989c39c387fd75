"""The ``delineo`` command: one verb per stage, the same flags everywhere.

User errors (:class:`~delineo.errors.DelineoError`) print one sentence and exit with status 2,
without a traceback unless ``--debug``; outputs are written atomically, so a failed command
leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from delineo.errors import DelineoError, InputError
from delineo.track.mirrors import mirror_names

log = logging.getLogger("delineo")


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # on a verb, SUPPRESS keeps `delineo -q VERB` quiet (the verb's default would overwrite it)
    default = False if top else argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors, no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delineo", description="Deep-learning auto-delineation of medical images.")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="train, evaluate and predict on the embedded sample data")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    p.add_argument("--minutes", type=float, default=None, help="training budget in minutes (default from the demo experiment)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_common(p)

    p = sub.add_parser("plan", help="fingerprint a dataset and write a starting experiment file")
    p.add_argument("dataset", type=Path, help="MSD/nnU-Net folder, CSV case list or deoxys HDF5 file")
    p.add_argument("--type", choices=["msd", "csv", "hdf5"], default=None, help="source type (default: from the path)")
    p.add_argument("--out", type=Path, default=None, help="experiment file to write (default: <dataset name>.yaml)")
    p.add_argument("--name", default=None, help="experiment name (default: the dataset folder name)")
    p.add_argument("--budget", default=None,
                   help="training time, e.g. 20m or 1h: fit spacing, patch, batch and width to it by a timed probe "
                        "on --device, and comment every choice in the YAML")
    p.add_argument("--device", default="cpu", help="device the budget is probed on (cpu, cuda; default cpu)")
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
    p.add_argument("--db", default=None, help="experiment database: SQLite file or postgresql:// URL, 'off' for none "
                                              "(default: DELINEO_DB or RUNS/delineo.db)")
    p.add_argument("--mirror", action="append", default=[], choices=mirror_names(), metavar="NAME",
                   help=f"also log to {' or '.join(mirror_names())} (repeatable; added to track.mirrors; "
                        "pip install 'delineo[mirrors]')")
    _add_common(p)

    p = sub.add_parser("evaluate", help="score a run folder, or a folder of predictions against references")
    p.add_argument("target", type=Path, help="run folder, or folder of predicted masks")
    p.add_argument("references", type=Path, nargs="?", help="folder of reference masks (with a predictions folder)")
    p.add_argument("--out", type=Path, default=None, help="output folder for metrics (folder mode)")
    p.add_argument("--cases", default=None, help="with a .delineo target and an MSD dataset: ids, splits.json (test) "
                   "or cases.json (val)")
    p.add_argument("--aggregate", default=None, metavar="NAMES",
                   help="aggregations, comma-separated: mean_per_case, pooled, per_slice (default: all)")
    p.add_argument("--lesions", default=None, metavar="SPEC", nargs="?", const="on",
                   help="lesion-wise metrics (on by default): 'off', or settings such as "
                        "connectivity=6,min_size=3,min_overlap=0.5")
    p.add_argument("--hd95", choices=["pooled", "max_directed"], default=None,
                   help="HD95 definition: pooled (MedPy, default) or max_directed (MONAI)")
    _add_common(p)

    p = sub.add_parser("predict", help="segment new scans with a trained model")
    p.add_argument("model", type=Path, help="checkpoint (.pt), run folder or .delineo pipeline file")
    p.add_argument("input", type=Path, help="image file (.nii, .nii.gz, .nrrd, .mha) or a folder of them")
    p.add_argument("output", type=Path, help="output file (single input) or folder")
    p.add_argument("--probabilities", action="store_true", help="also write the class probabilities")
    p.add_argument("--uncertainty", choices=["variance", "entropy"], default=None,
                   help=".delineo pipelines: also write a per-voxel uncertainty map (across augmentations and members)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation (mirroring); default: the experiment's infer.tta")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None,
                   help="network arithmetic (default: the experiment's infer.precision); bf16 on CPUs with AMX/AVX-512 BF16")
    p.add_argument("--max-memory", dest="max_memory", default=None,
                   help="cap the prediction's working memory, e.g. 2GB (slab by slab; probabilities are not kept)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="folder or case list (.txt/.csv): cases read and preprocessed ahead of the network; "
                        "run under torchrun --nproc_per_node N to shard the cases; reruns skip finished masks")
    p.add_argument("--format", dest="fmt", choices=["nifti", "nrrd", "dicom-seg", "rtstruct", "overlay"], default=None,
                   help="output format (default: the input's format; NIfTI for DICOM input)")
    p.add_argument("--series", default=None, help="DICOM folder with several series: the UID or number to use")
    p.add_argument("--anonymise", action="store_true", help="no source identifiers at all (not even UIDs) in NIfTI/NRRD sidecars")
    p.add_argument("--with-patient-data", dest="patient_data", action="store_true",
                   help="opt in: put patient name, ID, birth date and the source path in NIfTI/NRRD sidecars")
    p.add_argument("--skip-existing", action="store_true",
                   help="folder input: leave out cases whose mask exists (finish an interrupted run)")
    _add_common(p)

    p = sub.add_parser("convert", help="turn a DICOM collection with SEG/RTSTRUCT masks into an MSD dataset")
    p.add_argument("input", type=Path, help="folder of DICOM files (any layout)")
    p.add_argument("output", type=Path, help="new MSD-layout dataset folder")
    p.add_argument("--labels", default=None, help='label map as JSON, e.g. \'{"1": "liver", "2": "lesion"}\'')
    p.add_argument("--name", default="Dataset", help="dataset name for dataset.json")
    p.add_argument("--anonymise", action="store_true", help="do not write patient/study identifiers")
    _add_common(p)

    p = sub.add_parser("explain", help="explain a model's segmentation of a scan (maps and panels)")
    p.add_argument("model", type=Path, help="checkpoint (.pt) or run folder")
    p.add_argument("input", type=Path, nargs="*", metavar="INPUT",
                   help="image file or DICOM folder; for a model with N input channels, N of them in channel order, "
                        "or a folder with one case's channel files case_0000, case_0001, ... (as for predict)")
    p.add_argument("--method", default=None,
                   help="activation, activation-maximisation, saliency, deconvnet, guided-backprop, gradcam, "
                        "gradcam++, occlusion, lesion-occlusion, integrated-gradients, smoothgrad, channel-contribution "
                        "(default: the experiment's explain.method, guided-backprop)")
    p.add_argument("--target", default=None,
                   help="positive-prediction, true-positive, class, region, mean, max, min "
                        "(default: explain.target, positive-prediction)")
    p.add_argument("--layer", default=None, help="layer name (see --list-layers) for activation / Grad-CAM")
    p.add_argument("--label", type=int, default=None, help="label value to explain (multi-label models)")
    p.add_argument("--threshold", type=float, default=None, help="prediction threshold (default: explain.threshold, 0.5)")
    p.add_argument("--reference", type=Path, default=None, help="reference mask (true-positive target, contours)")
    p.add_argument("--slices", type=int, nargs="*", default=None, help="slices for the PNG panel")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="method parameter, e.g. steps=64")
    p.add_argument("--sanity", action="store_true", help="model-randomisation sanity check (Adebayo et al. 2018)")
    p.add_argument("--list-layers", action="store_true", help="list the model's layer names and stop")
    p.add_argument("--out", type=Path, default=Path("explain_output"), help="output folder (default: explain_output)")
    g = p.add_argument_group("occlusion and lesion-occlusion",
                             "the lesion label and probability threshold are --label and --threshold")
    g.add_argument("--box", type=_positive_int, nargs="+", default=None, metavar="N",
                   help="occlusion box side in voxels, one value or one per axis (default 8 for occlusion, "
                        "16 for lesion-occlusion)")
    g.add_argument("--stride", type=_positive_int, nargs="+", default=None, metavar="N",
                   help="step between boxes in voxels, one value or one per axis (default: the box size)")
    g.add_argument("--connectivity", type=int, choices=[4, 8, 6, 18, 26], default=None,
                   help="lesion-occlusion: lesion connectivity, 4/8 in 2D, 6/18/26 in 3D (default: full, 8 or 26)")
    g.add_argument("--min-lesion-size", dest="min_lesion_size", type=_non_negative_int, default=None, metavar="VOXELS",
                   help="lesion-occlusion: ignore lesions smaller than this (default 0)")
    g.add_argument("--min-overlap", dest="min_overlap", type=_fraction, default=None, metavar="FRACTION",
                   help="lesion-occlusion with --reference: a reference lesion counts as detected when this share "
                        "of its voxels is predicted (default 0: any voxel)")
    _add_common(p)

    p = sub.add_parser("series", help="list the DICOM series in a folder")
    p.add_argument("folder", type=Path)
    _add_common(p)
    _add_lr_find_parser(sub)
    from delineo.commands import load_all

    for v in load_all().values():
        p = sub.add_parser(v.name, help=v.help)
        v.add_arguments(p)
        _add_common(p)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a whole number >= 1 is expected")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a whole number >= 0 is expected")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a fraction between 0 and 1 is expected")
    return value


#: explain options that set a method parameter: (argparse dest, parameter name, option)
EXPLAIN_OPTIONS = (("box", "patch", "--box"), ("stride", "stride", "--stride"),
                   ("connectivity", "connectivity", "--connectivity"),
                   ("min_lesion_size", "min_size", "--min-lesion-size"), ("min_overlap", "min_overlap", "--min-overlap"))


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    if not debug:
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every copied attribute


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet, args.debug)
    try:
        from delineo.commands import VERBS

        run = COMMANDS.get(args.verb) or VERBS[args.verb].run
        return int(run(args) or 0)
    except DelineoError as exc:
        if args.debug:
            raise
        print(f"delineo {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk outside an atomic write (caches, logs): still one sentence
        import errno

        if args.debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        print(f"delineo {args.verb}: error: {exc.filename or 'output'}: no space left on the device ({exc.strerror}).",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"delineo {args.verb}: interrupted", file=sys.stderr)
        return 130


def cmd_plan(args: argparse.Namespace) -> int:
    from delineo.config import DataConfig
    from delineo.data.plan import plan_dataset

    kind = args.type or ("csv" if args.dataset.suffix.lower() == ".csv" else
                         "hdf5" if args.dataset.suffix.lower() in (".h5", ".hdf5") else "msd")
    data = DataConfig(source={"type": kind, "path": str(args.dataset.resolve())})
    out = args.out or Path(f"{(args.name or args.dataset.stem).lower()}.yaml")
    if args.budget is not None:
        from delineo.data.budget import parse_duration

        try:
            parse_duration(args.budget)
        except ValueError as exc:
            raise InputError(f"--budget: {exc}.") from None
    path, plan = plan_dataset(data, out, args.name, progress=not args.quiet, budget=args.budget, device=args.device)
    s = plan["sampling"]
    print(f"{path}: {s['mode']} U-Net {plan['model']['filters']}, patch {s['patch_size']}, batch {s['batch_size']}, "
          f"spacing {plan['preprocess']['spacing'] or 'as is'}; train it with: delineo train {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from delineo.config import load_config
    from delineo.train.loop import train

    cfg = load_config(args.experiment, args.overrides)
    if args.mirror:  # kept in the run's config.yaml, so --resume mirrors too
        cfg.track.mirrors = [*cfg.track.mirrors, *[m for m in args.mirror if m not in cfg.track.mirrors]]
    if args.db:  # the training loop's tracker reads it (every torchrun rank parses the same arguments)
        import os

        os.environ["DELINEO_DB"] = args.db
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
            from delineo.track.tracker import record_evaluation

            record_evaluation(run_dir, args.runs)
            if cfg.train.task == "classification":
                print(f"{run_dir}: validation F1 {summary.get('f1', float('nan')):.4f}, balanced accuracy "
                      f"{summary.get('balanced_accuracy', float('nan')):.4f}; metrics {run_dir / 'metrics'}")
            else:
                print(f"{run_dir}: mean Dice {summary['mean_dice']:.4f}; report {run_dir / 'report.html'}")
        elif _is_main_process():
            print(f"{run_dir}: model {run_dir / 'checkpoints' / 'best.pt'}")
    if len(folds) > 1 and not args.no_evaluate and _is_main_process() and cfg.train.task == "segmentation":
        from delineo.evaluate.run import summarise_folds

        summary = summarise_folds(args.runs / cfg.name)
        folds_text = ", ".join(f"{k} {v:.4f}" for k, v in summary["folds"].items() if v is not None)
        print(f"{args.runs / cfg.name}: cross-validation mean Dice {summary['mean_dice']:.4f} ({folds_text}); "
              f"metrics in {args.runs / cfg.name / 'metrics'}")
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from delineo.modelfile.pipeline_file import is_pipeline_file

    if is_pipeline_file(args.target):  # a .delineo model scored on a dataset's cases
        from delineo.evaluate.pipeline import evaluate_pipeline

        if args.references is None:
            raise DelineoError(f"{args.target}: give the dataset to score it on: delineo evaluate MODEL.delineo DATASET.")
        out = args.out or Path(args.target).with_suffix("").with_name(Path(args.target).stem + "_evaluation")
        s = evaluate_pipeline(args.target, args.references, out, args.cases, progress=not args.quiet,
                              options={"aggregate": args.aggregate, "lesions": args.lesions, "hd95": args.hd95})
        print(f"{args.target}: mean Dice {s['mean_dice']:.4f} over {s['n_cases']} cases, "
              f"{s['seconds_per_case']:.2f} s per case; metrics in {out / 'metrics'}")
        return 0
    if args.references is None:
        from delineo.evaluate.run import evaluate_run

        summary = evaluate_run(args.target, progress=not args.quiet,
                               options={"aggregate": args.aggregate, "lesions": args.lesions, "hd95": args.hd95})
        from delineo.track.tracker import record_evaluation

        record_evaluation(args.target, Path(args.target).resolve().parent.parent)  # RUNS/<experiment>/<fold>
        print(f"{args.target}: mean Dice {summary['mean_dice']:.4f}; report {Path(args.target) / 'report.html'}")
        return 0
    from delineo.evaluate.options import evaluate_options
    from delineo.evaluate.table import evaluate_folders

    out = args.out or Path(args.target).parent / "evaluation"
    summary = evaluate_folders(args.target, args.references, None, out,
                               evaluate_options(None, args.aggregate, args.lesions, args.hd95))
    print(f"{args.target}: mean Dice {summary['mean_dice']:.4f} over {summary['n_cases']} cases; "
          f"metrics in {out / 'metrics'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from delineo.infer.run import predict_paths
    from delineo.infer.shard import LIST_SUFFIXES, predict_many, rank_world

    if rank_world()[1] > 1 or args.prefetch is not None or args.input.suffix.lower() in LIST_SUFFIXES:
        s = predict_many(args.model, args.input, args.output, fmt=args.fmt, tta=args.tta, device=args.device,
                         prefetch=2 if args.prefetch is None else args.prefetch, precision=args.precision,
                         max_memory=args.max_memory, progress=not args.quiet)
        if rank_world()[0] == 0:
            print(f"{s.predicted} predicted, {s.skipped} skipped, {len(s.failed)} failed of {s.cases} case(s) in "
                  f"{s.seconds:.1f} s ({s.processes} process(es)); summary in {args.output / 'predict_summary.json'}")
            for f in s.failed:
                print(f"failed: {f['reason']}", file=sys.stderr)
        return 1 if s.failed else 0

    written = predict_paths(args.model, args.input, args.output, probabilities=args.probabilities,
                            uncertainty=args.uncertainty,
                            tta=args.tta, device=args.device, progress=not args.quiet, fmt=args.fmt,
                            series=args.series, anonymise=args.anonymise, patient_data=args.patient_data,
                            skip_existing=args.skip_existing, precision=args.precision, max_memory=args.max_memory)
    for path in written:
        print(path)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import json

    from delineo.io.convert import convert_dicom_collection

    labels = None
    if args.labels:
        try:
            labels = {int(k): str(v) for k, v in json.loads(args.labels).items()}
        except (ValueError, AttributeError):
            raise DelineoError(f"--labels {args.labels}: expected JSON such as '{{\"1\": \"liver\"}}'.") from None
    out = convert_dicom_collection(args.input, args.output, labels, name=args.name, anonymise=args.anonymise)
    print(f"{out}: MSD dataset written (dataset.json, imagesTr/, labelsTr/)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from delineo.explain.run import explain_scan, model_layers, parse_params

    if args.list_layers:
        print("\n".join(model_layers(args.model)))
        return 0
    if not args.input:
        raise DelineoError("explain: an INPUT image is required (or use --list-layers).")
    params = parse_params(args.param)
    names = {}
    for dest, key, option in EXPLAIN_OPTIONS:  # typed options win over --param of the same name
        value = getattr(args, dest)
        if value is not None:
            params[key] = value[0] if isinstance(value, list) and len(value) == 1 else value
            names[key] = option
    if "min_overlap" in names and args.reference is None:
        raise DelineoError("--min-overlap: detection is judged against reference lesions; give --reference.")
    report = explain_scan(args.model, args.input, args.out, args.method, args.target, args.layer, args.slices,
                          args.label, args.threshold, args.reference, args.sanity, params, option_names=names)
    print(f"map: {report['map']}\npanels: {report['panels']}\nseconds: {report['seconds']:.2f}")
    if "shares" in report["info"]:
        print(f"channel shares: {report['info']['shares']}")
    if "channel_attribution" in report:
        per = report["channel_attribution"]
        for i, ch in enumerate(per["channels"]):
            print(f"channel {i} ({ch}): mean |map| {per['mean_abs'][i]:.4g}, share inside the prediction "
                  f"{per['share_inside'][i]:.3f}, outside {per['share_outside'][i]:.3f}")
        print(f"channels: {report['channels_json']}")
    if "sanity" in report:
        rep = report["sanity"]
        print(rep.table())
        if rep.flagged:
            print(f"sanity check: the {rep.method} map does not depend on the weights; do not trust it.")
            return 1
    return 0


def cmd_series(args: argparse.Namespace) -> int:
    from delineo.io.dicom import list_series

    infos = list_series(args.folder)
    if not infos:
        raise InputError(f"{args.folder}: no DICOM series found.")
    for i in infos:
        print(i.describe())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from delineo.demo import run_demo

    run_demo(args.out, minutes=args.minutes, overrides=args.overrides, progress=not args.quiet)
    return 0


def _add_lr_find_parser(sub) -> None:
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


COMMANDS = {"plan": cmd_plan, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo,
            "convert": cmd_convert, "series": cmd_series, "explain": cmd_explain, "lr-find": cmd_lr_find}

if __name__ == "__main__":
    sys.exit(main())
