"""The final 10-clip test of a video run (the paper's §4.3 protocol), after the last epoch.

:class:`FinalTest` is a Keras callback for ``train.trainer.run``: at
``on_train_end`` (after the last epoch, or at once when a finished run is
rerun and its checkpoint restored) it runs the task's
:class:`~gn_keras.train.video.task.MultiViewEvaluator` over every validation
video, ``test_clips`` evenly spaced clips (× ``test_crops``) each, softmax
averaged, on the run's strategy.  It reuses the machinery's evaluation
(``train.loop.evaluate`` with a ``train.steps.StepRunner`` that only
evaluates), so no loop is written here.

:func:`add_to_results` puts the figures under ``"test"`` in
``results.json`` (the chief writes it; rewritten atomically).
"""

import dataclasses

import keras

from gn_keras.train import loop, outputs, steps
from gn_keras.train import strategy as strategy_lib


def run_test(task, model, data, strategy):
    """The 10-clip test metrics of ``model`` on ``data``'s validation videos."""
    test_steps = data.info["test_steps"]
    test_data = dataclasses.replace(data, eval_dataset_fn=data.extras.test_dataset_fn)
    with strategy.scope():
        evaluator = task.make_test_evaluator(data)
    runner = steps.StepRunner(
        strategy,
        model,
        None,  # evaluation only: no step of this runner trains
        task=task,
        global_batch_size=data.global_batch_size,
        evaluator=evaluator,
    )
    metrics = loop.evaluate(runner, test_data, test_steps)
    return {
        "views_per_video": data.info["test_views"],
        "videos": data.info["num_eval_examples"],
        "top1_accuracy": 1.0 - metrics["top1_error"],
        "top5_accuracy": 1.0 - metrics["top5_error"],
        **metrics,
    }


class FinalTest(keras.callbacks.Callback):
    """Runs :func:`run_test` on the trained model at the end of training.

    ``task`` must be the run's ``VideoTask`` (its ``data`` is the
    ``TaskData`` the run made); ``results`` holds the figures afterwards.
    """

    def __init__(self, task, strategy):
        super().__init__()
        self.task = task
        self.strategy = strategy
        self.results = None

    def on_train_end(self, logs=None):
        del logs
        self.results = run_test(self.task, self.model, self.task.data, self.strategy)


def add_to_results(results, test, strategy):
    """``results`` with ``test`` under ``"test"``, written to its results.json by the chief."""
    results = {**results, "test": test}
    if strategy_lib.is_chief(strategy):
        outputs.write_json_atomically(results["outputs"]["results"], results)
    return results


def describe(test):
    """One line for the end of the command-line job."""
    return (
        f"{test['views_per_video']}-view test on {test['videos']} videos: "
        f"top-1 {100 * test['top1_accuracy']:.1f}%, top-5 {100 * test['top5_accuracy']:.1f}% "
        f"(softmax averaged over the views)."
    )
