"""The benchmarks in bench/: structure of their records and cross-checks of what they compare.

bench/ is not a package; its scripts are loaded by path. Everything here runs on the
micro preset and tiny images so the file takes seconds.
"""

import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from lowvar_mae import pca
from lowvar_mae.data import make_synthetic
from lowvar_mae.models import attention_kernel, build_mae
from lowvar_mae.targets import make_target
from lowvar_mae.train import augment, normalize

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def throughput():
    return load_bench("pretrain_throughput")


@pytest.fixture(scope="module")
def pca_bench():
    return load_bench("pca_bench")


TINY_THROUGHPUT = [
    "--presets", "micro", "--batch-sizes", "4", "--warmup", "0", "--repeats", "2", "--n-images", "16",
    "--n-pca-images", "60", "--loop-presets", "micro", "--loop-steps", "1", "--precision-preset", "micro",
    "--precision-batch", "4", "--bf16-repeats", "1", "--profile-preset", "micro", "--profile-batch", "4",
    "--profile-steps", "1", "--device", "cpu"]
TINY_PCA = ["--quick", "--data", "synthetic", "--sizes", "cifar=300,150,8;stl-train=120,80,16;stl-unlabeled=400,0,16",
            "--n-check", "50", "--n-filter", "60"]


@pytest.fixture(scope="module")
def records(throughput, pca_bench, tmp_path_factory):
    """Both benchmarks run once on tiny sizes: (folder, throughput record, PCA record)."""
    folder = tmp_path_factory.mktemp("bench")
    tp = throughput.main(TINY_THROUGHPUT + ["--out", str(folder / "pretrain_throughput-cpu-test.json")])
    pb = pca_bench.main(TINY_PCA + ["--out", str(folder / "pca_bench-cpu-test.json")])
    return folder, tp, pb


@pytest.fixture(scope="module")
def micro_data():
    images, _ = make_synthetic(120, seed=3, image_size=16)  # (N, H, W, C) uint8
    basis = pca.fit_pca(torch.from_numpy(images).permute(0, 3, 1, 2), dataset="synthetic")
    return images, basis


# ---------------------------------------------------------------- baseline == fast path


def test_baseline_and_fast_path_compute_the_same_target_and_loss(throughput, micro_data):
    images, basis = micro_data
    baseline = throughput.baseline
    dataset = baseline.PILPCADataset(images, basis, 0.25)
    imgs, target = default_collate([dataset[i] for i in range(6)])  # per-sample PIL + numpy
    x_u8 = torch.from_numpy(images[:6]).permute(0, 3, 1, 2).contiguous()
    x01 = augment(x_u8, "none")
    target_fn = make_target("pca-bottom:0.25", basis=basis, image_shape=(3, 16, 16), device="cpu")
    torch.testing.assert_close(normalize(x01), imgs, atol=1e-6, rtol=0)
    torch.testing.assert_close(target_fn(x01), target, atol=1e-5, rtol=0)
    assert (target - imgs).abs().max() > 1e-2  # the target really is filtered

    torch.manual_seed(0)
    model = build_mae("micro")
    written_out = throughput.BaselinePath(copy.deepcopy(model), images, basis, 4, torch.device("cpu"), 0).model
    assert attention_kernel(written_out) == "math" and attention_kernel(model) == "sdpa"
    fast = throughput.fast_loss(model, x_u8, target_fn, torch.Generator().manual_seed(7))
    slow = baseline.compute_loss(written_out, imgs, target, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)


def test_fast_path_takes_the_attention_kernel_resolve_attention_picks(throughput, micro_data):
    images, basis = micro_data
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    cpu = torch.device("cpu")
    for precision, expected in (("fp32", "sdpa"), ("bf16", "math")):
        path = throughput.FastPath(build_mae("micro"), nchw, basis, 4, cpu, precision, compile=False)
        assert path.attention == expected and attention_kernel(path.model) == expected
    forced = throughput.FastPath(build_mae("micro"), nchw, basis, 4, cpu, "bf16", compile=False, attention="sdpa")
    assert attention_kernel(forced.model) == "sdpa"


def test_flop_count_includes_cpu_attention(throughput):
    from torch.utils.flop_counter import FlopCounterMode

    model = build_mae("micro")
    x = torch.rand(2, 3, 16, 16)
    with FlopCounterMode(display=False) as plain:
        loss, _, _ = model(x, x)
        loss.backward()
    per_image = throughput.model_flops_per_image("micro")
    assert per_image > plain.get_total_flops() / 2 > 0  # attention adds to the matmuls


def test_known_gpu_peaks(throughput):
    assert throughput.known_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert throughput.known_peak("NVIDIA H100 PCIe") == 756e12
    assert throughput.known_peak("NVIDIA GeForce RTX 3090") is None


def test_throughput_record(records):
    folder, record, _ = records
    out = folder / "pretrain_throughput-cpu-test.json"
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["kind"] == "pretrain_throughput" and record["device"] == "cpu"
    rows = {r["path"]: r for r in record["rows"]}
    assert set(rows) == {"baseline", "fast", "fast-loop"}
    for r in rows.values():
        assert r["img_per_s"] > 0 and r["ms_per_step"] > 0 and r["flops_per_step"] > 0 and r["mfu"] > 0
        assert r["preset"] == "micro" and r["batch"] == 4
    assert rows["baseline"]["ratio_vs_baseline"] == 1.0 and rows["baseline"]["precision"] == "fp32"
    assert rows["baseline"]["attention"] == "math"
    assert rows["fast"]["attention"] == record["settings"]["fast_attention"] == (
        "math" if rows["fast"]["precision"] == "bf16" else "sdpa")
    assert rows["fast"]["repeats"] == 2 and np.isfinite(rows["fast"]["loss"])
    pc = record["precision_comparison"]
    variants = [(r["precision"], r["attention"]) for r in pc["rows"]]
    if pc["cpu_has_fast_bf16"]:  # emulated bf16 times only the kernel resolve_attention picks
        assert variants == [("fp32", "sdpa"), ("fp32", "math"), ("bf16", "sdpa"), ("bf16", "math")]
    else:
        assert variants == [("fp32", "sdpa"), ("fp32", "math"), ("bf16", "math")]
    assert pc["auto_attention"] == {"fp32": "sdpa", "bf16": "math"}
    chosen = {p: next(r for r in pc["rows"] if r["precision"] == p and r["attention"] == a)
              for p, a in pc["auto_attention"].items()}
    assert pc["bf16_time_over_fp32"] == pytest.approx(chosen["bf16"]["ms_per_step"] / chosen["fp32"]["ms_per_step"])
    assert pc["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    prof = record["profile"]
    assert prof["fast"]["top_ops"] and prof["baseline"]["top_ops"]
    assert any(k.startswith("fast/forward") for k in prof["fast"]["stages_ms_per_step"])
    assert record["paper_estimate"] is None  # vit-tiny-cifar was not measured
    for key in ("git_revision", "versions", "device_name", "cpu_capability", "time_utc"):
        assert key in record["provenance"]


def test_paper_estimate_uses_the_largest_fast_batch(throughput):
    rows = [{"preset": "vit-tiny-cifar", "path": "fast", "batch": b, "img_per_s": ips}
            for b, ips in ((32, 100.0), (128, 400.0))]
    est = throughput.paper_estimate(rows)
    assert est["measured_batch"] == 128
    assert est["seconds"] == pytest.approx(400 * 50_000 / 400.0)


# ---------------------------------------------------------------- PCA


def test_filter_difference_is_zero_for_the_same_basis_and_positive_otherwise(pca_bench):
    x = torch.rand(200, 3, 8, 8, dtype=torch.float64)
    exact = pca.fit_pca(x)
    same = pca_bench.filter_difference(x, exact, exact, 0.25)
    assert same["rel_diff"] == 0 and same["k_exact"] == same["k_topk"]
    other = pca.fit_pca(x[:100])
    assert pca_bench.filter_difference(x, exact, other, 0.25)["rel_diff"] > 1e-3


def test_pca_bench_record(records):
    folder, _, record = records
    out = folder / "pca_bench-cpu-test.json"
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    cases = {c["case"]: c for c in record["cases"]}
    assert set(cases) == {"cifar", "stl-train", "stl-unlabeled"}
    for c in cases.values():
        assert c["speedup_full_size"]["topk-data q=0.25"] > 0
        full = [r for r in c["rows"] if r["n_images"] == c["n_images"]]
        assert {r["path"] for r in full} >= {"exact", "topk-data"}
    assert cases["stl-unlabeled"]["speedup_estimated"] and not cases["stl-unlabeled"]["accuracy"]
    assert all(a["rel_diff"] < 1e-4 and a["k_exact"] == a["k_topk"] for a in cases["cifar"]["accuracy"])
    assert {a["path"] for a in cases["cifar"]["accuracy"]} == {"topk-data", "topk-cov"}


# ---------------------------------------------------------------- notebook 07


def output_text(nb: dict) -> str:
    """Everything the executed notebook's code cells printed or displayed."""
    return json.dumps([o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])])


def test_performance_notebook_executes_on_records(records, tmp_path):
    """Every cell with both kinds of record (the empty case runs in test_notebooks.py)."""
    from lowvar_mae import book

    folder, _, _ = records
    out = book.execute_notebook(book.find_notebook("07"), tmp_path / "07.ipynb", {"bench_dir": str(folder)},
                                timeout=300)
    outputs = output_text(json.loads(out.read_text()))
    assert "No pretraining-throughput" not in outputs and "No PCA" not in outputs and "Traceback" not in outputs
    assert outputs.count("image/png") == 1  # img/s by path, preset and machine
    assert "fast / baseline" in outputs and "exact / top-k" in outputs and "The fast path against" in outputs


def test_bench_records_are_named_by_kind_device_type_and_utc_time(tmp_path):
    from lowvar_mae.results import bench_record_path

    path = bench_record_path("pca_bench", "cuda:1", root=tmp_path)
    assert path.parent == tmp_path / "bench"
    kind, device, stamp = path.stem.rsplit("-", 2)
    assert (kind, device, len(stamp), stamp[8], stamp[-1]) == ("pca_bench", "cuda", 16, "T", "Z")


def test_convnet_throughput_record_compares_formats_projections_and_kernels(tmp_path):
    bench = load_bench("convnet_throughput")
    out = tmp_path / "convnet.json"
    assert bench.main(["--batch", "8", "--warmup", "1", "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert {(r["isa"], r["projection"], r["channels_last"]) for r in rows} == {
        (i, p, c) for i in ("native", "avx2") for p in ("none", "bottom25") for c in (False, True)}
    assert all(r["capability"] == "AVX2" for r in rows if r["isa"] == "avx2")  # the subprocess took the setting
    native = {r["capability"] for r in rows if r["isa"] == "native"}
    assert native == {torch.backends.cpu.get_cpu_capability()}
    for r in rows:
        assert r["images_per_s"] > 0 and r["step_s_min"] <= r["step_s"] <= r["step_s_max"]
        assert r["point_minutes"] == pytest.approx(record["epochs"] * 50_000 / r["images_per_s"] / 60)
        if not r["channels_last"]:
            assert r["vs_nchw"] == 1.0
        if r["isa"] == "native":
            assert r["vs_native"] == 1.0
    assert "cpu_capability" in record["provenance"]
