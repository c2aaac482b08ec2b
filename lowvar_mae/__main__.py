"""Command line: ``python -m lowvar_mae <command> ...`` (also installed as ``lowvar-mae``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

# Pages of the built book and the least number of figures each must show.
BOOK_PAGES = {
    "book/index.html": 0,
    "book/executed/00_introduction.html": 0,
    "book/executed/01_pca_variance_components.html": 3,
    "book/executed/02_mae_pretraining.html": 3,
    "book/executed/03_evaluation.html": 3,
    "book/executed/04_subspace_classification.html": 1,
    "book/executed/05_learning_order.html": 1,
    "book/executed/06_other_targets.html": 2,
    "book/executed/07_performance.html": 0,
    "book/executed/08_conclusions.html": 0,
    "book/running.html": 0,
    "book/glossary.html": 0,
    "book/bibliography.html": 0,
}


def _parameters(pairs: list[list[str]] | None) -> dict:
    out = {}
    for key, text in pairs or []:
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            where = getattr(err, "problem", None) or "not valid YAML"
            raise ValueError(f"parameter {key!r}: value {text!r} is not valid YAML ({where})") from None
    return out


def cmd_notebooks(args) -> int:
    from . import book

    root = book.notebooks_dir().parent
    sources = [book.find_notebook(n) for n in args.names] if args.names else book.list_notebooks()
    out = Path(args.out) if args.out else root / "book" / "executed"
    params = _parameters(args.parameter)
    import papermill

    for src in sources:
        start = time.perf_counter()
        target = out / f"{src.stem}{args.suffix}.ipynb"
        print(f"executing {src.name} -> {target}", flush=True)
        try:
            book.execute_notebook(src, target, params, timeout=args.timeout, progress=args.progress)
        except papermill.PapermillExecutionError as err:  # one line: the cell and its error
            raise RuntimeError(f"{src.name} failed in cell {err.exec_count}: {err.ename}: "
                               f"{str(err.evalue).splitlines()[0] if err.evalue else ''}") from None
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def cmd_check_book(args) -> int:
    from . import book

    problems = book.check_book(args.html, BOOK_PAGES, shots=None if args.no_screenshots else args.shots)
    problems += book.executed_problems(args.executed)
    for p in problems:
        print("PROBLEM:", p)
    if not problems:
        print(f"book OK: {len(BOOK_PAGES)} pages checked" + ("" if args.no_screenshots else f", screenshots in {args.shots}"))
    return 1 if problems else 0


def cmd_pretrain(args) -> int:
    from .pretrain import pretrain
    from .recipes import make_config

    overrides = {k: getattr(args, k) for k in [*PRETRAIN_OPTIONS, "compile"]}
    config = make_config(args.recipe, args.dataset, args.target, **overrides)
    run = pretrain(config, root=args.runs, device=args.device, force=args.force, progress=not args.no_progress)
    last = run.metrics[-1] if run.metrics else {}
    state = "trained" if run.trained_now else "loaded (finished earlier; --force retrains)"
    print(f"{run.run_dir}: {state}; {len(run.metrics)} epochs, final loss {last.get('loss', float('nan')):.5f}")
    return 0


# Config fields exposed as --options (None: the recipe's value). Same names as the notebook parameters.
PRETRAIN_OPTIONS = {
    "model": str, "epochs": int, "warmup_epochs": float, "batch_size": int, "accum_steps": int,
    "base_lr": float, "weight_decay": float, "mask_ratio": float, "augment": str, "n_train": int,
    "pca_method": str, "precision": str, "attention": str, "seed": int, "recon_every": int, "probe_every": int,
    "pc_basis": str, "pc_count": str,
}


def cmd_grid(args) -> int:
    """Table 1 cells, one at a time, each record written as it finishes; cells with records are skipped."""
    from . import grid

    probes = args.probes or grid.DEFAULT_PROBES.get(args.recipe, list(grid.METRICS))
    cells = []
    for epochs in args.epochs or [None]:  # a study over lengths: every cell of each length
        cells += grid.plan(args.datasets, args.targets or grid.DEFAULT_TARGETS, args.seeds, probes, args.recipe,
                           pretrain_overrides=grid.length_overrides(args.recipe, epochs))
    if args.missing:
        print(grid.describe_missing(cells))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    grid.run_grid(cells, device=args.device, allow_dirty=args.allow_dirty, progress=args.progress)
    print(grid.describe_missing(cells))
    return 0


def cmd_record(args) -> int:
    """Pretraining records (loss curve, reconstructions) of finished run folders, for runs
    whose cells were recorded before the grid wrote them."""
    from . import grid
    from .provenance import require_clean

    require_clean(args.allow_dirty)
    missing = [d for d in args.run_dirs if not (Path(d) / "config.json").is_file()]
    if missing:
        raise ValueError(f"not a run folder (no config.json): {', '.join(missing)}")
    for run_dir in args.run_dirs:
        path = grid.record_pretraining(run_dir)
        print(f"{run_dir}: {path if path is not None else 'already recorded'}")
    return 0


def cmd_curve(args) -> int:
    """The conv net on PCA subspaces, one point at a time; points with records are skipped."""
    from . import curve

    points = curve.plan(args.dataset, seeds=args.seeds)
    if args.missing:
        print(curve.describe_missing(points))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    curve.run_curve(points, device=args.device, allow_dirty=args.allow_dirty)
    print(curve.describe_missing(points))
    return 0


def cmd_linear(args) -> int:
    """The linear classifier on every subspace of the curve, penalties chosen on validation, recorded."""
    from .curve import linear_subspace_benchmark
    from .provenance import require_clean

    require_clean(args.allow_dirty)
    frame = linear_subspace_benchmark(args.dataset, device=args.device)
    print(frame[["side", "share", "n_components", "test_accuracy", "wall_seconds"]].to_string())
    return 0


def cmd_learning_order(args) -> int:
    """Pretrain with band metrics (or load such a run) and record its learning order."""
    from .learning_order import LEARNING_ORDER_KIND, learning_order_fields, learning_order_run
    from .provenance import require_clean
    from .recipes import make_config
    from .results import load_records, write_record

    require_clean(args.allow_dirty)
    done = load_records(LEARNING_ORDER_KIND)
    for target in args.targets:
        config = make_config(args.recipe, args.dataset, target, seed=args.seed)
        if len(done) and (done["run_name"] == config.run_name).any():
            print(f"{target}: recorded already ({config.run_name})")
            continue
        run, note = learning_order_run(config, n_eval=args.n_eval, device=args.device)
        path = write_record(LEARNING_ORDER_KIND, learning_order_fields(run, note), device=args.device)
        print(f"{target}: {note} -> {path}", flush=True)
    return 0


def cmd_baseline(args) -> int:
    """Softmax regression on raw pixels, the bar the probes of pretrained encoders must clear."""
    from .evaluate import pixel_linear_probe

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for seed in args.seeds:
        rec = pixel_linear_probe(args.dataset, seed=seed, device=args.device)
        print(f"{args.dataset} raw pixels, seed {seed}: test {rec['value']:.4f} (validation {rec['val_value']:.4f}, "
              f"weight decay {rec['weight_decay']:g}, {rec['iterations']} L-BFGS iterations) -> {rec['record']}")
    return 0


def cmd_fill_in(args) -> int:
    """What a linear map from the visible patches fills in of each target: one record per mask."""
    from .linear_fill import record_fill_in
    from .models import get_config
    from .recipes import make_config

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    patch = args.patch_size or get_config(make_config(args.recipe, args.dataset).model).patch_size
    for target in args.targets:
        for path, rec in record_fill_in(args.dataset, target, patch_size=patch, seeds=args.seeds,
                                        allow_dirty=args.allow_dirty):
            seed = rec["seed"]
            print(f"{args.dataset} {target}, {patch}x{patch} patches, mask {seed}: linear fill-in leaves "
                  f"{rec['error']:.3f} of the target's variance (ridge {rec['ridge']:g}) -> {path or 'recorded before'}")
    return 0


def cmd_shards(args) -> int:
    from .data import load_dataset, save_shards

    for split in args.splits:
        for path in save_shards(load_dataset(args.dataset, split), args.out, size=args.size):
            print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_export(args) -> int:
    """A pretrained encoder as a state dict of timm's VisionTransformer (safetensors)."""
    import json

    from safetensors.torch import save_file

    from .models import TIMM_ARCH, timm_kwargs, timm_state_dict
    from .pretrain import load_run

    if args.to != "timm":
        raise ValueError(f"--to must be 'timm', got {args.to!r}")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {str(out)!r}")
    run = load_run(args.run_dir)
    kwargs = timm_kwargs(run.model.encoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(timm_state_dict(run.model.encoder), str(tmp),
              metadata={"timm_arch": TIMM_ARCH, "timm_kwargs": json.dumps(kwargs), "run_name": run.run_dir.name})
    os.replace(tmp, out)
    call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    print(f"{out}: {run.run_dir.name}, {len(run.metrics)} epochs\n"
          f"load with: model = timm.create_model({TIMM_ARCH!r}, pretrained=False, {call})\n"
          f"           model.load_state_dict(safetensors.torch.load_file({str(out)!r}), strict=True)")
    return 0


def cmd_shares(args) -> int:
    """What share of the training images' pixel variance each target keeps; one record."""
    from .data import load_dataset
    from .results import write_record
    from .targets import dataset_basis, kept_variance, parse_target

    specs = [parse_target(t) for t in args.targets]  # every name checked before any work
    images = load_dataset(args.dataset, "train").to_tensor()
    basis = dataset_basis(args.dataset, images=images) if any(s.needs_basis for s in specs) else None
    rows = [kept_variance(s, images, basis) for s in specs]
    for r in rows:
        kept = "" if r["kept"] is None else f"{r['kept']:.1%}"
        print(f"{r['target']:>18}  {kept:>7}  {r['note']}")
    path = write_record("targets", {"dataset": args.dataset, "n_images": len(images), "shares": rows})
    print(f"-> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lowvar-mae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("notebooks", help="execute notebooks with papermill into book/executed/")
    p.add_argument("names", nargs="*", help="notebooks by number or name (default: all)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="papermill parameter (value parsed as YAML); repeatable")
    p.add_argument("--out", help="output folder (default: book/executed)")
    p.add_argument("--suffix", default="", help="appended to output names, e.g. _cifar10")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    p.add_argument("--progress", action="store_true", help="show papermill's progress bar")
    p.set_defaults(func=cmd_notebooks)

    p = sub.add_parser("check-book", help="check the built book's pages and take screenshots")
    p.add_argument("--html", default="_build/html")
    p.add_argument("--shots", default="_build/screenshots")
    p.add_argument("--executed", default="book/executed", help="the executed chapters (stderr is checked)")
    p.add_argument("--no-screenshots", action="store_true")
    p.set_defaults(func=cmd_check_book)

    p = sub.add_parser("pretrain", help="pretrain an MAE (resumes or loads its run folder); torchrun-ready")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--target", default="pixels", help="pixels | norm-pix | pca-bottom:<q> | pca-top:<p> | fft-low:<r> | fft-high:<r> | pc-mask[:<s>]")
    p.add_argument("--recipe", default="quick", help="quick | cpu | gpu | paper")
    for name, kind in PRETRAIN_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default=None, help="runs folder (default: $LOWVAR_MAE_RUNS or ~/.cache/lowvar-mae/runs)")
    p.add_argument("--force", action="store_true", help="delete the run folder and train again")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("grid", help="pretrain and evaluate Table 1 cells (datasets x targets x seeds x probes), "
                       "skipping cells that have records; run one grid at a time on an otherwise idle machine",
                       description="Cells run seed-major, one at a time; each record is written as its cell "
                       "finishes and a cell with a record is skipped, so a grid fills over interrupted runs. "
                       "Two cores run one torch job well and two badly: run nothing else beside it. "
                       "Touch <runs>/grid.stop to stop after the current cell.")
    p.add_argument("--datasets", nargs="+", default=["cifar10"])
    p.add_argument("--targets", nargs="+", default=None, help="default: every Table 1 target of CIFAR-10")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--probes", nargs="+", default=None,
                   help="finetune | linprobe | knn (default: linprobe knn for the cpu recipe, all three otherwise)")
    p.add_argument("--recipe", default="cpu", help="pretraining and evaluation recipe: cpu | gpu | quick | paper")
    p.add_argument("--epochs", nargs="+", type=int, default=None,
                   help="pretraining lengths (the schedule study; default: the recipe's own). Only the length "
                   "changes: warm-up is scaled with it, the calibration probe runs less often above 4x the recipe's")
    p.add_argument("--missing", action="store_true", help="list the cells without a record and their estimated time")
    p.add_argument("--allow-dirty", action="store_true", help="write records from a checkout with uncommitted changes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("record", help="write the pretraining record (loss curve, reconstructions of the fixed "
                       "test batch) of finished run folders that have none")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--allow-dirty", action="store_true", help="write records from a checkout with uncommitted changes")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("curve", help="the conv net on top and bottom PCA subspaces (one record per point), "
                       "skipping points that have records",
                       description="The whole curve with the first seed, then more seeds for full, top 90%%, "
                       "top 75%%, bottom 25%% and bottom 20%%. Touch <runs>/curve.stop to stop after the current "
                       "point. Run nothing else beside it on two cores.")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--missing", action="store_true", help="list the points without a record and their estimated time")
    p.add_argument("--allow-dirty", action="store_true", help="write records from a checkout with uncommitted changes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("linear", help="the linear classifier on every subspace of the curve (records; "
                       "penalties chosen on validation, three points checked against scikit-learn)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--allow-dirty", action="store_true", help="write records from a checkout with uncommitted changes")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_linear)

    p = sub.add_parser("learning-order", help="pretrain with per-band reconstruction errors and record them "
                       "(skips targets whose run is recorded)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--targets", nargs="+", default=["pixels", "pca-bottom:0.25"])
    p.add_argument("--recipe", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-eval", type=int, default=256, help="held-out test images reconstructed after each epoch")
    p.add_argument("--allow-dirty", action="store_true", help="write records from a checkout with uncommitted changes")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_learning_order)

    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p = sub.add_parser("baseline", help="softmax regression on raw pixels (the probes' bar), one record per seed")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("fill-in", help="what a linear map from the visible patches fills in of a target (a "
                                       "reference level for reconstruction), one record per mask")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--targets", nargs="+", default=["pixels", "pca-bottom:0.25"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one random patch mask per seed")
    p.add_argument("--recipe", default="cpu", help="whose model gives the patch size (default: the cpu protocol's)")
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--allow-dirty", action="store_true", help="write records from a checkout with uncommitted changes")
    p.set_defaults(func=cmd_fill_in)

    p = sub.add_parser("shards", help="re-save a dataset in parts of 10,000 images (to carry it to another machine)")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="a new data root; point LOWVAR_MAE_DATA at it where the parts land")
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--size", type=int, default=10_000, help="images per part")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("export", help="a pretrained encoder as a state dict of timm's VisionTransformer")
    p.add_argument("run_dir", help="a pretraining run folder")
    p.add_argument("--to", default="timm", help="the format: timm")
    p.add_argument("out", help="the .safetensors file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("shares", help="the share of pixel variance each target keeps on a training split (a record)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--targets", nargs="+", required=True)
    p.set_defaults(func=cmd_shares)

    args = parser.parse_args(argv)
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError, FloatingPointError) as err:  # one line, no traceback
        print(f"lowvar-mae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lowvar-mae {args.command}: interrupted (a run resumes from its last checkpoint with the same "
              "command)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
