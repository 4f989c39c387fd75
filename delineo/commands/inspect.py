"""``delineo inspect DATASET``: per-volume slice-entropy profiles, to choose a training-slice
filter (``sampling.slice_filter``) before training: where the threshold cuts, and whether it
would drop slices that hold foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from delineo.commands import verb


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="MSD/nnU-Net folder, CSV case list or deoxys HDF5 file")
    p.add_argument("--type", choices=["msd", "csv", "hdf5"], default=None, help="source type (default: from the path)")
    p.add_argument("--case", action="append", default=[], metavar="ID", help="case to inspect (repeatable)")
    p.add_argument("--max-cases", type=int, default=5, help="without --case: the first N cases (default 5)")
    p.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="slice axis (default 2)")
    p.add_argument("--threshold", type=float, default=2.0, help="entropy threshold in bits (default 2.0)")
    p.add_argument("--bins", type=int, default=256, help="histogram bins (default 256)")
    p.add_argument("--channel", type=int, default=0, help="image channel (default 0)")
    p.add_argument("--out", type=Path, default=Path("inspect_output"), help="output folder (default: inspect_output)")


@verb("inspect", "slice-entropy profile of each volume (plot and CSV), to set a training-slice filter", _args)
def cmd_inspect(args: argparse.Namespace) -> int:
    from delineo.evaluate.inspect import inspect_dataset

    results = inspect_dataset(args.dataset, args.out, args.type, args.case, args.max_cases, args.axis,
                              args.threshold, args.bins, args.channel, progress=not args.quiet)
    for r in results:
        print(f"{r['case']}: {r['kept']}/{r['slices']} slices above {args.threshold:g} bits, "
              f"{r['foreground']} with foreground, {r['foreground_dropped']} of those below; {r['plot']}")
    print(f"table: {args.out / 'entropy.csv'}")
    return 0
