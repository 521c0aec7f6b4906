"""`leadline hours BROKER`: this week's schedule and the next opening, in the broker's zone."""

from __future__ import annotations

from datetime import datetime, timedelta

from leadline.config.brokers import BrokerConfig
from leadline.runtime.scheduler import next_opening


def hours_report(broker: BrokerConfig, now: datetime) -> list[str]:
    calendar = broker.calendar
    zone = calendar.zone
    today = now.astimezone(zone).date()
    monday = today - timedelta(days=today.weekday())
    lines = [f"{broker.name} ({broker.id}), times in {zone.key}"]
    if broker.business_hours is None:
        return [*lines, "no business_hours table: always open"]
    for day, spans in calendar.week(monday):
        shown = ", ".join(f"{a:%H:%M}-{_end(a, b)}" for a, b in spans) or "closed"
        mark = "  <- today" if day == today else ""
        lines.append(f"{day:%a %Y-%m-%d}  {shown}{mark}")
    lines.append(_now_line(broker, now))
    return lines


def _end(start: datetime, end: datetime) -> str:
    """A span running to midnight ends at 24:00, not at 00:00."""
    return "24:00" if end.date() > start.date() and end.time() == end.time().min else f"{end:%H:%M}"


def _now_line(broker: BrokerConfig, now: datetime) -> str:
    calendar = broker.calendar
    zone = calendar.zone
    if calendar.is_open(now):
        closes = calendar.next_close(now)
        until = f"until {closes.astimezone(zone):%a %Y-%m-%d %H:%M}" if closes else "with no end"
        opening = next_opening(broker, now)
        after = f"; next opening {opening.astimezone(zone):%a %Y-%m-%d %H:%M}" if opening else ""
        return f"open now, {until}{after}"
    opening = calendar.next_open(now)
    if opening is None:
        return "closed, with no opening in the next two years"
    wait = opening - now
    hours, rest = divmod(int(wait.total_seconds()) // 60, 60)
    when = f"{opening.astimezone(zone):%a %Y-%m-%d %H:%M}"
    return f"closed now; next opening {when} (in {hours} h {rest} min)"
