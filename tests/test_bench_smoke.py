"""The benchmarks in bench/ still run: each once, at a tiny size, through bench/run_all.py.

Nothing here is timed or compared with a target (CI machines are shared and their speed varies);
the test only proves that every benchmark runs end to end and prints the figures it promises.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tools import missing, under_ci

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")

EXPECTED = {
    "score_one": {
        "figures": ["p50_ms", "p95_ms", "score_only_p50_ms", "first_request_after_start_s"],
        "baseline": ["p50_ms", "p95_ms", "max_probability_difference"],
        "ratios": ["speedup_p50", "speedup_p95"],
        "targets": ["p50", "speedup"],
    },
    "batch_cli": {
        "figures": ["images_per_s", "startup_s", "wall_s", "cpu_ms_per_image", "failed_rows"],
        "baseline": ["images_per_s", "cpu_ms_per_image"],
        "ratios": ["of_limit", "cpu_time_of_limit", "of_inference_limit"],
        "limit_2": ["cpu_ms_per_image", "images_per_s"],
        "targets": ["of_limit", "of_inference_limit"],
    },
    "ingest": {
        "figures": ["n", "4n"],
        "baseline": ["limit_images_per_s", "original"],
        "ratios": ["of_limit_n", "of_limit_4n", "peak_rss_4n_over_n", "original_peak_rss_4n_over_n",
                   "of_inference_limit_n", "of_inference_limit_4n"],
        "limit_2": ["cpu_ms_per_image", "images_per_s"],
        "targets": ["of_limit_n", "of_limit_4n", "of_inference_limit_n", "memory"],
    },
    "train": {
        "figures": ["images_per_s", "cpu_ms_per_image", "epoch_s", "epoch_4200_s"],
        "baseline": ["images_per_s", "cpu_ms_per_image"],
        "ratios": ["of_compute_limit"],
        "targets": ["of_compute_limit", "epoch_4200_s"],
    },
    "page": {
        "figures": ["cold_s", "warm_p50_s", "warm_p95_s", "first_page_load_s"],
        "baseline": ["first_request_s", "page_reload_p50_s"],
        "ratios": ["cold_over_first_request", "warm_over_page_reload"],
        "targets": ["warm_p50", "cold"],
    },
}


def test_every_benchmark_runs_once_at_a_tiny_size_and_prints_its_figures(shared_cxr, tmp_path):
    names = [name for name in EXPECTED if name != "page" or CHROMIUM.exists() or under_ci()]
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/run_all.py",
            "--quick",
            "--data",
            str(shared_cxr),
            "-o",
            str(out),
            "--only",
            *names,
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    combined = json.loads(run.stdout)
    assert json.loads(out.read_text()) == combined
    assert combined["quick"] is True and not combined["failed"]
    for key in ("date", "cpu", "cores"):
        assert combined["machine"][key]
    for name in names:
        result = combined["benchmarks"][name]
        assert result["benchmark"] == name
        for section, keys in EXPECTED[name].items():
            missing = [key for key in keys if key not in result[section]]
            assert not missing, f"{name}.{section} lacks {missing}"
        for key, figure in result["targets"].items():
            assert set(figure) == {"target", "value", "met"}, f"{name}.targets.{key}"
            assert f"{name}.{key}" in combined["targets"]
    assert (
        combined["benchmarks"]["ingest"]["figures"]["4n"]["images"]
        == 4 * combined["benchmarks"]["ingest"]["figures"]["n"]["images"]
    )
    assert combined["benchmarks"]["batch_cli"]["figures"]["failed_rows"] == 0
    cli = combined["benchmarks"]["batch_cli"]
    assert cli["limit_2"]["images_per_s"] < cli["baseline"]["images_per_s"]  # the networks cost something
    table = subprocess.run(
        [sys.executable, "bench/table.py", str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 0, table.stderr
    body = [line for line in table.stdout.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(body) == len(names) and all(line.count(" | ") == 5 for line in body), table.stdout
    assert combined["benchmarks"]["score_one"]["baseline"]["max_probability_difference"] < 1e-4


@pytest.mark.airflow
def test_archive_benchmark_runs_once_at_a_tiny_size(shared_cxr, tmp_path):
    """bench/archive.py apart from run_all's smoke run: it needs airflow-venv/ and takes about a minute
    (two TensorFlow start-ups for the CLI and one per shard for the DAG)."""
    if not (PROJECT_ROOT / "airflow-venv" / "bin" / "python").exists():
        missing("airflow-venv/ is missing: run `bash scripts/setup_airflow.sh`")
    run = subprocess.run(
        [
            sys.executable,
            "bench/archive.py",
            "--quick",
            "--data",
            str(shared_cxr),
            "-o",
            str(tmp_path / "a.json"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(run.stdout)
    assert result["benchmark"] == "archive" and result["params"]["shards"] == 2
    for key in ("dag_films_per_s", "dag_wall_s", "per_shard_startup_s", "per_film_ms", "shard_seconds"):
        assert key in result["figures"], key
    # the timed run came after an untimed first run in the same process (which succeeded, or the benchmark
    # exits 1), whose tasks were recorded too; the estimate for a fresh process puts its planning back
    assert result["figures"]["first_run_plan_and_merge_s"] > 0
    first, timed = result["figures"]["first_run_plan_and_merge_s"], result["figures"]["plan_and_merge_s"]
    wall = result["figures"]["dag_wall_s"]
    assert result["ratios"]["dag_over_cli_first_run_estimated"] == pytest.approx(
        48 / (wall + first - timed) / result["baseline"]["cli_films_per_s"], rel=0.05
    )
    for key in ("cli_films_per_s", "cli_wall_s", "cli_startup_s"):
        assert key in result["baseline"], key
    assert set(result["ratios"]["projected_films_per_s"]) == {"1", "2", "4", "8"}
    assert set(result["targets"]["dag_over_cli"]) == {"target", "value", "met"}


def test_the_runtime_benchmark_compares_a_candidate_lung_model_with_the_served_one(shared_cxr, tmp_path):
    """bench/runtimes.py is not part of run_all (it compares runtimes, not product paths): run it here once
    with a registered lung model that is not in use, so the comparison between lung networks still runs."""
    candidate = PROJECT_ROOT / "models" / "lungs" / "v20261202-071257"  # 64 px, registered, not current
    out = tmp_path / "runtimes.json"
    run = subprocess.run(
        [sys.executable, "bench/runtimes.py", "--quick", "--data", str(shared_cxr), "--lung-model", str(candidate),
         "-o", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    served = json.loads(out.read_text())["figures"]["lungs_as_served"]
    baseline = served["models"][served["baseline"]]
    lungs = PROJECT_ROOT / "models" / "lungs"
    in_use = json.loads((lungs / "current.json").read_text())["version"]
    in_use_side = json.loads((lungs / in_use / "metadata.json").read_text())["input_side"]
    assert baseline["side"] == in_use_side and baseline["cpu_ratio_to_baseline"] == {"batch_1": 1.0, "batch_16": 1.0}
    small = served["models"][str(candidate)]
    assert small["side"] == 64 and small["runtime"] == "tflite"
    for batch in ("batch_1", "batch_16"):
        assert small[batch]["cpu_ms_per_film"] > 0 and small["cpu_ratio_to_baseline"][batch] > 0


def test_the_lung_architecture_benchmark_times_untrained_candidates_beside_the_128_px_u_net(tmp_path):
    """bench/lung_architectures.py is not part of run_all (it helps choose what to train): run it once with a
    cheap candidate at two thread counts, and check each network is timed against the same baseline."""
    out = tmp_path / "architectures.json"
    run = subprocess.run(
        [sys.executable, "bench/lung_architectures.py", "--quick", "--candidate", "64:4:separable:3",
         "--threads", "2", "1", "-o", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["baseline"]["network"] == "128:8:unet:4@2"
    assert set(result["figures"]) == {"128:8:unet:4@2", "128:8:unet:4@1", "64:4:separable:3@2", "64:4:separable:3@1"}
    assert result["figures"]["128:8:unet:4@2"]["less_cpu_than_baseline"] == {"batch_1": 1.0, "batch_16": 1.0}
    small = result["figures"]["64:4:separable:3@2"]
    assert small["parameters"] < result["figures"]["128:8:unet:4@2"]["parameters"] / 10
    assert all(ms > 0 for ms in small["cpu_ms_per_film"].values())


def test_the_large_film_benchmark_scores_3000_px_films_beside_the_same_films_at_512(shared_cxr, tmp_path):
    """bench/large_films.py is not part of run_all (issue #23's targets are set on 512 px films): run it once
    and check it scored real 3,000 px films and the same films at 512 px, each with where its CPU went."""
    out = tmp_path / "large.json"
    run = subprocess.run(
        [sys.executable, "bench/large_films.py", "--quick", "--data", str(shared_cxr), "-o", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert json.loads(run.stdout) == result
    assert max(result["params"]["height_width"]) == 3000 and result["params"]["films"] == 3
    for side in (result["figures"], result["baseline"]):
        assert side["p50_ms"] > 0 and side["cpu_ms_per_film"] > 0
        stages = side["stage_cpu_ms"]
        for step in ("decode + integrity checks", "lung network (one film per call)",
                     "lung post-processing (mask, plausibility, box)", "crop + resize + equalise",
                     "classifier + Grad-CAM + OOD (one film per call)"):  # fmt: skip
            assert stages[step] > 0, step
        assert 0 < side["networks_share_of_stages"] < 1
    limits = result["baseline"]["limit_cpu_ms_per_film"]
    assert set(limits) == {"large", "512"} and all(ms > 0 for ms in limits.values())
    ratio = result["figures"]["cpu_ms_per_film"] / result["baseline"]["cpu_ms_per_film"]
    assert result["ratios"]["cpu_large_over_512"] == pytest.approx(ratio, abs=0.01)
    assert result["targets"] == {} and set(result["probability_change"]) == {"median_abs", "max_abs"}
