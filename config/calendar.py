"""A broker's business hours: the `[brokers.X.business_hours]` table and its calendar.

Semantics (everything is in the broker's local wall-clock time):

- The broker is open at an instant iff the wall clock in its zone reads a time inside a
  span that applies to that reading, and no holiday or closure covers the reading.
- `always_open = true` is open at all times except holidays and closures.
- A weekday's spans apply to that calendar date. An overnight span (end <= start, like
  `fri = ["20:00-02:00"]`) covers Fri 20:00-24:00 and Sat 00:00-02:00. `24:00` ends a day.
- A holiday date D is closed from D 00:00 to D+1 00:00. A shift that *starts* on a holiday
  does not happen at all (its spill past midnight is closed too); a shift that started the
  day before runs until midnight and is cut there.
- A closure `[from, to)` in wall time is closed; it may span days and cut shifts anywhere.
- All-day events of the `ical` file close their dates exactly like `holidays`; its timed
  events are closures, converted to the broker's wall time.
- DST: a wall time that does not exist (the spring-forward gap) is never shown, so a shift
  starting at 02:30 on a day the clock jumps 02:00 -> 03:00 opens at the jump. During a
  fall-back fold the clock shows the repeated hour twice and the rules apply to each
  reading: a shift ending at 01:30 closes at the first 01:30, opens again at the second
  01:00 and closes again at the second 01:30. That is the honest wall-clock answer.

Searches (`next_open`, `next_close`, `closed_period`) look two years ahead or back at most.
Instants are returned as aware UTC datetimes; `week()` gives aware local datetimes.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
from dateutil.rrule import rrulestr
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

MINUTES_PER_DAY = 24 * 60
# How far the searches look, both ways: a broker closed for longer than this is "never open".
HORIZON = timedelta(days=731)
# RRULE occurrences are expanded within [today - 1 year, today + 3 years], a superset of
# the searches' horizon for any instant near the time the file is loaded.
ICAL_PAST = timedelta(days=366)
ICAL_FUTURE = timedelta(days=3 * 366)
# An RRULE is walked from its DTSTART: this bounds the work a hostile or mistaken file costs.
ICAL_MAX_STEPS = 100_000

DEFAULT_NEXT_OPEN_FORMAT = "%A %d %B, %H:%M"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_INTERVAL = re.compile(r"\s*([0-9]{2}):([0-9]{2})\s*-\s*([0-9]{2}):([0-9]{2})\s*")


def check_iana_zone(value: str) -> str:
    """A well-formed, known IANA time zone name (a broker's, or its business hours')."""
    # The value may come from the environment: never quote it back.
    if not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+){0,3}", value):
        raise ValueError("not an IANA time zone name (like Europe/Madrid)")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return value


@dataclass(frozen=True, slots=True)
class Span:
    """One opening interval of a weekday, in minutes of the day.

    `end_minute` is 1-1440; a span with `end_minute < start_minute` runs past midnight.
    """

    start_minute: int
    end_minute: int

    @property
    def overnight(self) -> bool:
        return self.end_minute < self.start_minute


def _clock_minute(hour: int, minute: int, *, is_end: bool) -> int:
    if is_end and (hour, minute) == (24, 0):
        return MINUTES_PER_DAY
    if hour > 23 or minute > 59:
        raise ValueError("times run 00:00-24:00" if is_end else "times run 00:00-23:59")
    return hour * 60 + minute


def parse_interval(text: str) -> Span:
    """'HH:MM-HH:MM' as a Span; ValueError with a message fit for the user."""
    match = _INTERVAL.fullmatch(text) if len(text) <= 40 else None
    if match is None:
        raise ValueError("write an interval as 'HH:MM-HH:MM', like '09:00-13:30'")
    start_hour, start_minute, end_hour, end_minute = map(int, match.groups())
    start = _clock_minute(start_hour, start_minute, is_end=False)
    end = _clock_minute(end_hour, end_minute, is_end=True)
    if end == start:
        raise ValueError("an interval that ends when it starts is empty")
    # "22:00-00:00" is the same as "22:00-24:00": keep one form so overnight means a spill.
    return Span(start, MINUTES_PER_DAY if end == 0 else end)


def _valid_interval(text: str) -> str:
    parse_interval(text)
    return text


# Each interval is checked on its own so that pydantic's loc names it: ("fri", 0).
Interval = Annotated[str, AfterValidator(_valid_interval)]


def _no_overlap(spans: Iterable[Span]) -> None:
    # An overnight span is laid out past 24:00 so that it is compared with the same day's
    # later intervals; its spill is not compared with the next day's own intervals.
    ranges = sorted(
        (s.start_minute, s.end_minute + (MINUTES_PER_DAY if s.overnight else 0)) for s in spans
    )
    for (_, end), (start, _) in itertools.pairwise(ranges):
        if start < end:
            raise ValueError("two intervals of this day overlap")


class Closure(BaseModel):
    """`{ from = 2026-12-24T14:00:00, to = 2026-12-26T00:00:00 }`: closed in between."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: datetime = Field(alias="from")  # naive local wall time in the broker's zone
    end: datetime = Field(alias="to")

    @field_validator("start", "end")
    @classmethod
    def _wall_time(cls, value: datetime) -> datetime:
        # One meaning only: an offset here could contradict the broker's time zone.
        if value.tzinfo is not None:
            raise ValueError("write local wall time without an offset or 'Z'")
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError("must be after 'from'")
        return value


@dataclass(frozen=True, slots=True)
class IcalData:
    """What an .ics file says: whole closed dates and timed closures.

    A timed closure is naive (floating: local wall time) or aware (an absolute instant,
    converted to the broker's wall time by the calendar, which knows the zone).
    """

    holidays: frozenset[date] = frozenset()
    closures: tuple[tuple[datetime, datetime], ...] = ()


class BusinessHoursConfig(BaseModel):
    """`[brokers.X.business_hours]`: when a broker is open, in its local wall time."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    timezone: str | None = None  # overrides the broker's timezone
    always_open: bool = False
    mon: tuple[Interval, ...] = ()
    tue: tuple[Interval, ...] = ()
    wed: tuple[Interval, ...] = ()
    thu: tuple[Interval, ...] = ()
    fri: tuple[Interval, ...] = ()
    sat: tuple[Interval, ...] = ()
    sun: tuple[Interval, ...] = ()
    holidays: tuple[date, ...] = ()
    closures: tuple[Closure, ...] = ()
    ical: Path | None = None
    next_open_format: str = DEFAULT_NEXT_OPEN_FORMAT

    # Parsed once, in validation, so the calendar never parses text or reads the file.
    _week: tuple[tuple[Span, ...], ...] = PrivateAttr(default=((),) * 7)
    _ical: IcalData = PrivateAttr(default_factory=IcalData)

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str | None) -> str | None:
        return None if value is None else check_iana_zone(value)

    @field_validator(*WEEKDAYS)
    @classmethod
    def _day(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if value and info.data.get("always_open"):
            raise ValueError("always_open = true leaves no room for weekday hours; drop one")
        _no_overlap(parse_interval(text) for text in value)
        return value

    @field_validator("ical")
    @classmethod
    def _ical_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Read here so that a bad file is reported at the `ical` key; the model validator
        # below reads it again to keep the result (a field validator has no model yet).
        if value is not None:
            read_ical(_ical_path(value, info), _today(info))
        return value

    @field_validator("next_open_format")
    @classmethod
    def _strftime(cls, value: str) -> str:
        if not value or len(value) > 100:
            raise ValueError("give a strftime format of 1-100 characters, like '%A %H:%M'")
        try:
            sample = datetime(2026, 12, 31, 23, 59).strftime(value)
        except ValueError:
            raise ValueError("not a valid strftime format") from None
        if sample == value:
            raise ValueError("the format shows no date or time; use codes like %A %d %H:%M")
        return value

    @model_validator(mode="after")
    def _parsed(self, info: ValidationInfo) -> BusinessHoursConfig:
        self._week = tuple(tuple(parse_interval(t) for t in getattr(self, d)) for d in WEEKDAYS)
        if self.ical is not None:
            self._ical = read_ical(_ical_path(self.ical, info), _today(info))
        return self

    def spans(self, weekday: int) -> tuple[Span, ...]:
        """The parsed intervals of a weekday (Monday is 0), as written."""
        return self._week[weekday]

    @property
    def ical_data(self) -> IcalData:
        return self._ical


def _today(info: ValidationInfo) -> date:
    # Injectable for tests: model_validate(..., context={"today": date(...)}).
    context = info.context or {}
    today = context.get("today")
    return today if isinstance(today, date) else date.today()


def _ical_path(path: Path, info: ValidationInfo) -> Path:
    # Relative paths are relative to context["config_dir"] when given, else to the cwd.
    base = (info.context or {}).get("config_dir")
    return Path(base) / path if base is not None and not path.is_absolute() else path


# --- iCalendar -------------------------------------------------------------------------


def read_ical(path: Path, today: date) -> IcalData:
    """Every VEVENT of an .ics file as closed dates or closures; ValueError if unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError("iCalendar file not found") from None
    except OSError as exc:
        raise ValueError(f"cannot read the iCalendar file: {exc.__class__.__name__}") from None
    try:
        calendar = icalendar.Calendar.from_ical(raw)
    except ValueError:
        calendar = None
    if calendar is None or calendar.name != "VCALENDAR":
        raise ValueError("not an iCalendar file (BEGIN:VCALENDAR ... END:VCALENDAR)")
    holidays: set[date] = set()
    closures: list[tuple[datetime, datetime]] = []
    for number, event in enumerate(calendar.walk("VEVENT"), start=1):
        if str(event.get("STATUS", "")).upper() == "CANCELLED":
            continue
        try:
            occurrences = list(_occurrences(event, today))
        except ValueError as exc:
            raise ValueError(f"event {number} of the iCalendar file: {exc}") from None
        for start, end in occurrences:
            if isinstance(start, datetime):
                closures.append((start, end))
            else:
                holidays.update(_dates(start, end))
    return IcalData(frozenset(holidays), tuple(closures))


def _occurrences(event: Any, today: date) -> Iterator[tuple[Any, Any]]:
    """(start, end) of each occurrence: dates for all-day events, datetimes otherwise."""
    try:  # icalendar's errors for a missing or broken property are ValueErrors
        start, duration = event.start, event.duration
        rules, excluded = event.rrules, set(event.exdates)
    except (ValueError, TypeError):
        raise ValueError("has no readable DTSTART, DTEND, DURATION or EXDATE") from None
    if duration <= timedelta(0):
        return  # a timed event without an end is an instant: it closes nothing
    if not rules:
        yield start, start + duration
        return
    for occurrence in _expand(rules, start, today):
        if occurrence not in excluded:
            yield occurrence, occurrence + duration


def _expand(rules: list[Any], start: date, today: date) -> Iterator[date]:
    all_day = not isinstance(start, datetime)
    first = datetime.combine(start, time()) if all_day else start
    low = datetime.combine(today - ICAL_PAST, time())
    high = datetime.combine(today + ICAL_FUTURE, time())
    if first.tzinfo is not None:
        low, high = low.replace(tzinfo=first.tzinfo), high.replace(tzinfo=first.tzinfo)
    for recur in rules:
        if not isinstance(recur, dict):  # icalendar keeps what it cannot parse as vBroken
            raise ValueError("has an RRULE that cannot be read")
        if str(recur.get("FREQ", [""])[0]).upper() in {"SECONDLY", "MINUTELY"}:
            raise ValueError("an RRULE repeating by the second or minute is not a closure")
        try:
            rule = rrulestr(recur.to_ical().decode(), dtstart=first)
        except (ValueError, TypeError):
            raise ValueError("has an RRULE that cannot be read") from None
        for steps, occurrence in enumerate(rule):
            if occurrence > high:
                break
            if steps > ICAL_MAX_STEPS:
                raise ValueError("its RRULE repeats too often to expand")
            if occurrence >= low:
                yield occurrence.date() if all_day else occurrence


def _dates(first: date, end: date) -> Iterator[date]:
    day = first
    while day < end:
        yield day
        day += timedelta(days=1)


# --- The calendar ----------------------------------------------------------------------


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (with a time zone)")
    return value


class BusinessCalendar:
    """When a broker is open; `hours=None` (no business_hours table) is always open."""

    def __init__(self, hours: BusinessHoursConfig | None, zone: ZoneInfo) -> None:
        self.hours = hours
        self.zone = ZoneInfo(hours.timezone) if hours and hours.timezone else zone
        self._always = hours is None or hours.always_open
        self._week = tuple(hours.spans(d) if hours else () for d in range(7))
        ical = hours.ical_data if hours else IcalData()
        self._holidays = frozenset(hours.holidays if hours else ()) | ical.holidays
        closures = [(c.start, c.end) for c in hours.closures] if hours else []
        closures += [(self._wall(s), self._wall(e)) for s, e in ical.closures]
        self._closure_starts, self._closure_ends = _merged(closures)
        # Every closure boundary, sorted: the wall times at which a closure begins or ends.
        self._closure_edges = sorted({*self._closure_starts, *self._closure_ends})
        self._exceptions = _exception_range(self._holidays, closures)

    # The state of one wall-clock reading -----------------------------------------------

    def _wall(self, value: datetime) -> datetime:
        """An instant (or a naive wall time, kept) as naive wall time in the zone."""
        if value.tzinfo is None:
            return value
        return value.astimezone(self.zone).replace(tzinfo=None)

    def _open_wall(self, wall: datetime) -> bool:
        if self._in_closure(wall):
            return False
        day = wall.date()
        if day in self._holidays:
            return False
        if self._always:
            return True
        minute = wall.hour * 60 + wall.minute
        for span in self._week[day.weekday()]:
            end = MINUTES_PER_DAY if span.overnight else span.end_minute
            if span.start_minute <= minute < end:
                return True
        # Yesterday's overnight shifts spill into today, unless they were cancelled because
        # yesterday was a holiday.
        yesterday = day - timedelta(days=1)
        if yesterday in self._holidays:
            return False
        return any(s.overnight and minute < s.end_minute for s in self._week[yesterday.weekday()])

    def _in_closure(self, wall: datetime) -> bool:
        index = bisect.bisect_right(self._closure_starts, wall) - 1
        return index >= 0 and wall < self._closure_ends[index]

    # Public questions -------------------------------------------------------------------

    def is_open(self, at: datetime) -> bool:
        """Whether the broker is open at the instant `at` (aware, any time zone)."""
        return self._open_wall(self._wall(_aware(at, "at")))

    def next_open(self, after: datetime) -> datetime | None:
        """The first instant >= `after` at which it is open (UTC); None within the horizon."""
        return self._next(_aware(after, "after"), want=True)

    def next_close(self, after: datetime) -> datetime | None:
        """The first instant >= `after` at which it is closed (UTC); None within the horizon."""
        return self._next(_aware(after, "after"), want=False)

    def closed_period(self, at: datetime) -> tuple[datetime | None, datetime | None] | None:
        """None when open at `at`; else when the closed stretch around it began and ends.

        The start is None when it was closed for the whole horizon back, the end (which is
        `next_open(at)`) None when it stays closed for the whole horizon ahead.
        """
        at = _aware(at, "at")
        if self.is_open(at):
            return None
        return self._closed_since(at), self.next_open(at)

    def week(self, first_day: date) -> list[tuple[date, list[tuple[datetime, datetime]]]]:
        """The 7 days from `first_day`, each with its open spans as aware local datetimes.

        Spans are clipped to the day's wall-clock 00:00-24:00, so an overnight span shows on
        both days; holidays, closures and DST are applied.
        """
        days = []
        for offset in range(7):
            day = first_day + timedelta(days=offset)
            begin = self._first_reading(datetime.combine(day, time()))
            end = self._first_reading(datetime.combine(day + timedelta(days=1), time()))
            spans = self._open_spans(begin, end)
            days.append(
                (day, [(a.astimezone(self.zone), b.astimezone(self.zone)) for a, b in spans])
            )
        return days

    def format_local(self, instant: datetime) -> str:
        """An instant in the calendar's zone, written with `next_open_format`."""
        fmt = self.hours.next_open_format if self.hours else DEFAULT_NEXT_OPEN_FORMAT
        return _aware(instant, "instant").astimezone(self.zone).strftime(fmt)

    # Searching --------------------------------------------------------------------------

    def _next(self, after: datetime, want: bool) -> datetime | None:
        if self._constant() not in (None, want):
            return None
        after = after.astimezone(UTC)
        if self.is_open(after) == want:
            return after
        lo, limit = after, after + HORIZON
        while lo < limit and not self._past_exceptions(lo, forward=True, origin=after):
            hi = min(lo + timedelta(days=1), limit)
            for instant in self._change_points(lo, hi):
                if instant > after and self.is_open(instant) == want:
                    return instant
            lo = hi
        return None

    def _closed_since(self, at: datetime) -> datetime | None:
        """The instant the closed stretch that holds `at` began; None beyond the horizon."""
        if self._constant() is False:
            return None
        at = at.astimezone(UTC)
        # The state is constant from a change point to the next: walk them backwards and
        # the stretch began at the change point after the last open one.
        since = at
        hi, limit = at + timedelta(microseconds=1), at - HORIZON
        while hi > limit and not self._past_exceptions(hi, forward=False, origin=at):
            lo = max(hi - timedelta(days=1), limit)
            for instant in reversed(self._change_points(lo, hi)):
                if instant > at:
                    continue
                if self.is_open(instant):
                    return since
                since = instant
            hi = lo
        return None

    def _constant(self) -> bool | None:
        """True/False when the calendar is open/closed at all times, else None."""
        if not self._always and not any(self._week):
            return False
        if self._always and not self._holidays and not self._closure_starts:
            return True
        return None

    def _past_exceptions(self, instant: datetime, forward: bool, origin: datetime) -> bool:
        # Beyond every holiday and closure the weekly pattern repeats for good: if two weeks
        # of it held no wanted state (a DST gap may hide one week's), none ever will.
        margin = timedelta(days=15)
        day, start = self._wall(instant).date(), self._wall(origin).date()
        first, last = self._exceptions or (start, start)
        if forward:
            return day > max(start, last) + margin
        return day < min(start, first) - margin

    def _open_spans(self, begin: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        spans: list[tuple[datetime, datetime]] = []
        opened: datetime | None = None
        for instant in [begin, *self._change_points(begin, end)]:
            state = self.is_open(instant)
            if state and opened is None:
                opened = instant
            elif not state and opened is not None:
                spans.append((opened, instant))
                opened = None
        if opened is not None and opened < end:
            spans.append((opened, end))
        return spans

    def _change_points(self, lo: datetime, hi: datetime) -> list[datetime]:
        """Every instant in [lo, hi) (UTC) at which the open state may change, sorted.

        Between two of them the state is constant: the wall clock crosses no boundary and
        does not jump. Wall dates one day either side are included since a fold may show
        a date again.
        """
        first = self._wall(lo).date() - timedelta(days=1)
        last = self._wall(hi).date() + timedelta(days=1)
        # A transition at exactly `hi` is kept: the next window, starting there, would not
        # see the offset change.
        points = set(self._transitions(lo, hi))
        for day in _dates(first, last + timedelta(days=1)):
            for wall in self._boundaries(day):
                points.update(t for t in self._readings(wall) if lo <= t < hi)
        return sorted(points)

    def _boundaries(self, day: date) -> Iterator[datetime]:
        """Wall times of `day` at which the rules may change: midnight, shift edges, closures."""
        midnight = datetime.combine(day, time())
        yield midnight
        minutes = set()
        for span in self._week[day.weekday()]:
            minutes.add(span.start_minute)
            if not span.overnight:
                minutes.add(span.end_minute)
        yesterday = self._week[(day.weekday() - 1) % 7]
        minutes.update(s.end_minute for s in yesterday if s.overnight)
        for minute in minutes - {MINUTES_PER_DAY}:
            yield midnight + timedelta(minutes=minute)
        edges = self._closure_edges
        start = bisect.bisect_left(edges, midnight)
        stop = bisect.bisect_left(edges, midnight + timedelta(days=1))
        yield from edges[start:stop]

    def _readings(self, wall: datetime) -> Iterator[datetime]:
        """The instants (UTC) at which the clock shows `wall`: none in a gap, two in a fold."""
        for fold in (0, 1):
            instant = wall.replace(tzinfo=self.zone, fold=fold).astimezone(UTC)
            if self._wall(instant) == wall:
                yield instant

    def _first_reading(self, wall: datetime) -> datetime:
        """The first instant at which the clock shows `wall` or later (the jump, in a gap)."""
        readings = list(self._readings(wall))
        if readings:
            return min(readings)
        # In a gap, fold=1 maps before the jump and fold=0 after it.
        before = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        after = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        return self._transition(before, after)

    def _transitions(self, lo: datetime, hi: datetime) -> list[datetime]:
        """The zone's UTC offset change in (lo, hi], if any.

        Assumes at most one per window (a day): no zone changes its offset twice a day.
        """
        if lo.astimezone(self.zone).utcoffset() == hi.astimezone(self.zone).utcoffset():
            return []
        return [self._transition(lo, hi)]

    def _transition(self, lo: datetime, hi: datetime) -> datetime:
        """The first instant in (lo, hi] with hi's UTC offset, by bisection on whole seconds."""
        target = hi.astimezone(self.zone).utcoffset()
        low, high = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
        while high - low > 1:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, UTC).astimezone(self.zone).utcoffset() == target:
                high = middle
            else:
                low = middle
        return datetime.fromtimestamp(high, UTC)


def _merged(closures: list[tuple[datetime, datetime]]) -> tuple[list[datetime], list[datetime]]:
    """Overlapping or touching closures joined: sorted, disjoint starts and ends."""
    starts: list[datetime] = []
    ends: list[datetime] = []
    for start, end in sorted(closures):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _exception_range(
    holidays: frozenset[date], closures: list[tuple[datetime, datetime]]
) -> tuple[date, date] | None:
    """The first and last wall dates touched by a holiday or closure; None if there are none."""
    days = [*holidays, *(s.date() for s, _ in closures), *(e.date() for _, e in closures)]
    return (min(days), max(days)) if days else None
