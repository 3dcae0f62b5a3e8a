"""bench/archive_celery.py still runs: once, at a tiny size, on its own Celery stack.

A file of its own so that the two-worker runner can give it a core while the other benchmarks' smoke
run takes the other. Nothing is timed or compared with a target: only that both runs end, on the
workers they should, and the figures are printed.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tools import missing

from bench.celery_stack import unavailable

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(900)]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_the_celery_archive_benchmark_runs_on_one_then_two_workers(shared_cxr, tmp_path):
    if reason := unavailable():
        missing(reason)
    bench = subprocess.Popen(
        [sys.executable, "bench/archive_celery.py", "--quick", "--data", str(shared_cxr), "-o", str(tmp_path / "c.json")],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = bench.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the benchmark stops its Airflow processes and drops its database
        stdout, stderr = bench.communicate(timeout=60)
        pytest.fail(f"the benchmark took over 13 minutes:\n{stderr[-4000:]}")
    assert bench.returncode == 0, stdout[-4000:] + stderr[-4000:]
    result = json.loads(stdout)
    assert json.loads((tmp_path / "c.json").read_text()) == result
    one, one_new, two = (result["figures"][key] for key in ("one_worker", "one_worker_new", "two_workers"))
    # the warm figure is the same worker's second run: the first one is what a new worker costs
    assert one["shards"] == one_new["shards"] == 1
    assert one["shard_hosts"] == one_new["shard_hosts"] == ["cxr-bench-worker-1"]
    assert two["shards"] == 2 and two["shard_hosts"] == ["cxr-bench-worker-1", "cxr-bench-worker-2"]
    attempts = result["figures"]["two_worker_attempts_shard_hosts"]  # runs on one worker repeated, and printed
    assert 1 <= len(attempts) <= 3 and attempts[-1] == two["shard_hosts"]
    assert all(len(hosts) == 1 for hosts in attempts[:-1])
    for figures in (one, one_new, two):
        assert figures["films_per_s"] > 0 and figures["trigger_to_success_s"] > 0 and figures["task_span_s"] > 0
        # the timeline: each task scheduled, queued, started and ended in that order, in the run's order
        rows = figures["timeline"]
        assert rows[0]["what"] == "dag run" and rows[1]["what"] == "plan_shards" and rows[-1]["what"] == "merge_results"
        assert len(rows) == 3 + figures["shards"]
        for row in rows[1:]:
            assert 0 <= row["scheduled"] <= row["queued"] <= row["start"] <= row["end"] <= rows[0]["end"], row
        assert rows[1]["end"] <= min(row["start"] for row in rows[2:-1]) <= rows[-1]["start"]
    assert result["baseline"]["cli_films_per_s"] > 0
    walls = result["baseline"]["cli_wall_s"]  # before the stack, then after each one-worker run (--quick: 1 round)
    assert len(walls) == 3 and all(wall > 0 for wall in walls)
    assert result["baseline"]["cli_films_per_s"] == pytest.approx(48 / sorted(walls)[1], rel=0.02)
    # the warm run is compared with the CLI runs on either side of it (wall times rounded to the millisecond:
    # the CLI scores the 48 films in under a second since serving stopped importing TensorFlow)
    beside = (48 / walls[1] + 48 / walls[2]) / 2
    assert result["figures"]["one_worker_rounds_over_cli"] == [result["ratios"]["one_worker_over_cli"]]
    assert result["ratios"]["one_worker_over_cli"] == pytest.approx(one["films_per_s"] / beside, rel=0.03)
    for figures in (one, one_new):  # Airflow's own time: the run minus its one shard
        assert 0 < figures["outside_shards_s"] == pytest.approx(
            figures["trigger_to_success_s"] - figures["shard_seconds"][0], abs=0.15
        )
    assert set(result["ratios"]) == {
        "one_worker_over_cli", "one_new_worker_over_cli", "two_workers_over_cli", "two_over_one"
    }  # fmt: skip
    assert set(result["targets"]["one_worker_over_cli"]) == {"target", "value", "met"}
    # bench/table.py renders the README's row from it: six columns, the warm and the first-run ratios
    document = {"machine": result["machine"], "seconds": result["seconds"], "failed": [], "targets_met": 0,
                "targets_total": 1, "benchmarks": {"archive_celery": result}}  # fmt: skip
    (tmp_path / "all.json").write_text(json.dumps(document))
    table = subprocess.run(
        [sys.executable, "bench/table.py", str(tmp_path / "all.json")], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if line.startswith("| archive DAG on Celery")]
    assert row.count(" | ") == 5, row
    assert f"{result['ratios']['one_worker_over_cli']:.3f} (first run {result['ratios']['one_new_worker_over_cli']:.2f})" in row
