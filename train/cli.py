"""Command-line plumbing shared by every script (gn-train, gn-finetune, gn-study, gn-export).

``run_command`` defines a script's flags, parses them and reports a bad flag
in one line; ``exit_with_error`` ends a script with one line on stderr and
the right exit status; ``describe_outputs`` tells where a training run left
its files.

Exit statuses: 2 for a usage error only, i.e. a bad flag, argument or
combination of flags (absl's ``flags.Error`` while parsing, or
``FlagError`` from the config and option checks, see
``gn_keras._checks``), with a pointer to --helpfull; 1 for anything else
that stops a run (a file that cannot be read, a ``ValueError`` raised deep
in training), without the pointer.

A ``ValueError`` out of a script's ``main`` is reported here once, for
every script: status 2 if it is a ``FlagError``, else 1.

An export that fails its own check (``gn_keras.export.ExportMismatchError``,
e.g. at the end of a training run) also ends in its one line, status 1;
the staged export is already removed by then (``gn_keras.staging``).

A place that cannot be written, for any script, is caught here once
(``write_error_line``): a read-only ``--model_dir``/``--output_dir`` or a
full disk, whether Python (``PermissionError``, ``OSError`` ENOSPC, EROFS,
EDQUOT) or TensorFlow (``PermissionDeniedError``, ``ResourceExhaustedError``
from a checkpoint or summary write) saw it, ends the script with one line
naming the path and the reason, status 1.  Every file the scripts write is
written to a temporary name and renamed into place, so what was written
before stays whole.

absl's log level is WARNING for every script unless ``--verbosity`` is
given (absl's INFO lines hide the progress and result lines).
"""

import errno
import sys

from absl import app, flags, logging

from gn_keras._checks import FlagError

USAGE_ERROR_STATUS = 2  # bad flags or arguments, as argparse and POSIX tools exit
HELP_HINT = "(run with --helpfull for all flags)"


def describe_outputs(results, metric_label):
    """Where the run left everything, for the end of the command-line job.

    ``metric_label`` names the run's primary metric (``results["primary_metric"]``)
    in words, e.g. "top-1 error".
    """
    from gn_keras.train.loop import rate_text  # loaded by then; keeps TensorFlow out of here

    paths = results["outputs"]
    metric = results["primary_metric"]
    lines = [
        f"Median {metric_label} of the last 5 epochs: {results[f'median_last5_{metric}']:.4f} "
        f"(final {results[f'final_{metric}']:.4f}, best {results[f'best_{metric}']:.4f} "
        f"at epoch {results['best_epoch'] + 1} of the 'Epoch N/E' lines); "
        f"{rate_text(results['images_per_sec'], 'image')}.",
        f"  results:        {paths['results']}",
        f"  checkpoints:    {paths['checkpoints']}  (rerun the same command to resume)",
        f"  TensorBoard:    tensorboard --logdir {paths['tensorboard']}",
        f"  Keras models:   {paths['best_keras']}, {paths['last_keras']}",
        f"  SavedModel:     {paths['saved_model']}",
        f"  preprocessing:  {paths['preprocessing']}",
    ]
    return "\n".join(lines)


def exit_with_error(program, error):
    """End the command ``program`` with one line on stderr, no traceback.

    ``error`` is an exception or a message.  A message, a ``FlagError`` or
    an absl ``flags.Error`` is a usage error: status 2 and a pointer to
    --helpfull (not absl's ``app.UsageError``, which prints the whole flag
    listing above the one line that matters).  Any other exception (a file
    that cannot be read, a ``ValueError`` from deep inside a run) exits with
    status 1 and its message alone.
    """
    if isinstance(error, (str, FlagError, flags.Error)):
        sys.stderr.write(f"{program}: error: {error} {HELP_HINT}\n")
        sys.exit(USAGE_ERROR_STATUS)
    sys.exit(f"{program}: error: {write_error_line(error) or _one_line(error)}")


_CANNOT_WRITE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
}
_TF_CANNOT_WRITE = {
    "PermissionDeniedError": "permission denied",
    "ResourceExhaustedError": "out of space (disk full or out of memory)",
}


def write_error_line(error):
    """One line naming the path and the reason if ``error`` is a failed write, else None.

    Covers Python's ``OSError`` with a permission, read-only or no-space
    errno and TensorFlow's ``PermissionDeniedError`` and
    ``ResourceExhaustedError`` (whose message names the file).
    """
    if isinstance(error, OSError) and error.errno in _CANNOT_WRITE:
        path = error.filename if error.filename is not None else "a file"
        return f"cannot write {path}: {_CANNOT_WRITE[error.errno]}."
    for kind in type(error).__mro__:
        if kind.__name__ in _TF_CANNOT_WRITE and kind.__module__.startswith("tensorflow"):
            reason = _TF_CANNOT_WRITE[kind.__name__]
            if "no space left" in str(error).lower():
                reason = _CANNOT_WRITE[errno.ENOSPC]
            return f"cannot write: {reason}: {_one_line(getattr(error, 'message', error))}"
    return None


def guard_main(main, program, one_line_errors=()):
    """``main`` with its expected errors turned into one line (module doc).

    A ``ValueError`` (a bad flag from the config checks: status 2; a run
    that cannot go on: status 1), an error of a kind in ``one_line_errors``,
    a failed export check or a failed write ends the script with one line;
    anything else keeps its traceback (a bug).
    """

    def guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except Exception as error:  # noqa: BLE001 -- only the kinds above, see below
            if isinstance(error, (ValueError, *one_line_errors)) or _is_export_mismatch(error):
                exit_with_error(program, error)
            line = write_error_line(error)
            cause = error.__cause__ or error.__context__
            if line is None and cause is not None:
                line = write_error_line(cause)
            if line is None:
                raise
            exit_with_error(program, OSError(line))

    return guarded


def _is_export_mismatch(error):
    """Whether ``error`` is an export that failed its check (``gn_keras.export``).

    Looked up among the loaded modules: this module must not import
    TensorFlow, and an error of that kind means its module is loaded.
    """
    export = sys.modules.get("gn_keras.export")
    return export is not None and isinstance(error, export.ExportMismatchError)


def _find_gpus_quietly():
    """Let TensorFlow look for GPUs now, dropping its "failed call to cuInit" line.

    The CUDA build of TensorFlow logs that error line the first time it
    looks for GPUs, on every machine without one; a callback TensorFlow
    registers with absl makes every ``app.run`` look.  Looking once here,
    with stderr captured, settles it (later looks are answered from
    TensorFlow's cache).  Every other line is passed on, and with an NVIDIA
    device node present (a broken driver, say) nothing is hidden.  Only
    physical devices are listed, so ``--cpu_replicas`` can still split the CPU.
    """
    import glob
    import os
    import tempfile

    import tensorflow as tf

    if glob.glob("/dev/nvidia*"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            tf.config.list_physical_devices("GPU")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines(keepends=True):
            if "failed call to cuInit" not in line:
                sys.stderr.write(line)


def _one_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _define_key_flags(define_flags):
    """Call ``define_flags(flags.FLAGS)``; list the flags it adds in ``--help``.

    absl's ``--help`` shows the flags of the main module, i.e. of
    ``sys.argv[0]``: a console script's file defines none, and shared flags
    come from ``train.flags``.  Registering them for ``sys.argv[0]`` lists
    them however the script is started.
    """
    before = set(flags.FLAGS)
    define_flags(flags.FLAGS)
    for name in sorted(set(flags.FLAGS) - before):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def run_command(main, program, define_flags, one_line_errors=()):
    """Define the flags, then ``app.run(main)`` with parsing errors reported in one line.

    A ``ValueError`` or an error of a kind in ``one_line_errors`` raised by
    ``main``, a failed write (read-only folder, full disk) or a failed export
    check ends the script in one line (``guard_main``), and absl logs
    WARNING and above unless --verbosity is given (module doc).  Every
    script defines its flags here, when it runs (never at import), so
    importing a script's module defines nothing.  Also checks that no
    positional argument is left over.
    """
    _define_key_flags(define_flags)

    def parse(argv):
        try:
            remaining = flags.FLAGS(argv)
        except flags.Error as error:  # an unknown flag, a bad enum or type
            exit_with_error(program, error)
        if len(remaining) > 1:
            exit_with_error(program, f"unexpected arguments: {' '.join(remaining[1:])}")
        return remaining

    _find_gpus_quietly()
    app.run(guard_main(main, program, one_line_errors), flags_parser=parse)
