"""Layer speed: gn_keras GroupNormalization against Keras GN, Keras BN and torch.

One command prints, for each ResNet-50 stage shape (NHWC, G=32), the median
time of the forward pass and of forward+backward (dx, dγ, dβ) for

* ``ours``: ``gn_keras.GroupNormalization``, on the compiled kernels of
  ``gn_keras.kernels`` (the script requires them);
* ``ours_tf_ops``: the same layer traced with ``GN_KERAS_KERNELS=off``: the
  TensorFlow-ops fallback (XLA-compiled in the forward+backward graph), and
  what a user's own inference ``tf.function`` runs;
* ``ours_relu``: ``GroupNormalization(activation="relu")``, the ReLU fused
  into the kernels, against ``ours_then_relu``: the layer followed by a
  ``keras.layers.ReLU`` (the unfused pair of every conv–GN–ReLU unit);
* ``ours_silu``: ``GroupNormalization(activation="silu")``, the SiLU fused
  into the kernels, against ``ours_then_silu`` (the layer, then
  ``Activation("silu")``) and ``keras_gn_then_silu`` (Keras's GN, then
  ``Activation("silu")``: the pair of every diffusion VAE and UNet block);
* ``keras_gn``: ``keras.layers.GroupNormalization`` (same epsilon);
* ``keras_bn``: ``keras.layers.BatchNormalization`` in training mode;
* ``torch_gn``: ``torch.nn.functional.group_norm`` on the same bytes
  (a channels_last tensor), only if torch imports;
* ``copy``: ``tf.negative``, which reads and writes the tensor once: the
  memory floor of any normalization;

plus the ratios the performance issue sets targets for, and writes them with
the date and machine to a JSON file::

    python bench/layer_speed.py                    # float32, ~5 minutes
    python bench/layer_speed.py --dtype=bfloat16   # mixed_bfloat16 layers
    python bench/layer_speed.py --quick            # smoke run, seconds

Forward+backward runs as a ``tf.function`` traced under a tape, without
whole-graph XLA, as Keras trains on CPU.  The forward of the GN layers runs
through ``Model.predict_on_batch``, as Keras infers (the BN forward, in
training mode, and the copy are plain ``tf.function`` calls; both call
paths cost about 0.25 ms over the work).  Repeats are interleaved and the contenders' order
rotates every round, so load from other processes spreads over all of them;
``OMP_WAIT_POLICY=PASSIVE`` keeps torch's idle threads from spinning on the
cores TensorFlow needs.  Each call is timed twice: wall clock (what a user
waits) and this process's CPU time over all threads (what it costs, which
other processes' load on a shared machine barely moves).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The compiled kernels must build: "ours" would silently measure the fallback.
os.environ.setdefault("GN_KERAS_KERNELS", "require")

import contextlib  # noqa: E402
import datetime  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from machine import machine_info  # noqa: E402  (bench/ is the script's directory)

from gn_keras import GroupNormalization  # noqa: E402
from gn_keras.train import outputs  # noqa: E402

SHAPES = ((8, 56, 56, 256), (8, 28, 28, 512), (8, 14, 14, 1024), (2, 56, 56, 256))
GROUPS = 32
EPSILON = 1e-5
# Ratio columns: (numerator, denominator, target) per mode; see the issue.
RATIOS = {
    "forward": (
        ("ours", "keras_gn", None),
        ("ours", "keras_bn", None),
        ("ours", "torch_gn", None),
        ("ours", "copy", 3.0),
        ("ours_relu", "ours_then_relu", 1.0),
        ("ours_silu", "ours_then_silu", 1.0),
        ("ours_silu", "keras_gn_then_silu", None),
    ),
    "forward_backward": (
        ("ours", "keras_gn", 0.5),
        ("ours", "keras_bn", 1.0),
        ("ours", "torch_gn", 1.0),
        ("ours_tf_ops", "keras_gn", None),
        ("ours_relu", "ours_then_relu", 1.0),
        ("ours_silu", "ours_then_silu", 1.0),
        ("ours_silu", "keras_gn_then_silu", None),
    ),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Input dtype; bfloat16 runs the Keras layers under mixed_bfloat16.",
)
flags.DEFINE_integer("repeats", 30, "Timed calls per contender, shape and mode.", lower_bound=3)
flags.DEFINE_bool("quick", False, "Smoke run: 5 repeats and only the 2x56x56x256 shape.")
flags.DEFINE_string(
    "output", None, "JSON path; default bench/results/layer_speed_<dtype>[_quick].json."
)


def _keras_contender(layer, x, dy, training=None, kernels="require"):
    """Forward and forward+backward tf.functions of a Keras layer on x.

    ``kernels`` is the ``GN_KERAS_KERNELS`` setting the graphs are traced with.
    """
    kwargs = {} if training is None else {"training": training}
    layer(x, **kwargs)  # build, so the weights exist before tracing

    if training is None:
        # Inference as Keras runs it (predict), which may use the compiled
        # kernels; a user's own inference tf.function runs TF ops instead
        # (gn_keras/portable.py), which `ours_tf_ops` measures.
        model = keras.Sequential([keras.Input(x.shape[1:], dtype=x.dtype), layer])
        forward = model.predict_on_batch
    else:  # BatchNormalization in training mode has no predict form
        forward = tf.function(lambda x: layer(x, **kwargs))

    @tf.function
    def forward_backward(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, **kwargs)
        return tape.gradient(y, [x] + layer.trainable_variables, output_gradients=dy)

    with _kernels_setting(kernels):  # later calls reuse these traces
        forward(x)
        forward_backward.get_concrete_function(x, dy)
    return lambda: _wait(forward(x)), lambda: _wait(forward_backward(x, dy))


@contextlib.contextmanager
def _kernels_setting(value):
    previous = os.environ.get("GN_KERAS_KERNELS")
    os.environ["GN_KERAS_KERNELS"] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ["GN_KERAS_KERNELS"]
        else:
            os.environ["GN_KERAS_KERNELS"] = previous


def _copy_contender(x):
    negate = tf.function(tf.negative)
    call = lambda: _wait(negate(x))  # noqa: E731
    return call, call


def _wait(results):
    # TF's CPU runtime returns finished tensors; .numpy() is a zero-copy view
    # that makes the dependence on the result explicit (predict's results
    # are NumPy arrays already).
    for t in tf.nest.flatten(results):
        if tf.is_tensor(t):
            t.numpy()


def _torch_contender(x_nhwc, dy_nhwc, dtype):
    """torch's group_norm kernel on a channels_last tensor, or None."""
    try:
        import torch
    except ImportError:
        return None
    torch_dtype = getattr(torch, dtype)

    def channels_last(array):
        nchw = torch.from_numpy(array).permute(0, 3, 1, 2).to(torch_dtype)
        return nchw.contiguous(memory_format=torch.channels_last)

    x, dy = channels_last(x_nhwc), channels_last(dy_nhwc)
    x_grad = x.detach().clone().requires_grad_(True)
    weight = torch.ones(x.shape[1], dtype=torch_dtype, requires_grad=True)
    bias = torch.zeros(x.shape[1], dtype=torch_dtype, requires_grad=True)

    def forward():
        with torch.no_grad():
            torch.nn.functional.group_norm(x, GROUPS, weight, bias, EPSILON)

    def forward_backward():
        y = torch.nn.functional.group_norm(x_grad, GROUPS, weight, bias, EPSILON)
        torch.autograd.grad(y, [x_grad, weight, bias], dy)

    return forward, forward_backward


def _contenders(shape, dtype, rng):
    """name -> (forward, forward_backward) zero-argument callables."""
    x_np = rng.normal(size=shape).astype("float32")
    dy_np = rng.normal(size=shape).astype("float32")
    x, dy = tf.constant(x_np, dtype), tf.constant(dy_np, dtype)
    policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
    contenders = {
        "ours": _keras_contender(GroupNormalization(GROUPS, epsilon=EPSILON, dtype=policy), x, dy),
        "ours_tf_ops": _keras_contender(
            GroupNormalization(GROUPS, epsilon=EPSILON, dtype=policy), x, dy, kernels="off"
        ),
        "ours_relu": _keras_contender(
            GroupNormalization(GROUPS, epsilon=EPSILON, activation="relu", dtype=policy), x, dy
        ),
        "ours_then_relu": _keras_contender(
            keras.Sequential(
                [
                    GroupNormalization(GROUPS, epsilon=EPSILON, dtype=policy),
                    keras.layers.ReLU(dtype=policy),
                ]
            ),
            x,
            dy,
        ),
        "ours_silu": _keras_contender(
            GroupNormalization(GROUPS, epsilon=EPSILON, activation="silu", dtype=policy), x, dy
        ),
        "ours_then_silu": _keras_contender(
            _then_silu(GroupNormalization(GROUPS, epsilon=EPSILON, dtype=policy), policy), x, dy
        ),
        "keras_gn_then_silu": _keras_contender(
            _then_silu(
                keras.layers.GroupNormalization(GROUPS, epsilon=EPSILON, dtype=policy), policy
            ),
            x,
            dy,
        ),
        "keras_gn": _keras_contender(
            keras.layers.GroupNormalization(GROUPS, epsilon=EPSILON, dtype=policy), x, dy
        ),
        "keras_bn": _keras_contender(
            keras.layers.BatchNormalization(epsilon=EPSILON, dtype=policy), x, dy, training=True
        ),
        "copy": _copy_contender(x),
    }
    torch_pair = _torch_contender(x_np, dy_np, dtype)
    if torch_pair is not None:
        contenders["torch_gn"] = torch_pair
    return contenders


def _then_silu(norm, policy):
    """``norm`` followed by a separate ``Activation("silu")`` layer."""
    return keras.Sequential([norm, keras.layers.Activation("silu", dtype=policy)])


def _interleaved_medians(calls, repeats):
    """Wall and CPU milliseconds per call, the order rotating every round."""
    names = list(calls)
    for name in names:  # trace, compile and warm the allocator
        calls[name]()
        calls[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            calls[name]()
            cpu[name].append(1e3 * (time.process_time() - cpu_start))
            wall[name].append(1e3 * (time.perf_counter() - wall_start))
    return {
        name: {**_summary(wall[name]), "cpu_median_ms": statistics.median(cpu[name])}
        for name in names
    }


def _summary(values):
    quartiles = statistics.quantiles(values, n=4)
    return {
        "median_ms": statistics.median(values),
        "q1_ms": quartiles[0],
        "q3_ms": quartiles[2],
        "min_ms": min(values),
        "repeats": len(values),
    }


def _ratios(mode, medians, key):
    ratios = {}
    for numerator, denominator, target in RATIOS[mode]:
        if numerator in medians and denominator in medians:
            value = medians[numerator][key] / medians[denominator][key]
            ratios[f"{numerator}/{denominator}"] = {"ratio": value, "target": target}
    return ratios


def measure(shapes, dtype, repeats, seed=0):
    """Run every contender on every shape; return the per-shape results."""
    rng = np.random.default_rng(seed)
    results = []
    for shape in shapes:
        contenders = _contenders(shape, dtype, rng)
        row = {"shape": list(shape)}
        for index, mode in enumerate(("forward", "forward_backward")):
            calls = {name: pair[index] for name, pair in contenders.items()}
            medians = _interleaved_medians(calls, repeats)
            row[mode] = {
                "times": medians,
                "ratios": _ratios(mode, medians, "median_ms"),
                "cpu_ratios": _ratios(mode, medians, "cpu_median_ms"),
            }
        results.append(row)
        print(f"measured {'x'.join(map(str, shape))}", flush=True)
    return results


def format_table(results, mode, clock="wall"):
    """A Markdown table: one row per shape, medians in ms then the ratios."""
    time_key, ratio_key = {"wall": ("median_ms", "ratios"), "cpu": ("cpu_median_ms", "cpu_ratios")}[
        clock
    ]
    names = [
        n
        for n in ("ours", "ours_tf_ops", "keras_gn", "keras_bn", "torch_gn", "copy")
        if n in results[0][mode]["times"]
    ]
    ratio_names = list(results[0][mode][ratio_key])
    header = ["shape"] + [f"{n} ms" for n in names] + ratio_names
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        times = [f"{row[mode]['times'][n][time_key]:.2f}" for n in names]
        ratios = [_ratio_cell(row[mode][ratio_key][r]) for r in ratio_names]
        lines.append("| " + " | ".join(["x".join(map(str, row["shape"]))] + times + ratios) + " |")
    targets = ", ".join(
        f"{r} <= {t}"
        for r, t in ((r, results[0][mode][ratio_key][r]["target"]) for r in ratio_names)
        if t
    )
    return "\n".join(lines) + (f"\n\ntargets: {targets}" if targets else "")


def _ratio_cell(entry):
    ok = (
        "" if entry["target"] is None else (" ok" if entry["ratio"] <= entry["target"] else " MISS")
    )
    return f"{entry['ratio']:.2f}{ok}"


def main(argv):
    del argv
    shapes = SHAPES[-1:] if FLAGS.quick else SHAPES
    repeats = 5 if FLAGS.quick else FLAGS.repeats
    started = datetime.datetime.now(datetime.UTC)
    machine = machine_info()
    results = measure(shapes, FLAGS.dtype, repeats)
    report = {
        "benchmark": "layer_speed",
        "date_utc": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
        "dtype": FLAGS.dtype,
        "groups": GROUPS,
        "epsilon": EPSILON,
        "repeats": repeats,
        "machine": machine,
        "results": results,
    }
    for mode in ("forward", "forward_backward"):
        for clock in ("wall", "cpu"):
            print(
                f"\n{mode}, {clock} clock ({FLAGS.dtype}, median of {repeats}, ms)\n\n"
                f"{format_table(results, mode, clock)}"
            )
    output = FLAGS.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"layer_speed_{FLAGS.dtype}{'_quick' if FLAGS.quick else ''}.json",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    outputs.write_json_atomically(output, report)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    app.run(main)
