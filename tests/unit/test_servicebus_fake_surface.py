"""The Service Bus fake offers the SDK's surface the adapter uses, with the SDK's names.

A fake whose methods take other parameters than the SDK's would let the adapter call something
the real client does not have. Compared with the installed azure-servicebus, by signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from azure.servicebus import AutoLockRenewer, ServiceBusClient, ServiceBusReceiver, ServiceBusSender

from tests.fakes import servicebus as fake

PAIRS: list[tuple[type[Any], type[Any], str]] = [
    (ServiceBusReceiver, fake.FakeReceiver, name)
    for name in (
        "__enter__",
        "receive_messages",
        "complete_message",
        "abandon_message",
        "dead_letter_message",
        "renew_message_lock",
        "close",
    )
]
PAIRS += [(ServiceBusSender, fake.FakeSender, name) for name in ("send_messages", "schedule_messages", "close")]
PAIRS += [(ServiceBusClient, fake.FakeServiceBusClient, name) for name in ("get_queue_sender", "get_queue_receiver")]
PAIRS += [(AutoLockRenewer, fake.FakeAutoLockRenewer, name) for name in ("register", "close")]


def _named(fn: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
    ]


@pytest.mark.parametrize(("real", "ours", "name"), PAIRS, ids=[f"{r.__name__}.{n}" for r, _, n in PAIRS])
def test_the_fake_takes_the_sdks_parameters(real: type[Any], ours: type[Any], name: str) -> None:
    sdk, mine = _named(getattr(real, name)), _named(getattr(ours, name))
    # Every parameter the fake names exists in the SDK, in the same order for the positional ones.
    assert [p for p in mine if p in sdk] == mine, f"{name}: fake {mine} vs SDK {sdk}"
    assert [p for p in sdk if p in mine] == mine, f"{name}: order differs, fake {mine} vs SDK {sdk}"
