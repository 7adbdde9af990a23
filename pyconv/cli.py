"""The ``pyconv`` command: ``pyconv info``, ``pyconv bench``, ``pyconv tune``,
``pyconv train MODEL``, ``pyconv sample MODEL``."""
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
    if args.torch_model:
        from pyconv.bench import torch_models

        torch_models.main(threads=args.threads or 2, reps=args.reps, quick=args.quick)
        return
    if args.onnx:
        from pyconv.bench import onnx_graphs

        onnx_graphs.main(args.onnx, batch=args.batch, reps=args.reps or 20, threads=args.threads or 2,
                         json_path=args.json)
        return
    from pyconv import bench

    bench.main(quick=args.quick, json_path=args.json, backends=args.backends,
               ops_filter=args.ops, reps=args.reps, threads=args.threads, models=args.models)


def _tune(args):
    import pyconv
    from pyconv import tuning

    if args.threads:
        pyconv.set_num_threads(args.threads)
    print(tuning.describe())
    tuning.tune(sizes=tuple(args.sizes), reps=args.reps, write=not args.dry_run)


def _setup(args):
    import pyconv

    if args.backend:
        pyconv.set_backend(args.backend)
    if args.threads:
        pyconv.set_num_threads(args.threads)


def _train(args):
    from pyconv import distributed, recipes

    _setup(args)
    # under mpiexec: join the job; threads per rank default to the cores / ranks on this machine
    distributed.init(threads=args.threads)
    # only the settings given on the command line: the others keep the recipe's defaults
    options = {key: value for key, value in (("levels", args.levels),
                                             ("conditional", args.conditional or None))
               if value is not None}
    recipes.train(args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  data=args.data, out=args.out, resume=args.resume, seed=args.seed,
                  limit=args.limit, progress=not args.no_progress, options=options,
                  distributed=True if args.distributed else None)


def _sample(args):
    from pyconv import recipes

    _setup(args)
    recipes.sample(args.model, args.checkpoint, args.out, n=args.n, npz=args.npz,
                   temperature=args.temperature, label=args.label, seed=args.seed)


def _model_names(sampling=False):
    from pyconv.recipes import RECIPES, Recipe

    # the classifiers and the segmenter have no sample(): 'pyconv sample' does not offer them
    return sorted(name for name, recipe in RECIPES.items()
                  if not sampling or type(recipe).sample is not Recipe.sample)


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
        "and, when installed, PyTorch's CPU kernels, OpenCV's NMS and (conv2d) ONNX Runtime, in "
        "one process. Prints "
        "time, GFLOP/s or GB/s, %% of the machine limits measured in the same run, and ratios.")
    p.add_argument("--quick", action="store_true", help="small subset of cases (about a minute)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--backends", nargs="+", metavar="NAME", help="backends to time (default: all available)")
    p.add_argument("--ops", nargs="+", metavar="OP", help="only cases whose op contains one of these")
    p.add_argument("--reps", type=int, help="timed repetitions per implementation")
    p.add_argument("--threads", type=int, help="threads for pyconv and PyTorch (default: all cores)")
    p.add_argument("--models", action="store_true",
                   help="instead: one training step of small models (LeNet-5, DCGAN, VGG block) and "
                   "of every model of pyconv.models (DCGAN, VAE, PixelCNN, CharLSTM, SegNet, "
                   "MotifCNN) and each of their layers, against PyTorch twins with the same weights")
    p.add_argument("--torch-model", action="store_true",
                   help="instead: PyTorch models (ResNet-style, DCGAN) converted with "
                   "pyconv.torch.convert against native PyTorch, forward and training step and the "
                   "ResNet's layers (default 2 threads; needs PyTorch)")
    p.add_argument("--onnx", nargs="+", metavar="GRAPH",
                   help="instead: ONNX graphs (files, or built-in lenet, dcgan, resnet) run by pyconv "
                   "and by ONNX Runtime's CPU provider, interleaved, with a per-op-type split "
                   "(--threads defaults to 2 here)")
    p.add_argument("--batch", type=int, default=None,
                   help="with --onnx: the size given to a graph input's symbolic dimensions "
                        "(default: 1, or a built-in graph's own batch size)")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "tune", help="time GEMM cache blockings on this CPU and keep the fastest",
        description="Times a few cache blockings (KC, MC, NC) of the C++ backend's GEMM around "
        "the cache model's for float32 and float64, and writes the fastest for this CPU model "
        "and ISA to gemm_blocking.json in $XDG_CACHE_HOME/pyconv (else ~/.cache/pyconv), "
        "which pyconv applies when it loads.")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024],
                   help="square GEMM sizes to time (default 512 1024)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per blocking and size (median)")
    p.add_argument("--threads", type=int, help="threads for the GEMM (default: all cores)")
    p.add_argument("--dry-run", action="store_true", help="time and report, but write no file")
    p.set_defaults(func=_tune)

    models = _model_names()
    p = sub.add_parser(
        "train", help="train a model on offline data; metrics, checkpoint, history and pictures",
        description="Trains MODEL (defaults need no download: the bundled digits, synthetic "
        "shapes/DNA/text) with a progress bar and per-epoch metrics, then prints its quality "
        "figures and writes into --out: checkpoint.npz, history.json, loss.png and the model's "
        "pictures.")
    p.add_argument("model", choices=models)
    p.add_argument("--epochs", type=int, help="epochs (default: the model's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the model's)")
    p.add_argument("--data", help="digits (default for images), mnist:PATH (IDX files in PATH), "
                   "text:FILE (charlstm)")
    p.add_argument("--out", help="output folder (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only this many training (and test) samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--levels", type=int, choices=(2, 256),
                   help="pixelcnn: 2 (binarised pixels, the default) or 256 (grey levels, a 256-way softmax)")
    p.add_argument("--conditional", action="store_true",
                   help="pixelcnn: class-conditional (then 'pyconv sample pixelcnn --label K')")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: run as 'mpiexec -n N python -m pyconv train ... "
                   "--distributed' (the default under mpiexec with N > 1); --batch-size is per rank")
    p.add_argument("--backend", help="kernel backend (default: cpu; cuda trains on the GPU, on CuPy arrays)")
    p.add_argument("--threads", type=int, help="threads for the CPU backends (per rank; default "
                   "under mpiexec: the cores divided by the ranks on the machine)")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="draw samples from a trained model into a PNG grid",
                       description="Draws samples from the model in --checkpoint (written by "
                       "'pyconv train') into a PNG grid, or a text file for charlstm.")
    p.add_argument("model", choices=_model_names(sampling=True))
    p.add_argument("--checkpoint", required=True, help="checkpoint.npz written by 'pyconv train'")
    p.add_argument("--out", required=True, help="the PNG grid (text file for charlstm)")
    p.add_argument("--n", type=int, default=64, help="number of samples (characters for charlstm)")
    p.add_argument("--npz", help="also write the raw samples (and labels) to this .npz")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--label", type=int, help="class to condition on (conditional models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", help="kernel backend (default: cpu; sampling runs on a CPU backend)")
    p.add_argument("--threads", type=int, help="threads for the CPU backends")
    p.set_defaults(func=_sample)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
