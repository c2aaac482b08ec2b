"""PCA fit and filter time: exact eigendecomposition against a top-k solver.

The complement filter behind ``pca-bottom:q`` needs only the top components that carry
``1 - q`` of the variance (about 20 of CIFAR-10's 3,072 for q = 0.25) plus the total
variance, which is the trace of the covariance. ``lowvar_mae.pca.fit_pca`` computes all
of them. This benchmark times, on the sizes the project meets:

* ``exact``: ``fit_pca`` as it is (covariance path: stream the (D, D) covariance, then
  ``torch.linalg.eigh``; Gram path: eigen-decompose the (N, N) Gram matrix);
* ``topk-data``: ``fit_pca(..., solver="topk")`` (``lowvar_mae.pca.fit_topk``): block
  Lanczos on the data as an operator, never forming a matrix, C q = Xc^T (Xc q) / (N - 1),
  one pass over the images per block product, float32 passes until their rounding
  floor, float64 after;
* ``topk-cov`` (CIFAR size only): the package's streamed covariance, then the same
  solver on it instead of the full ``eigh``.

Top-k fits run once per bottom share q (``--shares``), each computing only the
components that share's complement filter removes. For each path it reports the fit
time, the time to filter images with ``lowvar_mae.pca.project``, and, against ``exact``
on the same images, the relative difference of the filtered images and the number of
components chosen.

Sizes: CIFAR-10 (50,000 x 3,072, covariance path; real CIFAR-10 when
``LOWVAR_MAE_DATA`` holds it, synthetic otherwise), STL-10 train (5,000 x 27,648, Gram
path) and STL-10 train + unlabeled (105,000 x 27,648, covariance path: exact is always
estimated, its covariance alone is 6.1 GB and 160 TFLOP). With ``--quick`` the exact fits
run on fewer images and their full-size times are extrapolated (``estimated: true``).

    python bench/pca_bench.py --quick          # < 4 minutes on a 2-core CPU
    python bench/pca_bench.py                  # full sizes (about half an hour there)
    python bench/pca_bench.py --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from lowvar_mae import pca
from lowvar_mae.data import DatasetNotFoundError, load_dataset, make_synthetic
from lowvar_mae.results import write_bench_record

KIND = "pca_bench"
SCHEMA = 1

# Benchmark sizes. exact: "measure" or "estimate"; quick_exact_n: images for the exact
# fit with --quick (its full-size time is then extrapolated).
CASES: dict[str, dict] = {
    "cifar": dict(label="CIFAR-10 train", n=50_000, image_size=32, exact_method="covariance",
                  exact="measure", quick_exact_n=10_000, topk_cov=True),
    "stl-train": dict(label="STL-10 train", n=5_000, image_size=96, exact_method="gram",
                      exact="measure", quick_exact_n=1_000, topk_cov=False),
    "stl-unlabeled": dict(label="STL-10 train+unlabeled", n=105_000, image_size=96,
                          exact_method="covariance", exact="estimate", quick_exact_n=None, topk_cov=False),
}


# ---------------------------------------------------------------- measurement helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def eigh_timer():
    """Time the eigendecomposition inside ``fit_pca`` (wraps ``pca._sorted_eigh`` for the block)."""
    spent = {"seconds": 0.0}
    original = pca._sorted_eigh

    def timed(sym):
        start = time.perf_counter()
        out = original(sym)
        sync(sym.device)
        spent["seconds"] += time.perf_counter() - start
        return out

    pca._sorted_eigh = timed
    try:
        yield spent
    finally:
        pca._sorted_eigh = original


def timed(fn: Callable, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def synthetic_images(n: int, image_size: int, seed: int = 0, chunk: int = 5_000) -> Tensor:
    """(n, 3, S, S) uint8 synthetic images (lowvar_mae.data's generator), made in chunks."""
    if image_size == 32 and n <= 50_000:
        return load_dataset("synthetic", "train", n=n).to_tensor()
    out = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    for i, start in enumerate(range(0, n, chunk)):
        images, _ = make_synthetic(min(chunk, n - start), seed + 1_000 * i, image_size)
        out[start:start + len(images)] = torch.from_numpy(images).permute(0, 3, 1, 2)
    return out


def case_images(case: dict, n: int, data: str) -> tuple[Tensor, str]:
    """Images for a case and where they came from: real CIFAR-10 when asked for / found."""
    if case["image_size"] == 32 and data in ("auto", "real"):
        try:
            train = load_dataset("cifar10", "train", download=False)
            return train.to_tensor()[:n], "cifar10 (real)"
        except DatasetNotFoundError:
            if data == "real":
                raise
    return synthetic_images(n, case["image_size"]), f"synthetic {case['image_size']}x{case['image_size']}"


def filter_difference(images: Tensor, exact: pca.PCABasis, other: pca.PCABasis, share: float) -> dict:
    """How far ``other``'s bottom-``share`` complement filter is from ``exact``'s on ``images``."""
    a = pca.project(images, exact, "bottom", share)
    b = pca.project(images, other, "bottom", share)
    diff = (a - b).norm()
    centred = a - exact.mean.to(a.dtype).view(1, *exact.image_shape)
    return {"share": share, "k_exact": exact.n_components(1 - share, "top"),
            "k_topk": other.n_components(1 - share, "top"),
            "rel_diff": float(diff / a.norm()), "rel_diff_centred": float(diff / centred.norm()),
            "max_abs_diff": float((a - b).abs().max())}


def filter_seconds(images: Tensor, basis: pca.PCABasis, share: float, device: torch.device) -> float:
    _, seconds = timed(lambda: pca.project(images, basis, "bottom", share), device)
    return seconds


# ---------------------------------------------------------------- the cases


def run_case(name: str, case: dict, *, quick: bool, shares: list[float], device: torch.device, data: str,
             n_check: int, n_filter: int, measured: dict, log=print) -> dict:
    """Measure one size; ``measured`` carries the numbers that estimates of later cases use."""
    n_full, dim = case["n"], 3 * case["image_size"] ** 2
    rows, accuracy = [], []
    n_exact = None
    if case["exact"] == "measure":
        n_exact = min(n_full, case["quick_exact_n"] or n_full) if quick else n_full
    topk_full_measured = case["exact"] == "measure" or not quick
    n_load = n_full if topk_full_measured else 0
    start = time.perf_counter()
    images, source = case_images(case, n_load, data) if n_load else (None, "none (estimated)")
    log(f"[{name}] {n_load} images ({source}) ready in {time.perf_counter() - start:.1f} s")
    result = {"case": name, "label": case["label"], "n_images": n_full, "dim": dim, "data": source,
              "exact_method": case["exact_method"], "n_exact_fit": n_exact}

    def row(path: str, n: int, fit_s: float, *, estimated: bool = False, **extra) -> dict:
        r = {"case": name, "path": path, "n_images": n, "dim": dim, "fit_s": fit_s, "estimated": estimated, **extra}
        rows.append(r)
        log(f"[{name}] {path:10s} n={n:7d} fit {fit_s:9.2f} s" + (" (estimated)" if estimated else "")
            + "".join(f" {k}={v}" for k, v in extra.items() if k in ("k", "cycles", "operator_calls", "block")))
        return r

    if n_exact:
        x = images[:n_exact].to(device)
        with eigh_timer() as spent:
            exact, t_exact = timed(lambda: pca.fit_pca(x, method=case["exact_method"]), device)
        row("exact", n_exact, t_exact, eigh_s=spent["seconds"])
        measured[name] = {"n": n_exact, "dim": dim, "fit_s": t_exact, "eigh_s": spent["seconds"]}
        candidates = [("topk-data", "data")] + ([("topk-cov", "covariance")] if case["topk_cov"] else [])
        bases = {"exact": exact}
        for share in shares:  # one top-k fit per bottom share: only its components
            for path, operator in candidates:
                (basis, info), t = timed(lambda: pca.fit_topk(x, top_share=1 - share, operator=operator), device)
                bases[f"{path} q={share:g}"] = basis
                row(path, n_exact, t, share=share, **info)
                d = filter_difference(x[:n_check], exact, basis, share)
                accuracy.append({"path": path, "n_images": n_exact, **d})
                log(f"[{name}] {path:10s} bottom {share}: k {d['k_exact']} vs {d['k_topk']}, "
                    f"rel diff {d['rel_diff']:.2e} (centred {d['rel_diff_centred']:.2e})")
        nf = min(n_filter, n_exact)
        q = min(shares)
        result["filter"] = {"n_images": nf, "share": q, "seconds": {
            p: filter_seconds(x[:nf], b, q, device) for p, b in bases.items() if p == "exact" or p.endswith(f"q={q:g}")}}
        result["speedup_measured"] = {"n_images": n_exact, **{
            f"{r['path']} q={r['share']:g}": t_exact / r["fit_s"] for r in rows if r["path"] != "exact"}}
        del x, bases, exact
    # Full size: the top-k fit measured (or scaled from a smaller one), the exact one
    # measured above or estimated.
    if n_exact != n_full:
        if topk_full_measured:
            x = images.to(device)
            for share in shares:
                (basis, info), t = timed(lambda: pca.fit_topk(x, top_share=1 - share, operator="data"), device)
                row("topk-data", n_full, t, share=share, **info)
                if "filter" not in result and share == min(shares):
                    nf = min(n_filter, n_full)
                    result["filter"] = {"n_images": nf, "share": share, "seconds": {
                        f"topk-data q={share:g}": filter_seconds(x[:nf], basis, share, device)}}
            del x, basis
        else:
            for share in shares:
                ref = max((r for r in measured.get("_topk_rows", []) if r["dim"] == dim and r["share"] == share),
                          key=lambda r: r["n_images"])
                row("topk-data", n_full, ref["fit_s"] * n_full / ref["n_images"], estimated=True, share=share,
                    model=f"top-k fit of {ref['n_images']} images x N ratio (one pass over the images per operator call)")
        seconds, extra = estimate_exact(name, case, n_full, dim, measured)
        row("exact", n_full, seconds, **extra)
    del images
    measured.setdefault("_topk_rows", []).extend(r for r in rows if r["path"] == "topk-data" and not r["estimated"])
    full = [r for r in rows if r["n_images"] == n_full]
    exact_s = next(r["fit_s"] for r in full if r["path"] == "exact")
    result["speedup_full_size"] = {f"{r['path']} q={r['share']:g}": exact_s / r["fit_s"]
                                   for r in full if r["path"] != "exact"}
    result["speedup_estimated"] = any(r["estimated"] for r in full)
    result["rows"], result["accuracy"] = rows, accuracy
    return result


def estimate_exact(name: str, case: dict, n: int, dim: int, measured: dict) -> tuple[float, dict]:
    """Full-size time of the exact fit from a smaller measured one; returns (seconds, details)."""
    if name in measured:  # same case, fewer images
        m = measured[name]
        rest, eigh = m["fit_s"] - m["eigh_s"], m["eigh_s"]
        r = n / m["n"]
        if case["exact_method"] == "gram":  # Gram, components and QR ~ N^2 D; eigh ~ N^3
            seconds = rest * r ** 2 + eigh * r ** 3
            model = f"measured at N={m['n']}: (fit - eigh) x (N ratio)^2 + eigh x (N ratio)^3"
        else:  # covariance ~ N D^2; eigh of D x D does not depend on N
            seconds = rest * r + eigh
            model = f"measured at N={m['n']}: (fit - eigh) x N ratio + eigh"
        return seconds, {"estimated": True, "model": model}
    m = measured["cifar"]  # covariance path at another D: accumulate ~ N D^2, eigh ~ D^3
    rest = (m["fit_s"] - m["eigh_s"]) * (n / m["n"]) * (dim / m["dim"]) ** 2
    eigh = m["eigh_s"] * (dim / m["dim"]) ** 3
    return rest + eigh, {"estimated": True, "accumulate_s": rest, "eigh_s": eigh,
                         "covariance_gb": dim * dim * 8 / 1e9,
                         "model": f"CIFAR-size fit at N={m['n']}: accumulate x (N ratio)(D ratio)^2 + eigh x (D ratio)^3"}


def print_table(results: list[dict]) -> None:
    print(f"\n{'case':14s} {'path':10s} {'bottom':>6s} {'images':>8s} {'D':>6s} {'fit s':>10s} {'k':>5s} "
          f"{'calls':>5s}  note")
    for res in results:
        for r in res["rows"]:
            note = "estimated" if r["estimated"] else ""
            share = f"{r['share']:g}" if "share" in r else ""
            print(f"{res['case']:14s} {r['path']:10s} {share:>6s} {r['n_images']:8d} {r['dim']:6d} {r['fit_s']:10.2f} "
                  f"{str(r.get('k', '')):>5s} {str(r.get('operator_calls', '')):>5s}  {note}")
    print(f"\n{'case':14s} {'path':10s} {'bottom':>6s} {'k exact':>7s} {'k top-k':>7s} {'rel diff':>9s} {'centred':>9s}")
    for res in results:
        for a in res["accuracy"]:
            print(f"{res['case']:14s} {a['path']:10s} {a['share']:6.2f} {a['k_exact']:7d} {a['k_topk']:7d} "
                  f"{a['rel_diff']:9.2e} {a['rel_diff_centred']:9.2e}")
    print()
    for res in results:
        ratios = ", ".join(f"exact / {p}: {v:.1f}x" for p, v in res["speedup_full_size"].items())
        print(f"{res['label']} ({res['n_images']} x {res['dim']}): {ratios}"
              + (" (exact time estimated)" if res["speedup_estimated"] else ""))
        if "filter" in res:
            f = res["filter"]
            print(f"  filter {f['n_images']} images (bottom {f['share']}): "
                  + ", ".join(f"{p} {s:.2f} s" for p, s in f["seconds"].items()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="exact fits on fewer images, extrapolated (< 4 min on 2 cores)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--shares", nargs="+", type=float, default=None,
                        help="bottom shares q checked (default 0.25; 0.25 0.1 without --quick)")
    parser.add_argument("--data", default="auto", choices=["auto", "real", "synthetic"],
                        help="CIFAR size: real CIFAR-10 from LOWVAR_MAE_DATA (auto: when found) or synthetic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-check", type=int, default=2_000, help="images whose filtered versions are compared")
    parser.add_argument("--n-filter", type=int, default=10_000, help="images filtered for the filter time")
    parser.add_argument("--sizes", default=None, help=argparse.SUPPRESS)  # tests: name=n,quick_n;...
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="JSON path (default results/bench/pca_bench-<device>-<time>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shares = args.shares or ([0.25] if args.quick else [0.25, 0.1])
    cases = {name: dict(CASES[name]) for name in args.cases}
    if args.sizes:  # small sizes for the tests, e.g. "cifar=600,300,16;stl-train=200,100,24"
        for part in args.sizes.split(";"):
            name, values = part.split("=")
            n, quick_n, image_size = (int(v) for v in values.split(","))
            cases[name].update(n=n, quick_exact_n=quick_n or None, image_size=image_size)
    if "stl-unlabeled" in args.cases and "cifar" not in args.cases:
        parser.error("the stl-unlabeled estimate needs the cifar case")
    wall = time.perf_counter()
    measured: dict = {}
    results = [run_case(name, case, quick=args.quick, shares=shares, device=device, data=args.data,
                        n_check=args.n_check, n_filter=args.n_filter, measured=measured)
               for name, case in cases.items()]
    print_table(results)
    record = {"kind": KIND, "schema": SCHEMA, "quick": args.quick, "shares": shares,
              "cases": results, "wall_seconds": time.perf_counter() - wall}
    out = write_bench_record(KIND, record, str(device), args.out)
    print(f"wrote {out} ({record['wall_seconds']:.0f} s)")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
