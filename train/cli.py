"""Command-line plumbing shared by every script (gn-train, gn-finetune, gn-study, gn-export).

``run_command`` parses absl flags and reports a bad flag in one line;
``exit_with_error`` ends a script with one line on stderr and the right exit
status; ``describe_outputs`` tells where a training run left its files.
"""

import sys

from absl import app, flags

from gn_keras import load

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

    A file that cannot be read (``gn_keras.load.ModelFileError``) exits with
    status 1; any other error (an exception or a message) is taken as bad
    flags or arguments: status 2 and a pointer to --helpfull.  Not absl's
    ``app.UsageError``, which prints the whole flag listing above the one
    line that matters.
    """
    if isinstance(error, load.ModelFileError):
        sys.exit(f"{program}: error: {error}")
    sys.stderr.write(f"{program}: error: {error} {HELP_HINT}\n")
    sys.exit(USAGE_ERROR_STATUS)


def run_command(main, program):
    """``app.run(main)`` with flag-parsing errors reported by ``exit_with_error``.

    Also checks that no positional argument is left over.
    """

    def parse(argv):
        try:
            remaining = flags.FLAGS(argv)
        except flags.Error as error:  # an unknown flag, a bad enum or type
            exit_with_error(program, error)
        if len(remaining) > 1:
            exit_with_error(program, f"unexpected arguments: {' '.join(remaining[1:])}")
        return remaining

    app.run(main, flags_parser=parse)
