"""The ``pyconv`` command: ``pyconv info``, ``pyconv bench``."""
from __future__ import annotations

import argparse
import json
import sys


def _info(args):
    import pyconv

    info = pyconv.info()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")


def _bench(args):
    from pyconv import bench

    bench.main(quick=args.quick, json_path=args.json, backends=args.backends,
               ops_filter=args.ops, reps=args.reps, threads=args.threads, models=args.models)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pyconv", description="pyconv: hand-written neural-network kernels")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="version, backends, the C++ ISA variant, threads")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "bench",
        help="time every op on every backend against the reference, PyTorch and OpenCV",
        description="Times every op on each available backend against the reference backend "
        "and, when installed, PyTorch's CPU kernels and OpenCV's NMS, in one process. Prints "
        "time, GFLOP/s or GB/s, %% of the machine limits measured in the same run, and ratios.")
    p.add_argument("--quick", action="store_true", help="small subset of cases (about a minute)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--backends", nargs="+", metavar="NAME", help="backends to time (default: all available)")
    p.add_argument("--ops", nargs="+", metavar="OP", help="only cases whose op contains one of these")
    p.add_argument("--reps", type=int, help="timed repetitions per implementation")
    p.add_argument("--threads", type=int, help="threads for pyconv and PyTorch (default: all cores)")
    p.add_argument("--models", action="store_true",
                   help="instead: one training step of small models (LeNet-5, DCGAN, VGG block) and "
                   "each of their layers, against PyTorch twins with the same weights")
    p.set_defaults(func=_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
