"""A runtime failure crosses the model process's pipe as (code, message) and comes back whole."""

from __future__ import annotations

import gc
import pickle

import pytest

from difflane.errors import DifflaneError
from difflane.worker import runtime
from difflane.worker.model_messages import UNCLASSIFIED, Failed


def _every_failure_class() -> set[type[runtime.RuntimeFailure]]:
    found: set[type[runtime.RuntimeFailure]] = set()
    todo = list(runtime.RuntimeFailure.__subclasses__())
    while todo:
        kind = todo.pop()
        found.add(kind)
        todo.extend(kind.__subclasses__())
    return found


def test_the_registry_names_every_runtime_failure_once() -> None:
    assert set(runtime.FAILURES.values()) == _every_failure_class()
    assert all(code == kind.code for code, kind in runtime.FAILURES.items())
    assert UNCLASSIFIED not in runtime.FAILURES


@pytest.mark.parametrize("kind", sorted(runtime.FAILURES.values(), key=lambda k: k.code))
def test_a_failure_comes_back_as_its_own_class(kind: type[runtime.RuntimeFailure]) -> None:
    sent = pickle.loads(pickle.dumps(Failed.of(kind("it broke"))))  # what the pipe does
    back = sent.exception()
    assert type(back) is kind and back.message == "it broke" and isinstance(back, DifflaneError)


def test_an_empty_message_takes_the_default() -> None:
    assert Failed.of(runtime.Interrupted(), "stopped") == Failed("interrupted", "stopped")


def test_an_unclassified_error_comes_back_as_runtime_error() -> None:
    back = Failed(UNCLASSIFIED, "ValueError: bad shape").exception()
    assert type(back) is RuntimeError and str(back) == "ValueError: bad shape"


def test_two_kinds_cannot_share_a_code() -> None:
    with pytest.raises(TypeError, match="OutOfMemory") as refused:

        class AnotherOom(runtime.RuntimeFailure):  # the parent could not tell the two apart
            code = "oom"

    assert runtime.FAILURES["oom"] is runtime.OutOfMemory
    del refused  # the half-made class lives in the traceback; let it go before other tests look
    gc.collect()
