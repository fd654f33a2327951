"""The host wire in one process: frames, the decode boundary, error envelopes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

import forksafe
from forksafe._host import wire
from forksafe._host.plain import is_plain
from forksafe._host.shm import Shared
from tests.support.fakes import CustomError, Gadget


def _reply(rid: int, message: object) -> bytes:
    return wire.encode(rid, message)


PLAIN = [
    None,
    True,
    3,
    2.5,
    1 + 2j,
    "text",
    b"bytes",
    [1, (2, "x"), {"k": [None]}],
    {1, 2},
    frozenset({"a"}),
    np.arange(6, dtype="float32").reshape(2, 3),
    np.float32(1.5),
    np.int64(-3),
    np.dtype("float64"),
    np.array(["a", "bc"]),
    np.zeros(2, dtype=[("a", "f4"), ("b", "i2")]),
    Shared("forksafe_1_2_ab", (3,), np.dtype("float32")),
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_data_round_trips(value: object) -> None:
    """Everything a host may answer with decodes to an equal value."""
    back = wire.decode(_reply(7, ("ok", value)), 7)
    assert back[0] == "ok"
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back[1], value)
        assert back[1].dtype == value.dtype
    else:
        assert back[1] == value and type(back[1]) is type(value)


def test_a_reply_that_would_run_code_is_refused(tmp_path: Path) -> None:
    """A pickle that calls a function when loaded: HostError naming it, and nothing ran."""
    marker = tmp_path / "ran"
    frame = _reply(1, ("ok", Gadget(str(marker))))
    with pytest.raises(forksafe.HostError, match=r"tests\.support\.fakes\.touch.*does not decode"):
        wire.decode(frame, 1)
    assert not marker.exists()
    # The same bytes through plain pickle would have run it: the test is not vacuous.
    pickle.loads(frame[8:])
    assert marker.exists()


@pytest.mark.parametrize(
    "value",
    [np.array([Path("x")], dtype=object), Path("x"), CustomError("e"), Gadget("unused")],
    ids=["object array", "Path", "exception", "instance"],
)
def test_other_objects_are_refused(value: object) -> None:
    """Object arrays, paths, exceptions and instances of any class are not plain data."""
    assert not is_plain(value)
    if not isinstance(value, Gadget):  # decoding a Gadget would run it under plain pickle
        with pytest.raises(forksafe.HostError, match="does not decode"):
            wire.decode(_reply(1, ("ok", value)), 1)


def test_an_answer_to_another_request_is_refused() -> None:
    """A reply whose id is not the request's is a HostError, never a result."""
    with pytest.raises(forksafe.HostError, match="answered request 4 when 5 was expected"):
        wire.decode(_reply(4, ("ok", 1)), 5)


def test_error_envelopes_rebuild_builtin_and_forksafe_errors_exactly() -> None:
    """ValueError, KeyError and ModelLoadError come back as themselves, with the host's note."""
    for exc in (ValueError("v", 2), KeyError("k"), forksafe.ModelLoadError("m")):
        back = wire.raise_envelope(wire.error_envelope(exc, "host traceback"), 42)
        assert type(back) is type(exc) and back.args == exc.args
        assert "model host process 42" in back.__notes__[0]
        assert "host traceback" in back.__notes__[0]


def test_error_envelopes_of_other_classes_use_their_builtin_base() -> None:
    """A model's own exception class is never imported here: its builtin base carries it."""
    back = wire.raise_envelope(wire.error_envelope(CustomError("nope", 1), ""), 1)
    assert type(back) is LookupError
    assert str(back) == "tests.support.fakes.CustomError: ('nope', 1)"


def test_an_envelope_naming_a_non_exception_is_harmless() -> None:
    """An envelope that names a builtin callable gets Exception, and calls nothing."""
    envelope = ("builtins", "exec", "Exception", ("print('ran')",), "x", "")
    back = wire.raise_envelope(envelope, 1)
    assert type(back) is Exception
    assert str(back) == "builtins.exec: x"
