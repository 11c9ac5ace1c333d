"""Smoke tests of the benchmarks: they run, and their JSON reports are self-consistent.

Speed targets are not asserted here (a shared CI machine cannot time them);
they live in the benchmarks' output.  These tests keep ``bench/`` from
rotting: every contender is measured, the compiled kernels were the ones
measured, and each ratio equals the ratio of the medians it is computed from.
"""

import json
import os
import sys

import forked_cli
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _run_bench(script, *arguments, timeout=900):
    """Run ``bench/<script>`` with ``arguments``; fail with its stderr's end if it fails."""
    completed = forked_cli.run(
        [sys.executable, os.path.join(BENCH, script), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def _assert_step_ratios(report, pairs):
    """Each ``"<group>: <num>/<den>"`` ratio is the ratio of those rows' medians, per clock."""
    rows = report["results"]
    assert set(report["ratios"]) == set(pairs)
    for name, (numerator, denominator) in pairs.items():
        for clock, key in (("wall", "median_step_s"), ("cpu", "median_cpu_step_s")):
            assert report["ratios"][name][clock] == pytest.approx(
                rows[numerator][key] / rows[denominator][key], rel=1e-12
            )


def test_layer_speed_quick_reports_every_contender(tmp_path):
    output = tmp_path / "layer_speed.json"
    _run_bench("layer_speed.py", "--quick", f"--output={output}", timeout=600)
    report = json.loads(output.read_text())
    assert report["machine"]["logical_cpus"] == os.cpu_count()
    assert report["machine"]["gn_keras_kernels"] == {"setting": "require", "loaded": True}
    (row,) = report["results"]
    assert row["shape"] == [2, 56, 56, 256]
    expected = {
        "ours",
        "ours_tf_ops",
        "ours_relu",
        "ours_then_relu",
        "ours_silu",
        "ours_then_silu",
        "keras_gn_then_silu",
        "keras_gn",
        "keras_bn",
        "copy",
    }
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
    _run_bench(
        "train_throughput.py",
        "--steps=2",
        "--warmup_steps=1",
        "--batch_size=2",
        "--image_size=32",
        "--norms=gn,bn",
        "--pipelines=synthetic",
        f"--json={output}",
    )
    report = json.loads(output.read_text())
    assert report["machine"]["gn_keras_kernels"] == {"setting": "require", "loaded": True}
    rows = report["results"]
    assert set(rows) == {"synthetic/gn", "synthetic/bn"}
    for row in rows.values():
        assert row["steps"] == 2 and 0 < row["median_step_s"] and 0 < row["first_step_s"]
    _assert_step_ratios(report, {"synthetic: gn/bn": ("synthetic/gn", "synthetic/bn")})


def test_video_throughput_smallest_run_reports_steps_and_ratios(tmp_path):
    """Two timed steps of a tiny I3D per norm: the GN/BN ratio of the policy measured."""
    output = tmp_path / "video_throughput.json"
    printed = _run_bench(
        "video_throughput.py",
        "--model=resnet20_i3d",
        "--frames=2",
        "--crop_size=8",
        "--batch_size=2",
        "--steps=2",
        "--warmup_steps=1",
        "--precisions=float32",
        f"--json={output}",
    )
    report = json.loads(output.read_text())
    assert report["machine"]["gn_keras_kernels"] == {"setting": "require", "loaded": True}
    assert report["settings"]["clips_per_step"] == 2 and "load_average_at_end" in report["machine"]
    rows = report["results"]
    assert set(rows) == {"float32/gn", "float32/bn"}
    for row in rows.values():
        assert row["steps"] == 2
        assert row["images_per_sec"] == pytest.approx(2 / row["median_step_s"], rel=1e-12)
    _assert_step_ratios(report, {"float32: gn/bn": ("float32/gn", "float32/bn")})
    assert "| policy/norm | median step s | CPU s/step | clips/s | first step s |" in printed
    assert "| step-time ratio | wall | CPU |" in printed


def test_loop_overhead_smallest_run_reports_ratios_to_keras_fit(tmp_path):
    """One timed round of 2 steps per contender: each ratio is the one its medians give."""
    output = tmp_path / "loop_overhead.json"
    printed = _run_bench(
        "loop_overhead.py", "--rounds=1", "--steps=2", "--steps_per_loop=1,2", f"--json={output}"
    )
    report = json.loads(output.read_text())
    assert report["settings"]["rounds"] == 1 and report["settings"]["steps_per_round"] == 2
    rows, seconds = report["results"], report["round_seconds"]
    assert set(rows) == set(seconds) == {"ours_k1", "ours_k2", "keras_fit"}
    for name in ("ours_k1", "ours_k2"):
        (fit_wall,), (our_wall,) = seconds["keras_fit"]["wall"], seconds[name]["wall"]
        (fit_cpu,), (our_cpu,) = seconds["keras_fit"]["cpu"], seconds[name]["cpu"]
        ratio = report["ratios"][f"{name}/keras_fit"]
        assert ratio["images_per_sec"] == pytest.approx(fit_wall / our_wall, rel=1e-9)
        assert ratio["cpu_images_per_sec"] == pytest.approx(fit_cpu / our_cpu, rel=1e-9)
        assert ratio["paired_images_per_sec"] == pytest.approx(fit_wall / our_wall, rel=1e-9)
    assert "| contender | images/s (median wall) | CPU ms per image (median) |" in printed


def test_vae_decode_tiny_run_reports_ratios_and_differences(tmp_path):
    """A 2-stack VAE, one timed round: every ratio is its medians', the outputs agree."""
    output = tmp_path / "vae_decode.json"
    printed = _run_bench(
        "vae_decode.py",
        "--tiny",
        "--steps=1",
        "--warmup_steps=1",
        "--image_size=32",
        f"--json={output}",
    )
    report = json.loads(output.read_text())
    assert report["machine"]["gn_keras_kernels"] == {"setting": "require", "loaded": True}
    assert report["settings"]["latent_shape"] == [1, 16, 16, 16]
    # Per part (encoder, decoder) of the tiny VAE: 2 + 2 mid ResNet blocks with
    # 2 norms each, the attention's norm and the output norm; all but the
    # attention's are followed by their own SiLU.
    assert report["settings"]["replaced"] == {"dropin": 20, "dropin_fused": 20}
    assert report["settings"]["fused"] == {"dropin": 0, "dropin_fused": 18}
    rows = report["results"]
    names = ("keras", "dropin", "dropin_fused")
    assert set(rows) == {f"{group}/{name}" for group in ("decode", "encode") for name in names}
    pairs = {
        f"{group}: {top}/{bottom} (ratio of medians)": (f"{group}/{top}", f"{group}/{bottom}")
        for group in ("decode", "encode")
        for top, bottom in (
            ("dropin", "keras"),
            ("dropin_fused", "keras"),
            ("dropin_fused", "dropin"),
        )
    }
    of_medians = {name: value for name, value in report["ratios"].items() if name in pairs}
    _assert_step_ratios({**report, "ratios": of_medians}, pairs)
    assert len(report["ratios"]) == 2 * len(pairs)  # and as many medians of per-round ratios
    assert all(0 <= value <= 1e-4 for value in report["max_relative_difference"].values())
    assert "decode dropin_fused/keras wall (median of per-round ratios)" in printed
