"""Choosing the tf.distribute strategy and the worker's role in it.

The strategy is created once per process (``make_strategy``); everything
else asks it how many replicas there are and whether this process is the
chief (``is_chief``).  Multi-worker training reads the cluster from
``TF_CONFIG``; ``--cpu_replicas=N`` splits the CPU into N logical devices
and mirrors over them, to try distribution on a machine without GPUs.
Non-chief workers still have to take part in every save (the
collective ops of MultiWorkerMirroredStrategy need all workers), so they
write into throw-away directories from ``worker_write_dir``.
"""

import json
import os

import tensorflow as tf
from absl import logging

from gn_keras._checks import FlagError
from gn_keras.train import cluster


def _tf_config():
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}") from None


def _cluster_size(tf_config):
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


def resolve_strategy_name(name, cpu_replicas=0):
    """Turn ``auto`` into a concrete strategy name for this machine/cluster."""
    if name != "auto":
        return name
    if _cluster_size(_tf_config()) > 1:
        return "multi_worker"
    if cpu_replicas > 1 or len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "one_device"


def _check_multi_worker_env():
    tf_config = _tf_config()
    if not tf_config.get("cluster") or "task" not in tf_config:
        raise ValueError(
            "--strategy=multi_worker needs TF_CONFIG with 'cluster' and 'task', e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}; got '
            f"TF_CONFIG={os.environ.get('TF_CONFIG', '')!r}."
        )


def _tpu_strategy(tpu_address):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def cpu_devices(count):
    """Split the CPU into ``count`` logical devices; return their names.

    TensorFlow fixes its devices when it first uses them, so this must run
    before anything touches a device (``make_strategy`` does it first);
    later, only the count already set is accepted.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:  # devices already in use: fine if they are what was asked
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise FlagError(
                f"--cpu_replicas={count}: TensorFlow's devices were set up before the "
                "strategy; run in a fresh process."
            ) from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _mirrored(cpu_replicas):
    if cpu_replicas > 0:
        return tf.distribute.MirroredStrategy(cpu_devices(cpu_replicas))
    if not tf.config.list_logical_devices("GPU"):
        logging.warning(
            "--strategy=mirrored found no GPU: it runs one replica on the CPU. To try "
            "distribution on this machine, add --cpu_replicas=N (N logical CPU replicas)."
        )
    return tf.distribute.MirroredStrategy()


def strategy_for(config):
    """The strategy a run's config asks for (any task's ``RunConfig``)."""
    return make_strategy(
        config.strategy, config.tpu, config.worker_wait_timeout, config.cpu_replicas
    )


def make_strategy(name, tpu_address="", worker_wait_timeout=0, cpu_replicas=0):
    """Create the strategy named by ``--strategy`` (call once per process).

    A multi-worker strategy waits for every worker of ``TF_CONFIG`` to start,
    at most ``worker_wait_timeout`` seconds (0: no limit; ``train.cluster``).
    ``cpu_replicas`` > 0 (``--strategy=mirrored`` or ``auto``) mirrors over
    that many logical CPU devices.
    """
    if cpu_replicas and name not in ("auto", "mirrored"):
        raise FlagError(
            f"--cpu_replicas={cpu_replicas} needs --strategy=mirrored (or auto), "
            f"not --strategy={name}."
        )
    if cpu_replicas:
        cpu_devices(cpu_replicas)  # before any device is touched
    name = resolve_strategy_name(name, cpu_replicas)
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return _mirrored(cpu_replicas)
    if name == "multi_worker":
        _check_multi_worker_env()
        return cluster.join(worker_wait_timeout)
    if name == "tpu":
        return _tpu_strategy(tpu_address)
    raise ValueError(
        f"--strategy={name!r} is invalid: expected auto, one_device, mirrored, multi_worker or tpu."
    )


def strategy_name(strategy):
    """The ``--strategy`` name of the strategy object a run actually uses."""
    kinds = (
        (tf.distribute.MultiWorkerMirroredStrategy, "multi_worker"),
        (tf.distribute.MirroredStrategy, "mirrored"),
        (tf.distribute.TPUStrategy, "tpu"),
        (tf.distribute.OneDeviceStrategy, "one_device"),
    )
    for kind, name in kinds:
        if isinstance(strategy, kind):
            return name
    return type(strategy).__name__


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """True for the process that writes logs, results and models."""
    task_type, task_id = _task(strategy)
    if task_type is None:
        return True
    has_chief_job = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    if has_chief_job:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def worker_write_dir(strategy, directory):
    """``directory`` on the chief; a private temporary twin on other workers."""
    if is_chief(strategy):
        return directory
    task_type, task_id = _task(strategy)
    return os.path.join(
        os.path.dirname(os.path.abspath(directory)),
        f".{os.path.basename(directory)}-{task_type}{task_id}-tmp",
    )


def num_workers(strategy):
    """Hosts taking part (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, [])) for job in ("chief", "worker")))


def wait_for_all_workers(strategy):
    """Barrier: an all-reduce no worker can finish before every worker joins.

    Run at the end of a multi-worker job so that no worker exits (and stops
    its coordination-service heartbeats) while the chief still exports.
    """
    if num_workers(strategy) > 1:
        strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None
        )
