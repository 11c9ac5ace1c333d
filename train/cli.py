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
"""

import sys

from absl import app, flags

from gn_keras._checks import FlagError

USAGE_ERROR_STATUS = 2  # bad flags or arguments, as argparse and POSIX tools exit
HELP_HINT = "(run with --helpfull for all flags)"


def describe_outputs(results):
    """Where the run left everything, for the end of the command-line job."""
    paths = results["outputs"]
    lines = [
        f"Median top-1 error of the last 5 epochs: {results['median_last5_top1_error']:.4f} "
        f"(final {results['final_top1_error']:.4f}, best {results['best_top1_error']:.4f} "
        f"at epoch {results['best_epoch']}); {results['images_per_sec']:.1f} images/s.",
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
    sys.exit(f"{program}: error: {_one_line(error)}")


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


def run_command(main, program, define_flags):
    """Define the flags, then ``app.run(main)`` with parsing errors reported in one line.

    Every script defines its flags here, when it runs (never at import), so
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

    app.run(main, flags_parser=parse)
