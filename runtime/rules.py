"""Reply rules: given one stored inbound message, what (if anything) to answer.

Rules decide; they never send. Their answers are queued as outbound rows. One
message gets at most one immediate auto-reply, the first of: the broker's
responder (its own answer), a keyword rule, the welcome (a lead's first
message), the closed reply (once per closed period, and never once a human has
answered the lead in it). A message written while closed may in addition get the
open reply, queued for the next opening (one per lead and opening), which is
withdrawn should a human answer the lead first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from leadline.config.brokers import BrokerConfig, KeywordRule
from leadline.config.templates import render_template


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What a rule may know about the message it answers."""

    provider: str
    lead_name: str | None
    first_from_lead: bool
    text: str | None = None
    closed: bool = False
    next_open: datetime | None = None  # while closed: the next opening
    closed_reply_in_period: bool = False  # one already went to this lead since it closed
    human_answered_in_period: bool = False
    open_reply_queued: bool = False  # one waits for that opening already
    responder_reply: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    rule: str
    send_after: datetime | None = None
    unless_answered: bool = False  # withdrawn if a human answers the lead before it goes
    ai: bool = False


def template_values(broker: BrokerConfig, facts: MessageFacts) -> dict[str, str]:
    next_open = broker.calendar.format_local(facts.next_open) if facts.next_open else ""
    return {
        "name": facts.lead_name or "there",
        "broker": broker.name,
        "provider": facts.provider,
        "next_open": next_open,
    }


def _render(template: str, broker: BrokerConfig, facts: MessageFacts) -> str:
    return render_template(template, template_values(broker, facts))


def responder(broker: BrokerConfig, facts: MessageFacts) -> Reply | None:
    if not facts.responder_reply:
        return None
    return Reply(facts.responder_reply, rule="responder", ai=True)


def keyword(broker: BrokerConfig, facts: MessageFacts) -> Reply | None:
    words = normalize(facts.text or "")
    for rule in broker.keywords:
        if any(_contains(words, term) for term in _terms(rule)):
            return Reply(_render(rule.reply, broker, facts), rule="keyword")
    return None


def welcome(broker: BrokerConfig, facts: MessageFacts) -> Reply | None:
    """A lead's first message gets the broker's `welcome` template."""
    template = broker.templates.welcome
    if not facts.first_from_lead or not template:
        return None
    return Reply(_render(template, broker, facts), rule="welcome")


def closed_reply(broker: BrokerConfig, facts: MessageFacts) -> Reply | None:
    template = broker.templates.closed_reply
    if (
        not template
        or not facts.closed
        or facts.closed_reply_in_period
        or facts.human_answered_in_period
    ):
        return None
    return Reply(_render(template, broker, facts), rule="closed_reply")


def open_reply(broker: BrokerConfig, facts: MessageFacts) -> Reply | None:
    template = broker.templates.open_reply
    if not template or not facts.closed or facts.next_open is None or facts.open_reply_queued:
        return None
    text = _render(template, broker, facts)
    return Reply(text, rule="open_reply", send_after=facts.next_open, unless_answered=True)


IMMEDIATE: tuple[Callable[[BrokerConfig, MessageFacts], Reply | None], ...] = (
    responder,
    keyword,
    welcome,
    closed_reply,
)


def decide(broker: BrokerConfig, facts: MessageFacts) -> list[Reply]:
    if not broker.features.auto_reply:
        return []
    replies = []
    for rule in IMMEDIATE:
        if (reply := rule(broker, facts)) is not None:
            replies.append(reply)
            break
    if (later := open_reply(broker, facts)) is not None:
        replies.append(later)
    return replies


# --- keywords ------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, no accents, punctuation as spaces ("¿El PRECIO?" → "el precio")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^\w]+", " ", plain).split())


def _terms(rule: KeywordRule) -> list[str]:
    return [normalize(term) for term in rule.match]


def _contains(words: str, term: str) -> bool:
    """Whole words only: "precio" matches "el precio?" but not "preciosa"."""
    return bool(term) and f" {term} " in f" {words} "
