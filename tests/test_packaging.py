"""The installed package: one ``gn_keras`` namespace, nothing at the top level besides it.

A wheel is built from the repo and installed into a new virtual
environment.  The environment sees the calling interpreter's
site-packages for the heavy dependencies (TensorFlow, Keras: installing
them again would take minutes) through a ``.pth`` file of plain paths,
whether that interpreter is a system one, a plain venv or a
``--system-site-packages`` venv; gn-keras itself comes from the wheel,
which the test checks (plain paths run no ``.pth`` hooks, so the calling
environment's editable install of gn-keras stays out).  The environment
gets no pip of its own (``ensurepip`` costs seconds of CPU): the calling
pip installs the wheel into it with ``--python``.
From a directory that holds its own ``models/`` and ``train/`` packages, as
research repos often do, ``gn-train`` trains one tiny epoch and both the
user's packages and ours import side by side.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What setup.py builds the wheel from.
WHEEL_SOURCE_FOLDERS = ("gn_keras", "models", "train")
WHEEL_SOURCE_FILES = ("setup.py", "README.md")


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: building writes build/ and *.egg-info next to the sources.
    # Only what setup.py reads is copied: the checkout may also hold a venv
    # (README's .venv is 9 GB) or training runs, which filled CI's disk once.
    source = out / "source"
    ignored = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    for folder in WHEEL_SOURCE_FOLDERS:
        shutil.copytree(os.path.join(REPO, folder), source / folder, ignore=ignored)
    for name in WHEEL_SOURCE_FILES:
        shutil.copy2(os.path.join(REPO, name), source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*command, "-q", "-w", str(out), str(source)], cwd=str(out))
    (path,) = [os.path.join(out, name) for name in os.listdir(out) if name.endswith(".whl")]
    return path


def test_wheel_installs_models_and_train_inside_gn_keras_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {
        name.split("/")[0]
        for name in names
        if not name.split("/")[0].endswith((".dist-info", ".data"))
    }
    assert top_level == {"gn_keras"}
    for expected in (
        "gn_keras/models/__init__.py",
        "gn_keras/models/resnet.py",
        "gn_keras/train/classify.py",
        "gn_keras/train/studies/__init__.py",
        "gn_keras/kernels/group_norm_ops.cc",
    ):
        assert expected in names
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "gn-train = gn_keras.train.classify:run" in entry_points


def _site_dirs():
    """The calling interpreter's package folders, in its own order."""
    return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]


def _venv_seeing_our_packages(venv):
    """A new venv whose own site-packages come first, then the caller's."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    own = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    own_site = own.stdout.strip()
    with open(os.path.join(own_site, "zz_calling_environment.pth"), "w") as pth:
        pth.write("\n".join(p for p in _site_dirs() if p != own_site) + "\n")
    return python


def test_the_new_venv_imports_tensorflow_and_keras_from_the_calling_environment(tmp_path):
    python = _venv_seeing_our_packages(tmp_path / "venv")
    import keras
    import tensorflow

    where = _run(
        [python, "-c", "import keras, tensorflow; print(keras.__file__, tensorflow.__file__)"]
    )
    assert where.stdout.split() == [keras.__file__, tensorflow.__file__]
    import gn_keras

    if not any(gn_keras.__file__.startswith(site) for site in _site_dirs()):  # editable here
        find = "import importlib.util as u; print(u.find_spec('gn_keras'))"
        gn = _run([python, "-c", find], cwd=str(tmp_path))  # not the repo: '' is on sys.path
        assert gn.stdout.strip() == "None", "the caller's editable gn-keras leaked in"


def test_installed_wheel_runs_beside_a_project_with_its_own_models_and_train(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = _venv_seeing_our_packages(venv)
    gn_train = str(venv / "bin" / "gn-train")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel])
    project = tmp_path / "project"
    for package in ("models", "train"):
        os.makedirs(project / package)
        (project / package / "__init__.py").write_text(f"OWNER = 'project {package}'\n")
    check = textwrap.dedent(f"""
        import gn_keras.models, gn_keras.train.classify, models, train
        assert models.OWNER == "project models" and train.OWNER == "project train"
        assert gn_keras.models.__file__.startswith({str(venv)!r}), gn_keras.models.__file__
        assert "resnet20" in gn_keras.models.available()
    """)
    _run([python, "-c", check], cwd=str(project))
    model_dir = project / "run"
    result = _run(
        [
            gn_train,
            "--epochs=1",
            "--steps_per_epoch=2",
            "--eval_steps=1",
            f"--model_dir={model_dir}",
        ],
        cwd=str(project),
    )
    assert os.path.isdir(model_dir / "saved_model"), result.stdout
    assert "Median top-1 error" in result.stdout
