"""Retirement and availability dates of a priced model, and the warnings they give.

The dates are data, kept with the prices (`data/pricing.json`, each entry's `lifecycle`), each
with its source and the day it was checked. A warning is due when a date is past, or falls
within the months over which the report spreads a fine-tuning job's cost (`--months`): a model
that dies before then never earns its training back.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ArmKind = Literal["zero-shot", "fine-tuned"]
"""A zero-shot arm needs the base model to answer; a fine-tuned arm needs training to be open
and its fine-tune (or deployment) to keep answering."""

DAYS_PER_MONTH = 365.25 / 12

PROVIDER_NAMES = {"openai": "OpenAI", "azure": "Azure"}


class LifecycleDate(BaseModel):
    """One dated event in a model's life, with where it is published."""

    model_config = ConfigDict(extra="forbid")

    date: dt.date
    """The day it happens (YYYY-MM-DD)."""
    source: str = Field(min_length=1)
    """Where it is published: a URL (the shipped table always gives one)."""
    checked: dt.date
    """When the source was read (YYYY-MM-DD)."""
    note: str = ""
    """Qualifications a reader needs (who it applies to, a disagreeing source); shown in the
    warning."""


class Lifecycle(BaseModel):
    """The known retirement dates of a model at its provider; an unknown date is left out."""

    model_config = ConfigDict(extra="forbid")

    deprecated_on: LifecycleDate | None = None
    """Retirement announced (OpenAI) or no new deployments for new customers (Azure); it still
    answers. Warned of only when no shutdown date is known."""
    shutdown_on: LifecycleDate | None = None
    """Inference stops: requests to the model fail (OpenAI: fine-tunes built on it too)."""
    finetuning_ends_on: LifecycleDate | None = None
    """No new fine-tuning job can be started from this day."""
    deployment_retires_on: LifecycleDate | None = None
    """Azure: fine-tuned deployments of the model stop answering (their own schedule, later
    than the base model's)."""


def _from_today(day: dt.date, today: dt.date) -> str:
    days = (day - today).days
    if days == 0:
        return "today"
    if days < 62:
        return f"{days} day{'s' if days != 1 else ''} from today"
    return f"{days / DAYS_PER_MONTH:.1f} months from today"


def warnings(
    lifecycle: Lifecycle,
    *,
    provider: str,
    name: str,
    kind: ArmKind | None,
    today: dt.date,
    months: float = 12,
) -> list[str]:
    """One line per date that is past or within `months` of `today`, in date order.

    `kind` None covers both arms (what `estimate` prices); `name` is the model as the user
    wrote it. Dates beyond the horizon give nothing.
    """
    who = PROVIDER_NAMES.get(provider, provider)
    zero = kind in (None, "zero-shot")
    tuned = kind in (None, "fine-tuned")
    deployment = lifecycle.deployment_retires_on
    # (event, verb past, verb future, consequence past, consequence future)
    events: list[tuple[LifecycleDate, str, str, str, str]] = []
    if tuned and lifecycle.finetuning_ends_on:
        events.append(
            (
                lifecycle.finetuning_ends_on,
                "stopped new fine-tuning jobs on",
                "stops new fine-tuning jobs on",
                "a fine-tune of it can no longer be trained or retrained",
                "no fine-tune of it can be trained or retrained after that",
            )
        )
    if lifecycle.shutdown_on and (zero or deployment is None):
        if zero and tuned and deployment is None:
            subject, plural = "the model and fine-tunes built on it", True
        elif zero:
            subject, plural = ("the base model" if tuned else "the model"), False
        else:
            subject, plural = "the fine-tune", False
        events.append(
            (
                lifecycle.shutdown_on,
                "shut it down on",
                "shuts it down on",
                f"{subject} no longer answer{'' if plural else 's'}",
                f"{subject} stop{'' if plural else 's'} answering then",
            )
        )
    if tuned and deployment:
        events.append(
            (
                deployment,
                "retired fine-tuned deployments of it on",
                "retires fine-tuned deployments of it on",
                "the fine-tuned deployment no longer answers",
                "the fine-tuned deployment stops answering then",
            )
        )
    if zero and lifecycle.deprecated_on and lifecycle.shutdown_on is None:
        events.append(
            (
                lifecycle.deprecated_on,
                "deprecated it on",
                "deprecates it on",
                "it is due to be retired: check the source for its shutdown date",
                "it will be due to be retired: check the source for its shutdown date",
            )
        )
    horizon = today + dt.timedelta(days=months * DAYS_PER_MONTH)
    out = []
    for ev, past, future, gone, going in sorted(events, key=lambda e: e[0].date):
        note = f"; {ev.note}" if ev.note else ""
        cite = f" (source: {ev.source}, checked {ev.checked.isoformat()})"
        if ev.date < today:
            out.append(f"{name}: {who} {past} {ev.date.isoformat()}: {gone}{note}{cite}")
        elif ev.date <= horizon:
            out.append(
                f"{name}: {who} {future} {ev.date.isoformat()}, {_from_today(ev.date, today)}, "
                f"within the {months:g} months the report spreads training over: "
                f"{going}{note}{cite}"
            )
    return out
