"""Helpers shared by the Azure tests."""

from __future__ import annotations

import dataclasses
import uuid

from difflane.jobs import Job


def id_at(epoch: float, counter: int = 0) -> str:
    """A UUIDv7 job id for a given time (``jobs.new_id`` never goes back in time within a process)."""
    ms = int(epoch * 1000)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (counter & 0xFFF) << 64 | 0b10 << 62 | uuid.uuid4().int >> 66
    return str(uuid.UUID(int=value))


def at_time(job: Job, epoch: float, counter: int = 0) -> Job:
    return dataclasses.replace(job, id=id_at(epoch, counter))
