from mpytest import raises

import pilecore


def test_version_is_a_string():
    assert isinstance(pilecore.VERSION, str) and pilecore.VERSION.count(".") == 2


def test_raises_helper_catches_and_rejects():
    with raises(ValueError, match="bad"):
        raise ValueError("bad thing")
    try:
        with raises(ValueError):
            pass
    except AssertionError:
        return
    raise AssertionError("raises() let a silent block pass")
