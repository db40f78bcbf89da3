"""Exit codes of ``difflane run-job``: one definition for the worker, the Kubernetes Job spec's
``podFailurePolicy`` and the controller that reads what a pod ended with."""

from __future__ import annotations

from enum import IntEnum


class RunJobExit(IntEnum):
    DONE = 0  # the job is final (or needed nothing from this pod)
    RETRY = 1  # the attempt failed and may be retried: spends one of the Job's backoffLimit
    NEVER = 2  # the job can never succeed (unknown job, invalid input): fail the Job at once
    GIVEN_BACK = 3  # stopped from outside (SIGTERM: eviction, drain, preemption); no attempt spent
