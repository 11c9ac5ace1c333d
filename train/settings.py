"""The settings that shape a run, stored with it and compared on every rerun.

Rerunning a command in an existing ``--model_dir`` resumes the run there.
If a flag that changes what the run computes differs from the stored one
(``--groups``, ``--image_size``, the data, the schedule, the global batch…)
the checkpoint may still load, since the weight shapes fit, and the run
would silently mix two settings and overwrite the finished export.  So the
first attempt writes ``settings.json``; every later one compares and
refuses a difference in one line naming the flags with their old and new
values (a ``FlagError``: exit status 2 from the scripts).

``--extend_epochs`` is the one allowed change: a larger ``--epochs``.  The
learning-rate schedule is then rebuilt for the new length from the current
step (a cosine or step schedule jumps there), and ``settings.json`` and
``results.json`` record where, under ``schedule_changes``.

Settings that change how a run executes but not what it computes are not
compared: where it writes, how often it logs and checkpoints, how many
steps go into one compiled call, XLA, the strategy's name (its replica
count is compared, through the global batch) and the batch of gn-video's
final test (``--test_batch_size_per_replica``: its zero-weight padding
leaves the result unchanged).

Data is compared by what it is, not by how it was spelled: paths (a
config's ``PATH_SETTINGS`` fields) are compared resolved, absolute and
without symlinks, so the same files named from another working directory
are the same setting and other files under the same relative name are not;
and a config whose class has a ``data_identity()`` method adds what that
returns (e.g. a digest of an annotation file, ``file_digest``), so data
changed in place is a changed setting too.

A ``--model_dir`` that exists but is not a directory is refused first
(``workdir.check_model_dir``).
"""

import hashlib
import os

from gn_keras._checks import FlagError
from gn_keras.train import outputs as outputs_lib
from gn_keras.train import workdir

SETTINGS_FILE = "settings.json"
# Settings that name files, folders or glob patterns (of any task's config).
PATH_SETTINGS = (
    "data_dir",
    "train_annotations",
    "train_images",
    "val_annotations",
    "val_images",
    "train_tfrecords",
    "val_tfrecords",
)
_DIGEST_CHUNK = 1 << 20


def resolved_path(path):
    """``path`` absolute, with ``~`` and symlinks resolved; a URL (``gs://…``) as it is."""
    if not isinstance(path, str) or not path or "://" in path:
        return path
    return os.path.realpath(os.path.expanduser(path))


def _with_resolved_paths(settings):
    return {k: resolved_path(v) if k in PATH_SETTINGS else v for k, v in settings.items()}


def compared(config_type, flags):
    """The settings of a ``config_type`` config's ``as_dict()`` that are compared, paths resolved.

    ``config_type.NOT_COMPARED`` names the fields that cannot change what a
    run learns (where it writes, how it runs); each task's config adds its own.
    """
    ignored = config_type.NOT_COMPARED
    return _with_resolved_paths({k: v for k, v in flags.items() if k not in ignored})


def file_digest(path):
    """``"sha256 <16 hex digits>"`` of the file at ``path`` (for ``data_identity``), or None.

    64 bits tell two versions of a file apart, and keep a refusal line short.
    None (an unreadable file) leaves the refusal to the reader, which names it.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_DIGEST_CHUNK), b""):
                digest.update(chunk)
    except (OSError, TypeError):
        return None
    return f"sha256 {digest.hexdigest()[:16]}"


def shaping_settings(config, global_batch_size):
    """The compared settings of ``config``, its data's identity, and the global batch."""
    identity = getattr(config, "data_identity", None)
    return {
        **compared(type(config), config.as_dict()),
        **(identity() if identity is not None else {}),
        "global_batch_size": global_batch_size,
    }


def recorded(model_dir):
    """The settings an earlier attempt in ``model_dir`` stored, or None."""
    return _stored(model_dir)[0]


def _stored(model_dir):
    """``(settings, schedule_changes)`` of an earlier attempt, or ``(None, [])``.

    Runs written before ``settings.json`` existed are compared with the
    flags their ``results.json`` recorded.
    """
    path = os.path.join(model_dir, SETTINGS_FILE)
    if os.path.exists(path):
        stored = _read(path)
        return stored["settings"], stored.get("schedule_changes", [])
    results = os.path.join(model_dir, outputs_lib.RESULTS_FILE)
    if os.path.exists(results):
        payload = _read(results)
        flags = compared(payload.get("flags", {}))
        if "global_batch_size" in payload:
            flags["global_batch_size"] = payload["global_batch_size"]
        return flags, []
    return None, []


def _read(path):
    try:
        payload = outputs_lib.read_json(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is unreadable ({error}); move it away to start over.") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not a JSON object; move it away to start over.")
    return payload


def differences(stored, settings):
    """``{name: (old, new)}`` for the settings both know and that differ, epochs first.

    Stored paths are resolved again: earlier versions stored some as given.
    """
    stored = _with_resolved_paths(stored)
    names = sorted(set(stored) & set(settings), key=lambda n: (n != "epochs", n))
    return {n: (stored[n], settings[n]) for n in names if stored[n] != settings[n]}


def _completed_epochs(model_dir):
    path = os.path.join(model_dir, outputs_lib.RESULTS_FILE)
    try:
        return len(outputs_lib.read_json(path).get("epochs", []))
    except (OSError, ValueError, AttributeError):
        return None


def _spell(name):
    if name == "global_batch_size":
        return "the global batch (per-replica batch x replicas)"
    return f"--{name}"


def check(model_dir, settings, *, extend_epochs=False):
    """Refuse a rerun with other settings; return the schedule changes to record.

    Args:
      model_dir: the run's directory.
      settings: ``shaping_settings`` of this attempt.
      extend_epochs: allow a larger ``epochs`` than stored (``--extend_epochs``).
    """
    workdir.check_model_dir(model_dir)
    stored, changes = _stored(model_dir)
    if stored is not None:
        differing = differences(stored, settings)
        epochs = differing.pop("epochs", None)
        if differing:
            shown = "; ".join(
                f"{_spell(n)} {old!r} -> {new!r}" for n, (old, new) in differing.items()
            )
            raise FlagError(
                f"--model_dir={model_dir} holds a run with other settings ({shown}): use a new "
                "--model_dir, or the earlier flags to resume that run."
            )
        if epochs is not None:
            old, new = epochs
            if not extend_epochs or new < old:
                raise FlagError(
                    f"--model_dir={model_dir} holds a run of --epochs={old}, not {new}: use a new "
                    "--model_dir, or add --extend_epochs to train that run longer (its "
                    "learning-rate schedule is rebuilt for the new length from where it stands)."
                )
            change = {"after_epoch": _completed_epochs(model_dir), "epochs_from": old}
            changes = [*changes, {**change, "epochs_to": new}]
    return changes


def record(model_dir, settings, changes):
    """Store the settings of a run that has started (after its model was built)."""
    os.makedirs(model_dir, exist_ok=True)
    outputs_lib.write_json_atomically(
        os.path.join(model_dir, SETTINGS_FILE),
        {"settings": settings, "schedule_changes": changes},
    )
