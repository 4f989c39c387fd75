"""Benchmark: peak memory and time of whole-volume sliding-window prediction, unbounded against
``infer.max_memory`` (slab by slab) and against MONAI's ``sliding_window_inference`` when MONAI
is installed; then where the time per window goes (Delineo's U-Net against MONAI's).

    python benchmarks/memory_cap.py [--shape 512 512 300] [--patch 96] [--cap 2GB] [--threads 2]

Each variant runs in its own process (peak RSS is per process); the model is built and one
window predicted before the peak is reset, so the figure is the prediction's own working memory
above the interpreter, torch and the model. The network is a 14-label 3D U-Net of the size of
MONAI's anchor (Delineo: filters 16-256, instance norm, 5.6 M parameters; MONAI: UNet channels
16-256, strides 2, two residual units, 4.8 M). The default shape is the issue's 512x512x300;
on a shared CPU pass a smaller one (e.g. --shape 256 256 150) and say so. Compare the ratios:
the absolute seconds move with the load on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time, torch
from delineo.infer.memory import peak_rss_bytes, reset_peak_rss, rss_bytes, parse_size
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
K, P = 14, args["patch"]
if args["variant"].startswith("monai"):
    from monai.networks.nets import UNet as MUNet
    from monai.inferers import sliding_window_inference
    net = MUNet(3, 1, K, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2).eval()
else:
    from delineo.models.unet import UNet
    from delineo.infer.sliding import sliding_window, sliding_window_labels
    net = UNet(1, K, dims=3, filters=(16, 32, 64, 128, 256), norm=args.get("norm", "instance")).eval()
if args["net"] == "head":  # the same 14-label output from one 3x3x3 convolution: accumulation alone
    net = torch.nn.Conv3d(1, K, 3, padding=1).eval()
fn = torch.no_grad()(lambda b: torch.softmax(net(b), 1))
x = torch.randn(1, *args["shape"])
fn(torch.randn(1, 1, P, P, P))  # kernels set up before measuring
reset_peak_rss()
base = rss_bytes()
t0 = time.perf_counter()
with torch.no_grad():
    if args["variant"] == "monai":
        out = sliding_window_inference(x[None], (P, P, P), args["batch"], fn, overlap=0.5, mode="gaussian")[0].argmax(0)
    elif args["variant"] == "delineo":
        out = sliding_window(fn, x, (P, P, P), 0.5, args["batch"], 16).argmax(0)
    else:
        out = sliding_window_labels(fn, x, (P, P, P), lambda p: p.argmax(0), 0.5, args["batch"], 16,
                                    max_bytes=parse_size(args["cap"]), n_out=K)
sec = time.perf_counter() - t0
print(json.dumps({"seconds": sec, "peak": peak_rss_bytes(), "base": base, "params": sum(p.numel() for p in net.parameters())}))
"""

WINDOW = r"""
import json, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from monai.networks.nets import UNet as MUNet
from delineo.models.unet import UNet
P = args["patch"]
nets = {"delineo instance": UNet(1, 14, dims=3, filters=(16, 32, 64, 128, 256), norm="instance"),
        "delineo batch": UNet(1, 14, dims=3, filters=(16, 32, 64, 128, 256), norm="batch"),
        "delineo instance 32-256 (no 16-ch level)": UNet(1, 14, dims=3, filters=(32, 64, 128, 256), norm="instance"),
        "monai 16-256 res2": MUNet(3, 1, 14, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)}
x = torch.randn(1, 1, P, P, P)
out = {}
with torch.no_grad():
    for rnd in range(2):
        for name, net in nets.items():
            net.eval()
            net(x)
            t0 = time.perf_counter(); net(x); t = time.perf_counter() - t0
            out[name] = min(out.get(name, 1e9), t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name in ("delineo instance", "monai 16-256 res2"):
            nets[name](x)
            t0 = time.perf_counter(); nets[name](x); out[name + " bf16"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def conv_flops(patch: int) -> dict[str, tuple[float, float]]:
    """(GFLOP per window, share at full resolution) of each network's convolutions, counted with
    hooks on a 32^3 input and scaled by volume (convolution cost is linear in voxels)."""
    import torch
    from delineo.models.unet import UNet

    nets = {"delineo 16-256": UNet(1, 14, dims=3, filters=(16, 32, 64, 128, 256))}
    try:
        from monai.networks.nets import UNet as MUNet

        nets["monai 16-256 res2"] = MUNet(3, 1, 14, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
    except ImportError:
        pass
    x = torch.randn(1, 1, 32, 32, 32)
    out = {}
    for name, net in nets.items():
        tot = {"all": 0, "full": 0}

        def hook(m, i, o):
            k = int(np.prod(m.kernel_size))
            f = 2 * (o.numel() * m.in_channels // m.groups if isinstance(m, torch.nn.Conv3d)
                     else i[0].numel() * m.out_channels) * k
            tot["all"] += f
            tot["full"] += f if o.shape[2:] == x.shape[2:] else 0

        hs = [m.register_forward_hook(hook) for m in net.modules()
              if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
        with torch.no_grad():
            net.eval()(x)
        for h in hs:
            h.remove()
        out[name] = (tot["all"] * (patch / 32) ** 3 / 1e9, tot["full"] / tot["all"])
    return out


def run(code: str, args: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--cap", default="2GB")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-window", action="store_true", help="leave out the time-per-window comparison")
    ap.add_argument("--net", choices=["unet", "head"], default="unet",
                    help="head: a single 14-label convolution in place of both U-Nets, to measure the "
                         "accumulation's memory on a large volume in little time")
    args = ap.parse_args()
    try:
        import monai  # noqa: F401
        have_monai = True
    except ImportError:
        have_monai = False
    common = {"shape": args.shape, "patch": args.patch, "batch": args.batch, "threads": args.threads, "cap": args.cap,
              "net": args.net}
    variants = ["delineo", "delineo-capped"] + (["monai"] if have_monai else [])
    rows = {}
    for v in variants:
        t0 = time.perf_counter()
        rows[v] = run(WORKER, {**common, "variant": v})
        print(f"{v}: {rows[v]} ({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
    print(f"\nvolume {'x'.join(map(str, args.shape))}, patch {args.patch}^3, overlap 0.5, window batch {args.batch}, "
          f"14 labels, {args.threads} threads, cap {args.cap}, network {args.net}")
    ref = rows["monai"] if have_monai and "error" not in rows["monai"] else rows["delineo"]
    ref_name = "monai" if ref is rows.get("monai") else "delineo"
    print(f"{'variant':16} {'peak GB':>8} {'+work GB':>8} {'seconds':>8} {'mem x':>6} {'time x':>6}   (x: against {ref_name})")
    for v, r in rows.items():
        if "error" in r:
            print(f"{v:16} {r['error']}")
            continue
        work = (r["peak"] - r["base"]) / 2**30
        ref_work = (ref["peak"] - ref["base"]) / 2**30
        print(f"{v:16} {r['peak'] / 2**30:8.2f} {work:8.2f} {r['seconds']:8.1f} {r['peak'] / ref['peak']:6.2f} "
              f"{r['seconds'] / ref['seconds']:6.2f}   work x {work / max(ref_work, 1e-9):.2f}")
    print(f"\nconvolution work per {args.patch}^3 window:")
    for name, (gflop, full) in conv_flops(args.patch).items():
        print(f"  {name:20} {gflop:7.1f} GFLOP, {full:.0%} of it at full resolution")
    if have_monai and not args.skip_window:
        w = run(WINDOW, common)
        print(f"\none {args.patch}^3 window, batch 1, forward only (best of 2, seconds):")
        base = w.get("monai 16-256 res2", 1.0)
        for name, t in w.items():
            print(f"  {name:42} {t:7.3f}  x{t / base:5.2f} of MONAI")
    print("the CPU is shared: compare the ratios within this run, not the absolute seconds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
