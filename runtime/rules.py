"""Reply rules: given one stored inbound message, what (if anything) to answer.

Rules decide; they never send. Their answers are queued as outbound rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from leadline.config.brokers import BrokerConfig
from leadline.config.templates import render_template


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What a rule may know about the message it answers."""

    provider: str
    lead_name: str | None
    first_from_lead: bool


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    rule: str


def template_values(broker: BrokerConfig, facts: MessageFacts) -> dict[str, str]:
    return {
        "name": facts.lead_name or "there",
        "broker": broker.name,
        "provider": facts.provider,
    }


def welcome(broker: BrokerConfig, facts: MessageFacts) -> Reply | None:
    """A lead's first message gets the broker's `welcome` template."""
    template = broker.templates.welcome
    if not facts.first_from_lead or not template:
        return None
    return Reply(render_template(template, template_values(broker, facts)), rule="welcome")


def decide(broker: BrokerConfig, facts: MessageFacts) -> list[Reply]:
    if not broker.features.auto_reply:
        return []
    return [reply for rule in (welcome,) if (reply := rule(broker, facts)) is not None]
