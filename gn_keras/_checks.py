"""Argument validation shared by the functional form and the layer.

Every check raises ``ValueError`` with a message that names the caller (a
layer name or ``group_norm``), the argument and the offending value, so a bad
configuration is caught at construction or build time instead of surfacing
as an opaque reshape error deep inside a graph.
"""

import numbers


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


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_groups_arguments(groups, group_size, where):
    """Validate ``groups``/``group_size`` before the channel count is known."""
    if groups is not None and not _is_integer(groups):
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
    if group_size is not None:
        if not _is_integer(group_size) or group_size <= 0:
            raise ValueError(
                f"{where}: argument `group_size` (channels per group) must be a "
                f"positive integer, got group_size={group_size!r}."
            )
    if groups is None and group_size is None:
        raise ValueError(
            f"{where}: one of `groups` or `group_size` must be given, got "
            "groups=None and group_size=None."
        )


def check_epsilon(epsilon, where):
    if not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool) or not epsilon > 0:
        raise ValueError(
            f"{where}: argument `epsilon` must be a positive number, got epsilon={epsilon!r}."
        )


def normalize_axis(axis, shape, where):
    """Return the non-negative channel axis for an input of ``shape``."""
    rank = len(shape)
    if rank < 2:
        raise ValueError(
            f"{where}: input must have rank >= 2 (batch and channels), got "
            f"shape {tuple(shape)} of rank {rank}."
        )
    if not _is_integer(axis):
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
