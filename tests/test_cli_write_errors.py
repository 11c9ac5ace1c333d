"""A folder that cannot be written or a full disk: one line, exit 1, nothing damaged (issue 12, 5).

The read-only cases run the scripts without root's power to ignore file
modes (see ``_without_root_overrides``); the full disk is a patched ``Model.save``
that writes part of its file and fails with ENOSPC in the middle of a run.
That one run serves both: its folder, holding what the first epoch wrote,
is copied and made read-only for the scripts to fail on.
"""

import ctypes
import errno
import hashlib
import os
import shutil
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from gn_keras.train import classify, cli
from gn_keras.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_CAPBSET_DROP = 24  # linux/prctl.h
FLAGS = dict(
    image_size=8,
    batch_size_per_replica=8,
    epochs=2,
    steps_per_epoch=2,
    eval_steps=1,
    warmup_epochs=0,
)
WRITTEN = ("results.json", "settings.json", "preprocessing.json", "best.keras", "last.keras")


def _digests(root, names=None):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if names is None or relative in names:
                with open(path, "rb") as handle:
                    found[relative] = hashlib.sha256(handle.read()).hexdigest()
    return found


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/d/x"), "cannot write /d/x: no space"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/y"), "/ro/y: permission denied"),
        (OSError(errno.EROFS, "Read-only file system", "/m"), "/m: read-only file system"),
        (
            tf.errors.PermissionDeniedError(None, None, "/ro/ckpt-1_temp; Permission denied\nx"),
            "cannot write: permission denied: /ro/ckpt-1_temp; Permission denied",
        ),
        (
            tf.errors.ResourceExhaustedError(None, None, "/d/events: No space left on device"),
            "cannot write: no space left on device (disk full): /d/events",
        ),
    ],
)
def test_write_errors_are_one_line_naming_path_and_reason(error, expected):
    line = cli.write_error_line(error)
    assert expected in line and "\n" not in line


@pytest.mark.parametrize(
    "error",
    [ValueError("bad"), FileNotFoundError(errno.ENOENT, "No such file", "/x"), KeyError("k")],
)
def test_other_errors_are_not_write_errors(error):
    assert cli.write_error_line(error) is None


@pytest.fixture(scope="module")
def disk_full_run(tmp_path_factory):
    """gn-train's main, disk full at epoch 2's first save: (model_dir, saves, snapshot, exit)."""
    model_dir = tmp_path_factory.mktemp("disk_full") / "run"
    config = config_lib.make_config(model_dir=str(model_dir), **FLAGS)
    real_save = keras.Model.save
    calls, snapshot = [], {}

    def save_until_disk_full(model, path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= 2:  # epoch 1's last.keras and best.keras
            return real_save(model, path, *args, **kwargs)
        snapshot.update(_digests(model_dir, WRITTEN))
        with open(path, "wb") as handle:  # part of the file, then the disk is full
            handle.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    main = cli.guard_main(lambda argv: classify.train(config), "gn-train")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "save", save_until_disk_full)
        with pytest.raises(SystemExit) as stopped:
            main([])
    return model_dir, calls, snapshot, stopped.value


def test_full_disk_mid_run_is_one_line_and_keeps_earlier_files(disk_full_run):
    model_dir, calls, snapshot, stopped = disk_full_run
    message = stopped.code
    assert isinstance(message, str), "a message means exit status 1"
    assert message == (
        f"gn-train: error: cannot write {calls[-1]}: no space left on device (disk full)."
    )
    assert set(snapshot) == set(WRITTEN)
    assert _digests(model_dir, WRITTEN) == snapshot


def _without_root_overrides():
    """Drop the capabilities that let root ignore file modes (in the child, before exec).

    Running as another user is no option: this interpreter lives under
    /root.  Without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER,
    root's processes obey the modes like anyone's.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unprivileged(args, home):
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home),
        "MPLCONFIGDIR": str(home),
        "GN_KERAS_KERNELS": "off",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_without_root_overrides,
    )


def _read_only(path):
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o555)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)


def test_read_only_model_dir_and_output_dir_are_one_line(tmp_path, disk_full_run):
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "ro"
    model_dir = str(root / "run")
    shutil.copytree(disk_full_run[0], model_dir)  # a run's folder, with its .lock
    _read_only(root)
    before = _digests(model_dir)
    flags = [f"--{name}={value}" for name, value in {**FLAGS, "epochs": 1}.items()]

    rerun = _unprivileged(["gn_keras.train.classify", f"--model_dir={model_dir}", *flags], home)
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    last = rerun.stderr.strip().splitlines()[-1]
    assert last == f"gn-train: error: cannot write {model_dir}/.lock: permission denied."

    fresh = str(root / "new_run")
    started = _unprivileged(["gn_keras.train.classify", f"--model_dir={fresh}", *flags], home)
    assert started.returncode == 1, started.stderr[-3000:]
    assert started.stderr.strip().splitlines()[-1] == (
        f"gn-train: error: cannot write {fresh}: permission denied."
    )

    out = str(root / "exported")
    exported = _unprivileged(
        ["gn_keras.train.export", f"--trained_model={model_dir}", f"--output_dir={out}"], home
    )
    assert exported.returncode == 1, exported.stderr[-3000:]
    last = exported.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gn-export: error: cannot write {out}.tmp-"), exported.stderr[-2000:]
    assert last.endswith(": permission denied.")
    assert _digests(model_dir) == before
    assert sorted(os.listdir(root)) == ["run"]
