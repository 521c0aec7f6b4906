"""Asking the providers themselves: `leadline check --online`, `leadline webhooks subscribe`.

Each channel is started only looking (`Adapter.start`: its credentials checked; never
`go_live`, which `leadline run` adds), asked whether the provider would deliver its
webhooks here, and closed again. A check changes nothing at the provider: `subscribe`
is the one command here that does (Meta's subscribed_apps, Telegram's setWebhook).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from leadline.adapters.base import Adapter, AdapterContext
from leadline.adapters.registry import Registry
from leadline.config.brokers import BrokerConfig, BrokersFile
from leadline.runtime.channels import START_SECONDS, describe


@dataclass(frozen=True, slots=True)
class Finding:
    broker_id: str
    provider: str
    problem: str | None  # None: the provider says all is well


def _adapter(
    registry: Registry, broker: BrokerConfig, provider: str, public_url: str | None
) -> Adapter:
    adapter_type = registry.get(provider)
    assert adapter_type is not None  # the loader accepts only known providers
    context = AdapterContext(broker.id, broker.name, public_url)
    return adapter_type(broker.providers[provider], context)


async def _ask(adapter: Adapter, subscribe: bool) -> str | None:
    try:
        await asyncio.wait_for(adapter.start(), START_SECONDS)
        if subscribe:
            await adapter.subscribe()
        return await adapter.subscription_problem()
    except NotImplementedError as exc:
        return str(exc)
    except Exception as exc:
        return describe(exc)
    finally:
        await adapter.close()


async def check_online(
    brokers: BrokersFile, registry: Registry, public_url: str | None
) -> list[Finding]:
    """Every enabled channel, started and asked, all at once."""
    channels = [(b, p) for b in brokers.brokers.values() for p in sorted(b.providers)]
    problems = await asyncio.gather(
        *(_ask(_adapter(registry, b, p, public_url), subscribe=False) for b, p in channels)
    )
    return [Finding(b.id, p, problem) for (b, p), problem in zip(channels, problems, strict=True)]


async def subscribe(
    brokers: BrokersFile, registry: Registry, public_url: str | None, broker_id: str, provider: str
) -> Finding:
    """Have the provider deliver one channel's webhooks here again, then ask it again."""
    broker = brokers.brokers.get(broker_id)
    if broker is None or provider not in broker.providers:
        reason = broker.disabled.get(provider) if broker else None
        why = f"disabled: {reason}" if reason else "not configured"
        return Finding(broker_id, provider, f"no running {provider} channel ({why})")
    problem = await _ask(_adapter(registry, broker, provider, public_url), subscribe=True)
    return Finding(broker_id, provider, problem)
