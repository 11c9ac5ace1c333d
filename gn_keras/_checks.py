"""Argument and flag checks shared by the whole package, scripts included.

Every check raises ``ValueError`` with a message that names the caller (a
layer name, ``group_norm``, ``models.build(...)``), the argument and the
offending value, so a bad configuration is caught at construction or build
time instead of surfacing as an opaque reshape error deep inside a graph.

The generic checks (:func:`check_int`, :func:`check_number`,
:func:`check_choice`, :func:`check_bool`) take the name to report in one of
two spellings, and word the message after it:

* an argument, in backquotes: ``check_int(0, "`groups`", minimum=1,
  where="GroupNormalization(name='gn')")`` raises ``ValueError(
  "GroupNormalization(name='gn'): argument `groups` must be a positive
  integer, got groups=0.")``;
* a command-line flag: ``check_int(0, "--epochs", minimum=1)`` raises
  :class:`FlagError` ``("--epochs=0 is invalid: expected a positive
  integer.")``.

:class:`FlagError` marks a bad flag or flag combination: the scripts
report it as a usage error (exit status 2, see ``gn_keras.train.cli``),
and every other error as a failure of the run (exit status 1).
"""

import math
import numbers


class FlagError(ValueError):
    """A bad command-line flag value or combination of flags (a usage error)."""


def is_integer(value):
    """An integral number that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def parse_numbers(flag, values, number_type, expected):
    """A list flag's values as a tuple of ``number_type``; else a FlagError naming it.

    Every list flag of numbers goes through here (the learning-rate
    boundaries, detection's sizes and ratios, video's short sides, the
    studies' settings).  ``expected`` words the message.
    """
    try:
        return tuple(number_type(v) for v in values)
    except (TypeError, ValueError):
        raise invalid(flag, ",".join(map(str, values)), expected) from None


def invalid(name, value, expected, where=None):
    """The error for ``name=value``, which should have been ``expected``.

    ``name`` is a flag (``"--epochs"``: a :class:`FlagError` reading
    ``--epochs=0 is invalid: expected ...``) or an argument in backquotes
    (``"`groups`"``: a ``ValueError`` reading ``{where}: argument `groups`
    must be ..., got groups=0.``).  Returned, for ``raise ... from None``.
    """
    if name.startswith("--"):
        return FlagError(f"{name}={value!r} is invalid: expected {expected}.")
    prefix = f"{where}: " if where else ""
    return ValueError(
        f"{prefix}argument {name} must be {expected}, got {name.strip('`')}={value!r}."
    )


def _integer_range(minimum, maximum):
    if minimum is not None and maximum is not None:
        return f"an integer in {minimum}..{maximum}"
    if minimum == 0:
        return "a non-negative integer"
    if minimum == 1:
        return "a positive integer"
    return "an integer" if minimum is None else f"an integer >= {minimum}"


def check_int(
    value, name, *, minimum=None, maximum=None, optional=False, where=None, expected=None
):
    """``value`` if it is an integer in ``minimum..maximum`` (or None when ``optional``).

    ``expected`` replaces the generated wording of the message (e.g. to say
    what the values mean).
    """
    if optional and value is None:
        return value
    in_range = is_integer(value) and (minimum is None or value >= minimum)
    if not in_range or (maximum is not None and value > maximum):
        if expected is None:
            expected = _integer_range(minimum, maximum) + (" or unset" if optional else "")
        raise invalid(name, value, expected, where)
    return value


def check_number(value, name, *, low=None, high=None, low_open=False, high_open=False, where=None):
    """``value`` if it is a finite number in the interval from ``low`` to ``high``.

    Bounds are closed unless ``low_open``/``high_open``; ``None`` is unbounded.
    """
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low == 0 and low_open and high is None:
            expected = "a positive number"
        else:
            lower = "(" if low_open else "["
            upper = ")" if high_open else "]"
            shown_low = -math.inf if low is None else low
            shown_high = math.inf if high is None else high
            expected = f"a number in {lower}{shown_low}, {shown_high}{upper}"
        raise invalid(name, value, expected, where)
    return value


def check_choice(value, name, choices, where=None):
    """``value`` if it is one of ``choices`` (listed in the message in their order)."""
    if value not in choices:
        raise invalid(name, value, f"one of {', '.join(map(str, choices))}", where)
    return value


def check_bool(value, name, where=None):
    """``value`` if it is ``True`` or ``False`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise invalid(name, value, "True or False", where)
    return value


class _DefaultGroups(int):
    """The default ``groups=32``, distinguishable from an explicit 32.

    ``group_size`` may replace ``groups``; when the user gave both we must
    check that they agree, which needs to know whether ``groups`` was set.
    """

    def __repr__(self):
        return "32"


DEFAULT_GROUPS = _DefaultGroups(32)


def groups_is_default(groups):
    return groups is None or groups is DEFAULT_GROUPS


def check_groups_arguments(groups, group_size, where):
    """Validate ``groups``/``group_size`` before the channel count is known."""
    if groups is not None and not is_integer(groups):
        raise ValueError(
            f"{where}: argument `groups` must be an integer (a positive number "
            f"of groups, or -1 for one group per channel), got {groups!r} "
            f"of type {type(groups).__name__}."
        )
    if groups is not None and groups <= 0 and groups != -1:
        raise ValueError(
            f"{where}: argument `groups` must be positive or -1 (one group per "
            f"channel, i.e. Instance Norm), got groups={groups}."
        )
    check_int(
        group_size,
        "`group_size`",
        minimum=1,
        optional=True,
        where=where,
        expected="a positive integer (channels per group)",
    )
    if groups is None and group_size is None:
        raise ValueError(
            f"{where}: one of `groups` or `group_size` must be given, got "
            "groups=None and group_size=None."
        )


def check_epsilon(epsilon, where):
    """A positive, finite ``epsilon`` (added to every variance)."""
    check_number(epsilon, "`epsilon`", low=0, low_open=True, where=where)


def normalize_axis(axis, shape, where):
    """Return the non-negative channel axis for an input of ``shape``."""
    rank = len(shape)
    if rank < 2:
        raise ValueError(
            f"{where}: input must have rank >= 2 (batch and channels), got "
            f"shape {tuple(shape)} of rank {rank}."
        )
    if not is_integer(axis):
        raise ValueError(f"{where}: argument `axis` must be an integer, got axis={axis!r}.")
    if not -rank <= axis < rank:
        raise ValueError(
            f"{where}: axis={axis} is out of range for an input of rank {rank} "
            f"(shape {tuple(shape)}); valid values are {-rank}..{rank - 1}."
        )
    positive = axis % rank
    if positive == 0:
        raise ValueError(
            f"{where}: axis={axis} is the batch axis of shape {tuple(shape)}; "
            "the channel axis must be a non-batch axis."
        )
    return positive


def channel_count(shape, axis, where, given_axis=None):
    """The channel count at ``axis``; ``given_axis`` is the user's spelling."""
    channels = shape[axis]
    if channels is None:
        shown = axis if given_axis is None else given_axis
        raise ValueError(
            f"{where}: the channel dimension (axis={shown}) of input shape "
            f"{tuple(shape)} is undefined; it must be known to build gamma/beta "
            "and the groups."
        )
    return int(channels)


def resolve_groups(channels, groups, group_size, where):
    """Number of groups for ``channels``, from ``groups`` or ``group_size``.

    ``group_size`` is the paper's "channels per group" (Table 3, bottom);
    when given it decides, and an explicitly given ``groups`` must agree.
    ``groups=-1`` means one channel per group (Instance Norm, §3.1).
    """
    check_groups_arguments(groups, group_size, where)
    if group_size is not None:
        if group_size > channels or channels % group_size:
            raise ValueError(
                f"{where}: group_size={group_size} does not divide the {channels} channels."
            )
        from_size = channels // group_size
        if not groups_is_default(groups):
            explicit = channels if groups == -1 else groups
            if explicit != from_size:
                raise ValueError(
                    f"{where}: groups={groups} and group_size={group_size} "
                    f"disagree for {channels} channels ({channels} / "
                    f"{group_size} = {from_size} groups); give only one."
                )
        return from_size
    if groups == -1:
        return channels
    if groups > channels:
        raise ValueError(
            f"{where}: {groups} groups exceed the {channels} channels; "
            "groups must be at most the channel count."
        )
    if channels % groups:
        raise ValueError(f"{where}: {groups} groups do not divide {channels} channels.")
    return int(groups)
