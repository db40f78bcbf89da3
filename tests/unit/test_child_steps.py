"""The model process tells the parent each step without waiting for the answer (worker/child.py):
the model never idles for a pipe round trip between two steps; a stop lands one step later."""

from __future__ import annotations

import multiprocessing
import threading

from difflane.worker.child import _Asker
from difflane.worker.model_messages import GoOn, Step


def test_a_step_is_sent_and_the_model_goes_on_before_the_parent_answers() -> None:
    parent, child = multiprocessing.Pipe(duplex=True)
    asker = _Asker(child)
    answered: list[bool] = []
    step_one = threading.Thread(target=lambda: answered.append(asker(1, 4)), daemon=True)
    step_one.start()
    step_one.join(5)  # the old callback blocked here until the parent answered
    assert answered == [True]
    assert parent.recv() == Step(1, 4)


def test_the_answer_to_a_step_is_read_at_the_next_one() -> None:
    parent, child = multiprocessing.Pipe(duplex=True)
    asker = _Asker(child)
    assert asker(1, 4) is True
    parent.recv()
    parent.send(GoOn(True))
    assert asker(2, 4) is True  # read step 1's yes, sent step 2
    assert parent.recv() == Step(2, 4)
    parent.send(GoOn(False))
    assert asker(3, 4) is False  # step 2's no: stop, and step 3 is not announced
    assert not parent.poll(0.05)
    asker.settle()  # nothing left unanswered: reads nothing
    assert not child.poll(0)


def test_settle_reads_the_last_steps_answer_before_the_render_is_reported() -> None:
    parent, child = multiprocessing.Pipe(duplex=True)
    asker = _Asker(child)
    asker(4, 4)
    parent.recv()
    parent.send(GoOn(True))
    asker.settle()  # else the answer would be read as the parent's next request
    assert not child.poll(0)
