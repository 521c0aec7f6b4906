"""BusinessCalendar against a brute-force model: every wall-clock minute, one by one.

The model expands each local date's shifts into the set of its open wall-clock minutes,
then asks, for every UTC minute of a window, which wall minute the clock shows. It shares
no code with the calendar: it never converts a wall time to an instant, so a DST gap is
simply a wall minute no UTC minute maps to, and a fold one that two UTC minutes map to.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from leadline.config.calendar import BusinessCalendar, BusinessHoursConfig

ZONES = (
    "Europe/Madrid",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Asia/Kolkata",  # +05:30, no DST
    "UTC",
    "America/Argentina/Buenos_Aires",  # no DST
)
DAY = 1440
MINUTE = timedelta(minutes=1)
WINDOW_DAYS = 4


def _offset_changes(zone: ZoneInfo, year: int) -> list[datetime]:
    """The UTC instants (to the minute) at which the zone's offset changes in `year`."""
    found = []
    hour = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    while hour < end:
        nxt = hour + timedelta(hours=1)
        if hour.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            minute = hour
            while minute.astimezone(zone).utcoffset() == hour.astimezone(zone).utcoffset():
                minute += MINUTE
            found.append(minute)
        hour = nxt
    return found


CHANGES = {name: _offset_changes(ZoneInfo(name), 2026) for name in ZONES}


@dataclass(frozen=True)
class Case:
    zone: str
    week: tuple[tuple[tuple[int, int], ...], ...]  # per weekday: (start, end) minutes
    always_open: bool
    holidays: tuple[date, ...]
    closures: tuple[tuple[datetime, datetime], ...]  # naive wall time
    window_start: datetime  # UTC, on a minute

    def config(self) -> BusinessHoursConfig:
        days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        table = {
            day: [f"{_clock(a)}-{_clock(b)}" for a, b in spans]
            for day, spans in zip(days, self.week, strict=True)
        }
        return BusinessHoursConfig.model_validate(
            {
                **table,
                "always_open": self.always_open,
                "holidays": list(self.holidays),
                "closures": [{"from": a, "to": b} for a, b in self.closures],
            }
        )


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# Boundaries on a quarter-hour grid, half of them in 00:00-04:00, where the zones' clocks
# jump (02:00, 02:30, 03:00, Santiago's 24:00), so that shifts often start or end in a gap
# or a fold.
grid = st.one_of(
    st.integers(0, DAY // 15).map(lambda q: q * 15),
    st.integers(0, 16).map(lambda q: q * 15),
)


@st.composite
def day_spans(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
    count = draw(st.integers(0, 3))
    points = sorted(draw(st.sets(grid, min_size=2 * count, max_size=2 * count)))
    spans = [(points[i], points[i + 1]) for i in range(0, len(points), 2)]
    if spans and draw(st.booleans()):
        # The last span runs past midnight, ending before it starts.
        start = spans[-1][0]
        end = draw(st.integers(0, start // 15 - 1).map(lambda q: q * 15)) if start else None
        if end is not None:
            spans[-1] = (start, end)
    return tuple(spans)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    zone = draw(st.sampled_from(ZONES))
    changes = CHANGES[zone]
    if changes and draw(st.integers(0, 3)) > 0:
        centre = draw(st.sampled_from(changes))
    else:
        centre = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=draw(st.integers(0, 364)))
    start = centre - timedelta(minutes=15 * draw(st.integers(0, 2 * 4 * 24)))
    always_open = draw(st.integers(0, 5)) == 0
    week = ((),) * 7 if always_open else tuple(draw(day_spans()) for _ in range(7))
    local = start.astimezone(ZoneInfo(zone)).date()
    near = st.integers(-2, WINDOW_DAYS + 1).map(lambda d: local + timedelta(days=d))
    holidays = tuple(draw(st.lists(near, max_size=2)))
    closures = []
    for _ in range(draw(st.integers(0, 2))):
        day = draw(near)
        begin = datetime(day.year, day.month, day.day) + timedelta(minutes=draw(grid))
        length = timedelta(minutes=draw(st.integers(1, 2 * DAY)))
        closures.append((begin, begin + length))
    return Case(zone, week, always_open, holidays, tuple(closures), start)


def model_minutes(case: Case, first: date, last: date) -> dict[date, set[int]]:
    """Open wall-clock minutes per local date, for the dates first..last."""
    open_minutes: dict[date, set[int]] = {}
    day = first - timedelta(days=1)
    while day <= last + timedelta(days=1):
        open_minutes.setdefault(day, set())
        if case.always_open:
            open_minutes[day].update(range(DAY))
        elif day not in case.holidays:  # a shift that starts on a holiday never happens
            for start, end in case.week[day.weekday()]:
                if end > start:
                    open_minutes[day].update(range(start, end))
                else:
                    open_minutes[day].update(range(start, DAY))
                    spill = open_minutes.setdefault(day + timedelta(days=1), set())
                    spill.update(range(end))
        day += timedelta(days=1)
    for holiday in case.holidays:
        open_minutes[holiday] = set()
    for begin, end in case.closures:
        wall = begin
        while wall < end:
            open_minutes.get(wall.date(), set()).discard(wall.hour * 60 + wall.minute)
            wall += MINUTE
    return open_minutes


def model_states(case: Case) -> list[bool]:
    zone = ZoneInfo(case.zone)
    minutes = [case.window_start + i * MINUTE for i in range(WINDOW_DAYS * DAY)]
    walls = [m.astimezone(zone) for m in minutes]
    table = model_minutes(case, walls[0].date(), walls[-1].date())
    return [w.hour * 60 + w.minute in table[w.date()] for w in walls]


def first_from(states: list[bool], index: int, wanted: bool) -> int | None:
    return next((i for i in range(index, len(states)) if states[i] == wanted), None)


def sample_indices(states: list[bool]) -> list[int]:
    """Every 53rd minute, and both sides of every change of state."""
    picks = set(range(0, len(states), 53))
    for i in range(1, len(states)):
        if states[i] != states[i - 1]:
            picks.update({i - 1, i})
    return sorted(picks)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(cases())
def test_is_open_matches_the_minute_model(case: Case) -> None:
    calendar = BusinessCalendar(case.config(), ZoneInfo(case.zone))
    states = model_states(case)
    for i, expected in enumerate(states):
        at = case.window_start + i * MINUTE
        assert calendar.is_open(at) == expected, (at, at.astimezone(calendar.zone))


@settings(max_examples=120, deadline=None, derandomize=True)
@given(cases())
def test_next_open_and_next_close_match_the_minute_model(case: Case) -> None:
    calendar = BusinessCalendar(case.config(), ZoneInfo(case.zone))
    states = model_states(case)
    end = case.window_start + len(states) * MINUTE
    for i in sample_indices(states):
        at = case.window_start + i * MINUTE
        for wanted, found in ((True, calendar.next_open(at)), (False, calendar.next_close(at))):
            index = first_from(states, i, wanted)
            if index is None:
                # Beyond the window the model knows nothing: only "not inside it" holds.
                assert found is None or found >= end, (at, wanted, found)
            else:
                assert found == case.window_start + index * MINUTE, (at, wanted, found)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(cases())
def test_closed_period_starts_after_the_last_open_minute(case: Case) -> None:
    calendar = BusinessCalendar(case.config(), ZoneInfo(case.zone))
    states = model_states(case)
    for i in sample_indices(states):
        at = case.window_start + i * MINUTE
        period = calendar.closed_period(at)
        if states[i]:
            assert period is None
            continue
        assert period is not None
        start, end = period
        assert end == calendar.next_open(at)
        last_open = next((j for j in range(i, -1, -1) if states[j]), None)
        if last_open is None:
            assert start is None or start <= case.window_start, (at, start)
        else:
            assert start == case.window_start + (last_open + 1) * MINUTE, (at, start)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cases())
def test_week_lists_exactly_the_open_minutes(case: Case) -> None:
    calendar = BusinessCalendar(case.config(), ZoneInfo(case.zone))
    zone = ZoneInfo(case.zone)
    first_day = case.window_start.astimezone(zone).date()
    days = calendar.week(first_day)
    assert [day for day, _ in days] == [first_day + timedelta(days=d) for d in range(7)]
    by_day = {}
    for day, local_spans in days:
        assert all(a.tzinfo == zone and b.tzinfo == zone for a, b in local_spans)
        # Aware datetimes of one zone compare by wall time: compare instants in UTC.
        spans = [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in local_spans]
        assert all(a < b for a, b in spans)
        assert all(b < c for (_, b), (c, _) in itertools.pairwise(spans))  # apart, in order
        by_day[day] = spans
    for i, expected in enumerate(model_states(case)):
        at = case.window_start + i * MINUTE
        listed = any(a <= at < b for a, b in by_day.get(at.astimezone(zone).date(), []))
        assert listed == expected, (at, at.astimezone(zone))
