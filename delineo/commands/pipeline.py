"""``delineo pipeline build P.yaml --out M.delineo`` and ``delineo info M.delineo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from delineo.commands import verb


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build"], help="build: assemble a pipeline file into a .delineo model")
    p.add_argument("pipeline", type=Path, help="pipeline file (YAML or JSON)")
    p.add_argument("--out", type=Path, default=None, help="model file to write (default: <pipeline name>.delineo)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default) for the searches")
    p.add_argument("--max-cases", type=int, default=None, help="bound the out-of-fold cases each search uses")


@verb("pipeline", "assemble trained runs into one .delineo model file (searches run on validation data)",
      _pipeline_args)
def cmd_pipeline(args: argparse.Namespace) -> int:
    from delineo.infer.pipeline.build import build_pipeline

    out = args.out or Path(args.pipeline.stem + ".delineo")
    written, pipe = build_pipeline(args.pipeline, out, args.device, args.max_cases, progress=not args.quiet)
    print("\n".join(pipe.describe()))
    print(f"{written}: pipeline written; run it with: delineo predict {written} INPUT OUTPUT")
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help=".delineo pipeline file or a run folder / checkpoint")


@verb("info", "print what a .delineo file (or a checkpoint) holds", _info_args)
def cmd_info(args: argparse.Namespace) -> int:
    from delineo.modelfile.pipeline_file import is_pipeline_file

    if is_pipeline_file(args.model):
        from delineo.infer.pipeline.runner import Pipeline
        from delineo.modelfile.pipeline_file import read_pipeline_file

        pf = read_pipeline_file(args.model)
        m = pf.manifest
        pipe = Pipeline.from_file_data(pf, "cpu", str(args.model))
        n = sum(t.numel() for d in pf.tensors for t in d.values())
        print(f"{args.model}: {m['format']}, written by Delineo {m.get('delineo_version')} on {m.get('created')}; "
              f"{n / 1e6:.2f} M weights; checksums verified")
        print("\n".join(pipe.describe()))
        return 0
    from delineo.modelfile.checkpoint import ModelMeta, load_checkpoint

    ckpt = load_checkpoint(args.model)
    meta = ModelMeta.from_dict(ckpt["meta"])
    print(f"{ckpt['path']}: checkpoint of {ckpt['config'].get('name')}, {ckpt['config']['model'].get('name')} "
          f"{meta.mode}, channels {', '.join(meta.channels)}, labels {meta.labels}")
    return 0
