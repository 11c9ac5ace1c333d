"""Smoke tests of the benchmarks: they run, and their JSON reports are self-consistent.

Speed targets are not asserted here (a shared CI machine cannot time them);
they live in the benchmarks' output.  These tests keep ``bench/`` from
rotting: every contender is measured, the compiled kernels were the ones
measured, and each ratio equals the ratio of the medians it is computed from.
"""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def test_layer_speed_quick_reports_every_contender(tmp_path):
    output = tmp_path / "layer_speed.json"
    completed = subprocess.run(
        [sys.executable, os.path.join(BENCH, "layer_speed.py"), "--quick", f"--output={output}"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["machine"]["logical_cpus"] == os.cpu_count()
    assert report["machine"]["gn_keras_kernels"] == {"setting": "require", "loaded": True}
    (row,) = report["results"]
    assert row["shape"] == [2, 56, 56, 256]
    expected = {"ours", "ours_tf_ops", "keras_gn", "keras_bn", "copy"}
    try:
        import torch  # noqa: F401

        expected.add("torch_gn")
    except ImportError:
        pass
    for mode in ("forward", "forward_backward"):
        times = row[mode]["times"]
        assert set(times) == expected
        for name, measured in times.items():
            assert 0 < measured["min_ms"] <= measured["median_ms"], (mode, name)
            assert measured["repeats"] == report["repeats"]
        for clock, key in (("ratios", "median_ms"), ("cpu_ratios", "cpu_median_ms")):
            for ratio_name, ratio in row[mode][clock].items():
                numerator, denominator = ratio_name.split("/")
                assert ratio["ratio"] == pytest.approx(
                    times[numerator][key] / times[denominator][key], rel=1e-12
                )
    assert "ours/copy" in row["forward"]["ratios"]
    assert "ours/keras_gn" in row["forward_backward"]["ratios"]


def test_train_throughput_smallest_run_reports_steps_and_ratios(tmp_path):
    """One timed ResNet-50 step per contender at 32 px: the report holds together."""
    output = tmp_path / "train_throughput.json"
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, "train_throughput.py"),
            "--steps=2",
            "--warmup_steps=1",
            "--batch_size=2",
            "--image_size=32",
            "--norms=gn,bn",
            "--pipelines=synthetic",
            f"--json={output}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["machine"]["gn_keras_kernels"] == {"setting": "require", "loaded": True}
    rows = report["results"]
    assert set(rows) == {"synthetic/gn", "synthetic/bn"}
    for row in rows.values():
        assert row["steps"] == 2 and 0 < row["median_step_s"] and 0 < row["first_step_s"]
    ratio = report["ratios"]["synthetic: gn/bn"]
    assert ratio["wall"] == pytest.approx(
        rows["synthetic/gn"]["median_step_s"] / rows["synthetic/bn"]["median_step_s"], rel=1e-12
    )
