"""Responders named in test brokers files (`responder = "tests.fakes.responders:NAME"`)."""

from __future__ import annotations

import asyncio
import time

from leadline.runtime.responder import IncomingMessage, LeadInfo

CALLS: list[int] = []  # the message ids each responder was asked about, in order


async def shout(message: IncomingMessage, lead: LeadInfo) -> str | None:
    CALLS.append(message.id)
    return f"AI for {lead.name or 'you'}: {(message.text or '').upper()}"


def threaded(message: IncomingMessage, lead: LeadInfo) -> str | None:
    """A plain function: run in a thread, so its blocking sleep never stalls the loop."""
    CALLS.append(message.id)
    time.sleep(0.2)
    return "answered from a thread"


def silent(message: IncomingMessage, lead: LeadInfo) -> str | None:
    CALLS.append(message.id)
    return None


def broken(message: IncomingMessage, lead: LeadInfo) -> str | None:
    CALLS.append(message.id)
    raise RuntimeError("the model is down")


async def slow(message: IncomingMessage, lead: LeadInfo) -> str | None:
    CALLS.append(message.id)
    await asyncio.sleep(30)
    return "too late"
