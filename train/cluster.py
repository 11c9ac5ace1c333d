"""The workers of a multi-worker job: waiting for them to start, and naming one that is lost.

``join`` creates the ``MultiWorkerMirroredStrategy`` of ``TF_CONFIG`` (a
port already in use is ``WorkerStartError``).  Its
constructor blocks inside TensorFlow's C++ runtime, holding the Python
lock, until every worker of the cluster has registered with the
coordination service; a lone worker used to wait there for an hour or more
without a word.  So the waiting is told by a tiny helper process (a Python
thread could not run) that prints "waiting for N workers at ..." every
``REPORT_EVERY_SECONDS``, and the limit, ``--worker_wait_timeout``, is the
coordination service's own registration deadline: when it passes, the
constructor fails and ``join`` raises ``WorkerWaitTimeout`` naming the
workers that never came.

``lost_workers_reported`` wraps a whole run: a collective or coordination
error caused by a worker that died (a gRPC ``UNAVAILABLE``, a deadline, an
aborted collective) becomes one ``WorkerLostError`` naming the lost task
and its address and saying what to do, instead of TensorFlow's wall of
traceback.  A multi-worker job cannot go on with fewer workers: every
worker has to be started again, and the run resumes from its last
checkpoint.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading

import tensorflow as tf
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context

REPORT_EVERY_SECONDS = 30.0
_NO_LIMIT_MS = 2**31 - 1  # about 25 days: the registration deadline of "no limit"
_JOBS = ("chief", "worker")  # the jobs that train (and register) in a multi-worker job
_TASK_NAME = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
# Errors a collective or the coordination service raises when a peer is gone.
_PEER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


class WorkerWaitTimeout(ValueError):
    """Some workers of ``TF_CONFIG`` did not start within ``--worker_wait_timeout``."""


class WorkerStartError(ValueError):
    """This worker could not start its server at its ``TF_CONFIG`` address."""


class WorkerLostError(ValueError):
    """A worker of a running multi-worker job stopped (killed, crashed, unreachable)."""


def _training_tasks(cluster):
    """``{"/job:worker/replica:0/task:1": "host:port", ...}`` of the training jobs."""
    return {
        f"/job:{job}/replica:0/task:{index}": address
        for job in _JOBS
        for index, address in enumerate(cluster.get(job, []))
    }


def _leader(cluster):
    """The task that runs the coordination service (as TensorFlow picks it)."""
    return f"/job:{'chief' if cluster.get('chief') else 'worker'}/replica:0/task:0"


def _configure_coordination(cluster, wait_timeout):
    """Make registration a barrier with ``wait_timeout`` seconds' deadline.

    The strategy keeps a coordination service set up before it is created;
    only the deadline and the barrier differ from the one it would set up.
    """
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
        for job in _JOBS
        if cluster.get(job)
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=_leader(cluster),
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=wait_timeout * 1000 if wait_timeout else _NO_LIMIT_MS,
    )
    # Without the barrier, the leader waits in a later step whose deadline is fixed (1 h).
    context.context().coordination_service.cluster_register_with_barrier = True


# Run by the helper process: print the line every few seconds until the
# parent goes away or ends it.
_REPORTER = """
import os, sys, time
parent, every, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
started = time.monotonic()
next_report = every
while os.getppid() == parent:
    time.sleep(min(0.5, every))
    waited = time.monotonic() - started
    if waited >= next_report:
        print(line.format(waited=waited), flush=True)
        next_report += every
"""


def _start_reports(tasks, wait_timeout):
    every = REPORT_EVERY_SECONDS
    limit = "no limit: set --worker_wait_timeout"
    if wait_timeout:
        every = max(1.0, min(every, wait_timeout / 3))
        limit = f"giving up after {wait_timeout} s, --worker_wait_timeout"
    line = (
        f"Waiting for {len(tasks)} workers at {', '.join(tasks.values())} to start "
        f"({{waited:.0f}} s so far; {limit})."
    )
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _REPORTER, str(os.getpid()), str(every), line]
    )


@contextlib.contextmanager
def _native_log_held_back():
    """Hold back what the block writes to stderr (TensorFlow's C++ log included).

    Written out after the block if it succeeds.  Dropped if it fails: a
    failed registration logs the same deadline three times in ~30 lines,
    and the one-line error that follows says which workers are missing.
    """
    sys.stderr.flush()
    original = os.dup(2)
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(original, 2)
            held.seek(0)
            text = held.read()
            while text:  # to fd 2, where it would have gone (sys.stderr may be another)
                text = text[os.write(2, text) :]
    finally:
        os.close(original)


def join(wait_timeout=0):
    """The ``MultiWorkerMirroredStrategy`` of ``TF_CONFIG``, once all its workers started.

    ``wait_timeout``: seconds to wait for the others (0: no limit); past it,
    ``WorkerWaitTimeout``.
    """
    tf_config = json.loads(os.environ["TF_CONFIG"])
    cluster, own = tf_config["cluster"], tf_config["task"]
    own_name = f"/job:{own['type']}/replica:0/task:{own.get('index', 0)}"
    tasks = _training_tasks(cluster)
    _configure_coordination(cluster, wait_timeout)
    reporter = _start_reports(tasks, wait_timeout)
    try:
        with _native_log_held_back():
            return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.UnknownError as error:  # "Could not start gRPC server"
        raise WorkerStartError(
            f"{_describe([own_name], tasks)}, this process, could not start its server "
            f"({str(error).strip().splitlines()[0]}): is another process using that port?"
        ) from None
    except _PEER_FAILURES as error:
        # The leader names the late ones after this; another worker, the leader itself.
        late = str(error).partition("timed out task names:")[2] or str(error)
        missing = _named_tasks(late, tasks, exclude=own_name) or [_leader(cluster)]
        within, advice = f"({_cause(error)})", ""
        if wait_timeout:
            within = f"within --worker_wait_timeout={wait_timeout} s"
            advice = ", or raise the timeout"
        raise WorkerWaitTimeout(
            f"{_describe(missing, tasks)} did not start {within}; start the same command "
            f"on every worker that TF_CONFIG lists{advice}."
        ) from None
    finally:
        reporter.kill()
        reporter.wait()


def _named_tasks(text, tasks, exclude=None):
    """The tasks of ``tasks`` that ``text`` names, in order, except ``exclude``."""
    named = []
    for match in _TASK_NAME.finditer(text):
        task = f"/job:{match.group(1)}/replica:0/task:{match.group(2)}"
        if task in tasks and task != exclude and task not in named:
            named.append(task)
    return named


def _describe(names, tasks):
    shown = ", ".join(
        f"{name.replace('/replica:0', '')} ({tasks.get(name, 'not in TF_CONFIG')})"
        for name in names
    )
    return f"worker {shown}" if len(names) == 1 else f"workers {shown}"


# Phrases of TensorFlow's gRPC and coordination errors -> the reason shown.
_CAUSES = (
    ("stopped sending heartbeats", "it stopped sending heartbeats"),
    ("Connection refused", "connection refused"),
    ("Connection reset", "connection reset"),
    ("Socket closed", "socket closed"),
    ("Deadline Exceeded", "no answer before the deadline"),
)


def _cause(error):
    """The short reason of a peer failure ("connection reset")."""
    message = str(error)
    for phrase, reason in _CAUSES:
        if phrase in message:
            return reason
    return type(error).__name__


def _quiet_watcher_failures(previous, failures=_PEER_FAILURES):
    """A ``threading.excepthook`` that drops ``failures`` in TF's preemption watchers.

    ``PreemptionCheckpointHandler``'s watcher threads die with a traceback
    when the coordination service's worker goes away; the main thread then
    reports the lost worker in one line.
    """

    def hook(args):
        name = args.thread.name if args.thread is not None else ""
        watcher = name.startswith(("PeerTerminationWatcher", "WorkerTerminationSignalWatcher"))
        if not (watcher and issubclass(args.exc_type, failures)):
            previous(args)

    return hook


@contextlib.contextmanager
def lost_workers_reported(strategy, model_dir):
    """Turn a lost worker's error inside the block into a one-line ``WorkerLostError``.

    Only on a multi-worker strategy; other errors pass unchanged.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    tasks = _training_tasks(spec)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or len(tasks) < 2:
        yield
        return
    own = f"/job:{resolver.task_type}/replica:0/task:{resolver.task_id}"
    previous_hook = threading.excepthook
    threading.excepthook = _quiet_watcher_failures(previous_hook)
    lost_the_job = False
    try:
        yield
    except _PEER_FAILURES as error:
        # The watchers can fail later, with any error, while this process
        # reports the loss and exits (CI saw one print a traceback then).
        lost_the_job = True
        threading.excepthook = _quiet_watcher_failures(previous_hook, Exception)
        lost = _named_tasks(str(error), tasks, exclude=own)
        who = _describe(lost, tasks) if lost else "a worker"
        raise WorkerLostError(
            f"lost {who} of the {len(tasks)}-worker job ({_cause(error)}); the job cannot go "
            f"on without it: rerun all workers to resume from the last checkpoint in "
            f"--model_dir={model_dir}."
        ) from None
    finally:
        if not lost_the_job:
            threading.excepthook = previous_hook
