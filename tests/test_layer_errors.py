"""Every bad argument raises a ValueError that names the argument and value."""

import keras
import numpy as np
import pytest

from gn_keras import GroupNormalization, group_norm


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"groups": 0}, "groups=0"),
        ({"groups": -2}, "groups=-2"),
        ({"groups": 1.5}, "1.5"),
        ({"groups": "32"}, "'32'"),
        ({"groups": True}, "True"),
        ({"groups": None, "group_size": None}, "groups=None and group_size=None"),
        ({"group_size": 0}, "group_size=0"),
        ({"group_size": 2.5}, "group_size=2.5"),
        ({"epsilon": 0.0}, "epsilon=0.0"),
        ({"epsilon": -1e-5}, "epsilon=-1e-05"),
        ({"axis": "channels"}, "axis='channels'"),
    ],
)
def test_construction_errors(kwargs, message):
    with pytest.raises(ValueError, match="GroupNormalization") as error:
        GroupNormalization(name="gn_bad", **kwargs)
    assert message in str(error.value)
    assert "gn_bad" in str(error.value)


@pytest.mark.parametrize(
    "kwargs,shape,message",
    [
        ({"groups": 32}, (None, 4, 4, 48), "32 groups do not divide 48 channels"),
        ({"groups": 64}, (None, 4, 4, 48), "64 groups exceed the 48 channels"),
        ({"group_size": 5}, (None, 4, 4, 48), "group_size=5 does not divide the 48 channels"),
        (
            {"groups": 8, "group_size": 16},
            (None, 4, 4, 64),
            "groups=8 and group_size=16 disagree for 64 channels",
        ),
        ({"groups": 4}, (None, 4, 4, None), "channel dimension (axis=-1)"),
        ({"groups": 4, "axis": 4}, (None, 4, 4, 8), "axis=4 is out of range"),
        ({"groups": 4, "axis": -5}, (None, 4, 4, 8), "axis=-5 is out of range"),
        ({"groups": 4, "axis": 0}, (None, 4, 4, 8), "axis=0 is the batch axis"),
        ({"groups": 1}, (None,), "rank >= 2"),
    ],
)
def test_build_errors(kwargs, shape, message):
    layer = GroupNormalization(name="gn_bad", **kwargs)
    with pytest.raises(ValueError) as error:
        layer.build(shape)
    assert message in str(error.value)
    assert "gn_bad" in str(error.value)


def test_agreeing_groups_and_group_size_are_accepted(rng):
    layer = GroupNormalization(groups=4, group_size=16)
    layer(rng.normal(size=(1, 2, 2, 64)))
    assert layer.resolved_groups == 4


def test_error_surfaces_when_called_in_a_model():
    with pytest.raises(ValueError, match="32 groups do not divide 48 channels"):
        GroupNormalization()(keras.Input((4, 4, 48)))


def test_functional_form_checks_too(rng):
    x = rng.normal(size=(2, 3, 12))
    with pytest.raises(ValueError, match=r"group_norm: 5 groups do not divide 12 channels"):
        group_norm(x, groups=5)
    with pytest.raises(ValueError, match=r"group_norm: argument `epsilon`.*epsilon=0"):
        group_norm(x, groups=3, epsilon=0)
    with pytest.raises(ValueError, match="rank >= 2"):
        group_norm(np.ones(3), groups=1)
