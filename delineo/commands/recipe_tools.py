"""Verbs of the recipes: run-length CSVs and the SIIM converter (pneumothorax), test-fold
prediction into the HDF5 fold layout and the per-modality gradient panels (head and neck),
tumour burden and the error-overlap matrix (liver)."""

from __future__ import annotations

import argparse
from pathlib import Path

from delineo.commands import verb


def _rle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("masks", type=Path, help="folder of predicted 2D masks (PNG, NIfTI, .npy, ...)")
    p.add_argument("output", type=Path, help="CSV to write (ImageId,EncodedPixels)")
    p.add_argument("--flavour", choices=["absolute", "relative"], default="absolute",
                   help="absolute: 1-based starts (Kaggle submissions); relative: the SIIM train-rle.csv form")


@verb("rle-csv", "write a Kaggle-style CSV of run-length encoded 2D masks (SIIM column-major, -1 when empty)", _rle_args)
def cmd_rle_csv(args: argparse.Namespace) -> int:
    from delineo.errors import InputError
    from delineo.io.files import case_name, is_image_file, read_image
    from delineo.io.planar import to_rows_cols
    from delineo.io.rle import write_rle_csv

    files = sorted(f for f in Path(args.masks).iterdir() if is_image_file(f) and not f.name.startswith(".")) \
        if Path(args.masks).is_dir() else []
    if not files:
        raise InputError(f"{args.masks}: no mask files in this folder.")
    rows = [(case_name(f), to_rows_cols(read_image(f))) for f in files]
    print(write_rle_csv(args.output, rows, flavour=args.flavour))
    return 0


def _hdf5_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="checkpoint (.pt) or run folder")
    p.add_argument("source", type=Path, help="HDF5 file in the deoxys fold layout")
    p.add_argument("output", type=Path, help="HDF5 file to write (fold_K with x, y, patient_idx, predicted)")
    p.add_argument("--fold", type=int, required=True, help="the fold to predict (the held-out test fold)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")


@verb("predict-hdf5", "predict one fold of a deoxys HDF5 file and write it back in the same layout", _hdf5_args)
def cmd_predict_hdf5(args: argparse.Namespace) -> int:
    from delineo.infer.hdf5_folds import predict_hdf5_fold
    from delineo.infer.predictor import Predictor

    model = args.model / "checkpoints" / "best.pt" if args.model.is_dir() else args.model
    print(predict_hdf5_fold(Predictor.from_checkpoint(model, device=args.device), args.source, args.fold, args.output))
    return 0


def _burden_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mask", type=Path, help="label map (NIfTI, NRRD, ...) with liver and tumour labels")
    p.add_argument("--liver", type=int, default=1, help="liver label value (default 1)")
    p.add_argument("--tumour", type=int, default=2, help="tumour label value (default 2)")


@verb("burden", "liver and tumour volume in ml and the tumour burden of a label map", _burden_args)
def cmd_burden(args: argparse.Namespace) -> int:
    from delineo.evaluate.burden import tumour_burden
    from delineo.io.files import read_image

    b = tumour_burden(read_image(args.mask), args.liver, args.tumour)
    print(f"{args.mask}: liver {b['liver_ml']:.1f} ml, tumour {b['tumour_ml']:.2f} ml, "
          f"tumour burden {100 * b['tumour_burden']:.2f} %")
    return 0


def _overlap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("references", type=Path, help="folder of reference masks")
    p.add_argument("predictions", type=Path, nargs="+", help="one folder of predicted masks per network (2 or more)")
    p.add_argument("--label", type=int, default=1, help="label value whose errors are compared (default 1)")


@verb("error-overlap", "pairwise Dice between the error masks of several networks on the same cases", _overlap_args)
def cmd_error_overlap(args: argparse.Namespace) -> int:
    from delineo.errors import InputError
    from delineo.evaluate.burden import error_overlap_matrix
    from delineo.io.files import case_name, is_image_file, read_image

    def files(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder of masks.")
        return {case_name(f): f for f in folder.iterdir() if is_image_file(f) and not f.name.startswith(".")}

    if len(args.predictions) < 2:
        raise InputError("error-overlap needs at least two prediction folders.")
    refs = files(args.references)
    preds = [files(p) for p in args.predictions]
    shared = sorted(set(refs).intersection(*preds))
    if not shared:
        raise InputError(f"{args.references}: no case is in every prediction folder.")
    references = [read_image(refs[c]).array for c in shared]
    predictions = [[read_image(p[c]).array for c in shared] for p in preds]
    m = error_overlap_matrix(predictions, references, args.label)
    names = [p.parent.parent.name if p.name == "best" else p.name for p in args.predictions]
    width = max(len(n) for n in names) + 2
    print(f"error-mask Dice over {len(shared)} cases (label {args.label})")
    print(" " * width + "".join(f"{i:>8d}" for i in range(len(names))))
    for i, (name, row) in enumerate(zip(names, m)):
        print(f"{i} {name:<{width - 2}}" + "".join(f"{v:8.3f}" for v in row))
    return 0


def _siim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dicoms", type=Path, help="folder with the SIIM .dcm files (any depth; file name = ImageId)")
    p.add_argument("rle_csv", type=Path, help="train-rle.csv (ImageId, EncodedPixels)")
    p.add_argument("output", type=Path, help="new MSD folder (imagesTr/, labelsTr/, dataset.json, views.csv)")
    p.add_argument("--flavour", choices=["relative", "absolute"], default="relative",
                   help="run-length flavour of the CSV (relative: the challenge's train-rle.csv)")
    p.add_argument("--max-images", type=int, default=None, help="convert only the first N images (quick runs)")


@verb("convert-siim", "turn SIIM-ACR pneumothorax DICOMs + train-rle.csv into an MSD folder", _siim_args)
def cmd_convert_siim(args: argparse.Namespace) -> int:
    from delineo.io.siim import convert_siim

    print(convert_siim(args.dicoms, args.rle_csv, args.output, args.flavour, args.max_images))
    return 0


def _modality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="checkpoint (.pt) or run folder of a multi-channel model")
    p.add_argument("inputs", type=Path, nargs="+",
                   help="one file per channel (case_0000, case_0001, ...), or a deoxys HDF5 file with --fold")
    p.add_argument("--fold", type=int, default=None, help="HDF5 input: the fold group (its first patient, or --patient)")
    p.add_argument("--patient", default=None, help="HDF5 input: the patient_idx to show")
    p.add_argument("--names", default=None, help="channel names, comma-separated (default: CT,PET for 2 channels)")
    p.add_argument("--out", type=Path, default=Path("modality_gradients.png"), help="PNG to write")


@verb("modality-gradients", "per-channel gradient panels (magnitude, positive, negative): which modality drove a contour",
      _modality_args)
def cmd_modality_gradients(args: argparse.Namespace) -> int:
    import numpy as np

    from delineo.errors import InputError
    from delineo.explain.modality import channel_summary, modality_gradients, save_modality_panels
    from delineo.infer.predictor import Predictor
    from delineo.io.files import read_image

    model = args.model / "checkpoints" / "best.pt" if args.model.is_dir() else args.model
    predictor = Predictor.from_checkpoint(model, device="cpu")
    if len(args.inputs) == 1 and args.inputs[0].suffix.lower() in (".h5", ".hdf5"):
        from delineo.config import DataConfig, DataSource
        from delineo.data.sources import load_dataset

        if args.fold is None:
            raise InputError(f"{args.inputs[0]}: an HDF5 input needs --fold.")
        cases = [c for c in load_dataset(DataConfig(source=DataSource(type="hdf5", path=str(args.inputs[0])))).cases
                 if c.fold == args.fold and (args.patient is None or c.patient == str(args.patient))]
        if not cases:
            raise InputError(f"{args.inputs[0]}: no patient {args.patient or ''} in fold_{args.fold}.")
        images, _ = cases[0].load()
    else:
        images = [read_image(p) for p in args.inputs]
    n = len(images)
    names = args.names.split(",") if args.names else (["CT", "PET"] if n == 2 else [f"channel {i}" for i in range(n)])
    if len(names) != n:
        raise InputError(f"--names {args.names}: {len(names)} names for {n} channels.")
    grad, pred = modality_gradients(predictor, images)
    axis = predictor.meta.axis if predictor.meta.mode != "3d" else 2
    stack = np.stack([np.asarray(im.array, dtype=np.float32) for im in images])
    print(save_modality_panels(args.out, stack, grad, pred, names, axis=axis))
    for name, s in channel_summary(grad, pred, names).items():
        print(f"{name}: mean |g| {s['magnitude']:.3g}, positive {s['positive']:.3g}, negative {s['negative']:.3g} "
              f"(inside the prediction)")
    return 0
