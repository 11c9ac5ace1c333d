"""One writer per --model_dir, and the leftovers of killed writers swept (train/workdir.py)."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from absl import logging

from gn_keras.train import workdir

STALE = (
    "results.json.tmp-4242",
    "last.tmp-31337.keras",
    "saved_model.tmp-77/saved_model.pb",
    "checkpoints/ckpt-12_temp/part-00000-of-00001.data-00000-of-00001",
    "checkpoints/checkpoint.tmp-5",
)
KEPT = (
    "results.json",
    "last.keras",
    "saved_model/saved_model.pb",
    "checkpoints/ckpt-12.index",
    "checkpoints/checkpoint",
    ".checkpoints-worker1-tmp/ckpt-12.index",  # another worker's, alive in the same job
    "notes.tmp-x",
)


def _write(root, relative, rng):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = rng.bytes(int(rng.integers(1, 2000)))
    with open(path, "wb") as handle:
        handle.write(payload)
    return payload


def test_claim_sweeps_exactly_what_dead_writers_left(rng, tmp_path, monkeypatch):
    kept = {name: _write(tmp_path, name, rng) for name in KEPT}
    for name in STALE:
        _write(tmp_path, name, rng)
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    with workdir.claim(str(tmp_path)):
        pass
    for name in STALE:
        top = (
            name.split("/")[0]
            if not name.startswith("checkpoints/")
            else "/".join(name.split("/")[:2])
        )
        assert not os.path.exists(tmp_path / top), name
    for name, payload in kept.items():
        assert (tmp_path / name).read_bytes() == payload, name
    assert len(warnings) == len(STALE)
    assert all("left by an interrupted write" in warning for warning in warnings)


def test_a_second_claim_is_refused_while_the_first_holds(tmp_path):
    with workdir.claim(str(tmp_path)):
        with pytest.raises(ValueError, match="is in use by a running job"):
            with workdir.claim(str(tmp_path)):
                pass
    with workdir.claim(str(tmp_path)):  # released at the end of the first
        pass


def test_gn_train_on_a_directory_another_job_holds_says_so_in_one_line(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from gn_keras.train import workdir
            with workdir.claim({str(tmp_path)!r}):
                print("held", flush=True)
                time.sleep(120)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gn_keras.train.classify",
                f"--model_dir={tmp_path}",
                "--epochs=1",
                "--steps_per_epoch=1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "gn-train: error" in line]
    assert len(errors) == 1 and "is in use by a running job (pid" in errors[0]
    assert "Traceback" not in result.stderr
    assert time.perf_counter() - started < 300
