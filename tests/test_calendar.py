"""Business hours: the `[brokers.X.business_hours]` table and BusinessCalendar."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from leadline.config.calendar import (
    BusinessCalendar,
    BusinessHoursConfig,
    Closure,
    Span,
    parse_interval,
)

MADRID = ZoneInfo("Europe/Madrid")
NEW_YORK = ZoneInfo("America/New_York")
BUENOS_AIRES = ZoneInfo("America/Argentina/Buenos_Aires")
ZONE_UTC = ZoneInfo("UTC")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def local(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone)


def calendar(zone: ZoneInfo = ZONE_UTC, **table: Any) -> BusinessCalendar:
    return BusinessCalendar(BusinessHoursConfig.model_validate(table), zone)


def error_locs(table: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as caught:
        BusinessHoursConfig.model_validate(table)
    return {e["loc"]: e["msg"] for e in caught.value.errors(include_input=False)}


# 2026-01-09 is a Friday; 2026-01-12 a Monday.
FRI, SAT, SUN, MON = 9, 10, 11, 12


# --- Weekly spans ----------------------------------------------------------------------


def test_several_intervals_a_day_open_only_inside_each():
    cal = calendar(mon=["09:00-13:00", "14:00-18:30"])
    assert not cal.is_open(utc(2026, 1, MON, 8, 59))
    assert cal.is_open(utc(2026, 1, MON, 9, 0))
    assert cal.is_open(utc(2026, 1, MON, 12, 59, 59))
    assert not cal.is_open(utc(2026, 1, MON, 13, 0))
    assert cal.is_open(utc(2026, 1, MON, 14, 0))
    assert cal.is_open(utc(2026, 1, MON, 18, 29))
    assert not cal.is_open(utc(2026, 1, MON, 18, 30))
    assert not cal.is_open(utc(2026, 1, MON + 1, 10, 0))  # Tuesday has no hours


def test_overnight_span_runs_into_saturday_until_0200():
    cal = calendar(fri=["20:00-02:00"])
    assert not cal.is_open(utc(2026, 1, FRI, 19, 59))
    assert cal.is_open(utc(2026, 1, FRI, 20, 0))
    assert cal.is_open(utc(2026, 1, SAT, 0, 0))
    assert cal.is_open(utc(2026, 1, SAT, 1, 59))
    assert not cal.is_open(utc(2026, 1, SAT, 2, 0))
    assert cal.next_close(utc(2026, 1, FRI, 21, 0)) == utc(2026, 1, SAT, 2, 0)


def test_interval_ending_at_24_00_runs_to_midnight_and_no_further():
    cal = calendar(mon=["18:00-24:00"])
    assert cal.is_open(utc(2026, 1, MON, 23, 59, 59))
    assert not cal.is_open(utc(2026, 1, MON + 1, 0, 0))
    assert cal.next_close(utc(2026, 1, MON, 18, 0)) == utc(2026, 1, MON + 1, 0, 0)


def test_whole_days_join_into_one_open_stretch():
    cal = calendar(sat=["00:00-24:00"], sun=["00:00-24:00"])
    assert cal.next_close(utc(2026, 1, SAT, 0, 0)) == utc(2026, 1, MON, 0, 0)


def test_intervals_parse_into_spans():
    assert parse_interval("09:00-13:30") == Span(540, 810)
    assert parse_interval("20:00-02:00") == Span(1200, 120)
    assert parse_interval("20:00-02:00").overnight
    assert parse_interval("18:00-24:00") == Span(1080, 1440)
    assert parse_interval("22:00-00:00") == Span(1320, 1440)  # the same as 24:00
    assert BusinessHoursConfig(tue=("08:00-12:00",)).spans(1) == (Span(480, 720),)


# --- Holidays and closures -------------------------------------------------------------


def test_always_open_closes_for_a_whole_holiday():
    cal = calendar(always_open=True, holidays=["2026-01-10"])
    assert cal.is_open(utc(2026, 1, FRI, 23, 59))
    assert not cal.is_open(utc(2026, 1, SAT, 0, 0))
    assert not cal.is_open(utc(2026, 1, SAT, 23, 59))
    assert cal.next_open(utc(2026, 1, SAT, 12, 0)) == utc(2026, 1, SUN, 0, 0)


def test_no_table_means_always_open():
    cal = BusinessCalendar(None, MADRID)
    assert cal.is_open(utc(2026, 1, SAT, 3, 0))
    assert cal.next_close(utc(2026, 1, SAT, 3, 0)) is None
    assert cal.closed_period(utc(2026, 1, SAT, 3, 0)) is None


def test_holiday_cuts_the_previous_days_overnight_shift_at_midnight():
    cal = calendar(fri=["20:00-02:00"], holidays=[date(2026, 1, SAT)])
    assert cal.is_open(utc(2026, 1, FRI, 23, 59))
    assert not cal.is_open(utc(2026, 1, SAT, 0, 0))
    assert not cal.is_open(utc(2026, 1, SAT, 1, 0))
    assert cal.next_close(utc(2026, 1, FRI, 20, 0)) == utc(2026, 1, SAT, 0, 0)


def test_holiday_on_the_start_day_cancels_the_whole_shift():
    cal = calendar(fri=["20:00-02:00"], holidays=[date(2026, 1, FRI)])
    assert not cal.is_open(utc(2026, 1, FRI, 21, 0))
    assert not cal.is_open(utc(2026, 1, SAT, 1, 0))  # its spill past midnight too
    assert cal.next_open(utc(2026, 1, FRI, 12, 0)) == utc(2026, 1, FRI + 7, 20, 0)


def test_closure_over_several_days_next_open_at_its_end():
    cal = calendar(
        always_open=True,
        closures=[{"from": "2026-12-24T14:00", "to": "2026-12-27T09:30"}],
    )
    assert cal.is_open(utc(2026, 12, 24, 13, 59))
    assert not cal.is_open(utc(2026, 12, 24, 14, 0))
    assert not cal.is_open(utc(2026, 12, 26, 12, 0))
    assert cal.next_open(utc(2026, 12, 24, 15, 0)) == utc(2026, 12, 27, 9, 30)
    assert cal.closed_period(utc(2026, 12, 25, 0, 0)) == (
        utc(2026, 12, 24, 14, 0),
        utc(2026, 12, 27, 9, 30),
    )


def test_closure_cuts_a_shift_in_the_middle():
    cal = calendar(
        mon=["09:00-18:00"], closures=[{"from": "2026-01-12T12:00", "to": "2026-01-12T13:15"}]
    )
    assert cal.next_close(utc(2026, 1, MON, 9, 0)) == utc(2026, 1, MON, 12, 0)
    assert cal.next_open(utc(2026, 1, MON, 12, 0)) == utc(2026, 1, MON, 13, 15)


def test_closures_and_holidays_read_from_toml_strings_and_datetimes():
    table = tomllib.loads(
        """
        fri = ["20:00-02:00"]
        holidays = [2026-01-01, "2026-05-01"]
        closures = [
            { from = 2026-12-24T14:00:00, to = 2026-12-26T00:00:00 },
            { from = "2026-12-31T18:00", to = "2027-01-01T00:00" },
        ]
        """
    )
    hours = BusinessHoursConfig.model_validate(table)
    assert hours.holidays == (date(2026, 1, 1), date(2026, 5, 1))
    assert hours.closures == (
        Closure(start=datetime(2026, 12, 24, 14), end=datetime(2026, 12, 26)),
        Closure(start=datetime(2026, 12, 31, 18), end=datetime(2027, 1, 1)),
    )
    cal = BusinessCalendar(hours, ZONE_UTC)
    assert not cal.is_open(utc(2026, 12, 25, 21, 0))  # a Friday inside the closure


def test_next_open_across_a_weekend():
    cal = calendar(BUENOS_AIRES, mon=["09:00-18:00"], fri=["09:00-18:00"])
    friday_evening = local(BUENOS_AIRES, 2026, 1, FRI, 18, 0)
    assert cal.next_open(friday_evening) == local(BUENOS_AIRES, 2026, 1, MON, 9, 0)
    assert cal.next_open(friday_evening).tzinfo == UTC


def test_next_open_is_after_itself_when_open():
    cal = calendar(mon=["09:00-18:00"])
    at = datetime(2026, 1, MON, 10, 0, tzinfo=MADRID)
    assert cal.next_open(at) == at
    assert cal.next_open(at).tzinfo == UTC
    assert cal.next_close(utc(2026, 1, MON, 8, 0)) == utc(2026, 1, MON, 8, 0)


def test_never_open_without_spans_or_always_open():
    cal = calendar(MADRID)
    assert not cal.is_open(utc(2026, 1, MON, 10, 0))
    assert cal.next_open(utc(2026, 1, MON, 10, 0)) is None
    assert cal.closed_period(utc(2026, 1, MON, 10, 0)) == (None, None)


def test_open_only_beyond_the_two_year_horizon_counts_as_never():
    cal = calendar(
        always_open=True, closures=[{"from": "2026-01-01T00:00", "to": "2029-01-01T00:00"}]
    )
    assert cal.next_open(utc(2026, 1, 2, 0, 0)) is None
    assert cal.next_open(utc(2028, 6, 1, 0, 0)) == utc(2029, 1, 1, 0, 0)


def test_naive_datetimes_are_refused():
    cal = calendar(mon=["09:00-18:00"])
    naive = datetime(2026, 1, MON, 10, 0)
    for ask in (cal.is_open, cal.next_open, cal.next_close, cal.closed_period):
        with pytest.raises(ValueError, match="aware"):
            ask(naive)


# --- closed_period and week ------------------------------------------------------------


def test_closed_period_spans_from_last_close_to_next_open():
    cal = calendar(mon=["09:00-18:00"], fri=["09:00-17:00"])
    assert cal.closed_period(utc(2026, 1, MON, 10, 0)) is None
    assert cal.closed_period(utc(2026, 1, SAT, 12, 0)) == (
        utc(2026, 1, FRI, 17, 0),
        utc(2026, 1, MON, 9, 0),
    )
    # At the very instant it closes, that instant starts the stretch.
    assert cal.closed_period(utc(2026, 1, FRI, 17, 0)) == (
        utc(2026, 1, FRI, 17, 0),
        utc(2026, 1, MON, 9, 0),
    )


def test_week_lists_each_days_open_spans_in_local_time():
    hours = {"fri": ["20:00-02:00"], "mon": ["09:00-13:00", "14:00-18:00"]}
    cal = calendar(MADRID, **hours, holidays=["2026-01-13"])
    week = cal.week(date(2026, 1, FRI))
    assert [day for day, _ in week] == [date(2026, 1, FRI + d) for d in range(7)]
    spans = dict(week)

    def at(day: int, hour: int, minute: int = 0) -> datetime:
        return local(MADRID, 2026, 1, day, hour, minute)

    assert spans[date(2026, 1, FRI)] == [(at(FRI, 20), at(SAT, 0))]
    assert spans[date(2026, 1, SAT)] == [(at(SAT, 0), at(SAT, 2))]
    assert spans[date(2026, 1, SUN)] == []
    assert spans[date(2026, 1, MON)] == [(at(MON, 9), at(MON, 13)), (at(MON, 14), at(MON, 18))]
    assert spans[date(2026, 1, 13)] == []  # a holiday
    assert all(a.tzinfo == MADRID for a, _ in spans[date(2026, 1, MON)])


def test_week_shows_dst_days_with_their_real_offsets():
    cal = calendar(MADRID, sun=["01:00-04:00"])
    (_, spans), *_ = cal.week(date(2026, 3, 29))
    [(start, end)] = spans
    assert start.utcoffset() == timedelta(hours=1)
    assert end.utcoffset() == timedelta(hours=2)
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=2)  # 02:00-03:00 never is


def test_format_local_uses_next_open_format_in_the_zone():
    cal = calendar(MADRID, next_open_format="%a %d/%m %H:%M")
    assert cal.format_local(utc(2026, 7, 6, 7, 0)) == "Mon 06/07 09:00"
    assert BusinessCalendar(None, MADRID).format_local(utc(2026, 7, 6, 7, 0)) == (
        "Monday 06 July, 09:00"
    )


def test_the_tables_timezone_wins_over_the_brokers():
    cal = calendar(ZONE_UTC, timezone="Europe/Madrid", mon=["09:00-10:00"])
    assert cal.zone == MADRID
    assert cal.is_open(utc(2026, 1, MON, 8, 0))


# --- DST -------------------------------------------------------------------------------


def test_madrid_spring_forward_shift_starting_in_the_gap_opens_at_the_jump():
    # 2026-03-29, a Sunday: at 02:00 CET the clock jumps to 03:00 CEST (01:00 UTC).
    cal = calendar(MADRID, sun=["02:30-05:00"])
    assert not cal.is_open(utc(2026, 3, 29, 0, 59))  # 01:59 CET
    assert cal.is_open(utc(2026, 3, 29, 1, 0))  # 03:00 CEST
    assert cal.next_open(utc(2026, 3, 28, 12, 0)) == utc(2026, 3, 29, 1, 0)
    assert cal.next_close(utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 3, 0)  # 05:00 CEST


def test_shift_wholly_inside_the_gap_does_not_happen_that_day():
    # 02:15-02:45 is never shown on 2026-03-29: the next opening is a week later.
    cal = calendar(MADRID, sun=["02:15-02:45"])
    assert cal.next_open(utc(2026, 3, 28, 12, 0)) == utc(2026, 4, 5, 0, 15)  # 02:15 CEST
    assert cal.closed_period(utc(2026, 4, 4, 0, 0)) == (
        utc(2026, 3, 22, 1, 45),  # 02:45 CET, the Sunday before
        utc(2026, 4, 5, 0, 15),
    )


def test_madrid_spring_forward_day_is_an_hour_shorter():
    cal = calendar(MADRID, sun=["00:00-24:00"])
    opens = cal.next_open(utc(2026, 3, 28, 12, 0))
    closes = cal.next_close(opens)
    assert (opens, closes) == (utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 22, 0))
    assert closes - opens == timedelta(hours=23)


def test_madrid_fall_back_repeated_hour_follows_the_wall_clock():
    # 2026-10-25, a Sunday: at 03:00 CEST the clock goes back to 02:00 CET (01:00 UTC), so
    # 02:00-03:00 is shown twice; a shift ending 02:30 closes, reopens and closes again.
    cal = calendar(MADRID, sun=["00:00-02:30"])
    first_close = cal.next_close(utc(2026, 10, 24, 22, 0))
    assert first_close == utc(2026, 10, 25, 0, 30)
    # (Compared through UTC: Python never finds a time in a fold equal to another zone's.)
    assert first_close.astimezone(MADRID).replace(tzinfo=None) == datetime(2026, 10, 25, 2, 30)
    assert cal.next_open(first_close) == utc(2026, 10, 25, 1, 0)  # the second 02:00
    assert cal.next_close(utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 25, 1, 30)  # second 02:30
    assert cal.closed_period(utc(2026, 10, 25, 0, 45)) == (
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 0),
    )


def test_madrid_fall_back_day_is_an_hour_longer():
    cal = calendar(MADRID, sun=["00:00-24:00"])
    opens = cal.next_open(utc(2026, 10, 24, 12, 0))
    assert cal.next_close(opens) - opens == timedelta(hours=25)


def test_new_york_spring_forward_shift_starting_in_the_gap():
    # 2026-03-08, a Sunday: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    cal = calendar(NEW_YORK, sun=["02:15-04:00"])
    assert cal.next_open(utc(2026, 3, 8, 0, 0)) == utc(2026, 3, 8, 7, 0)
    assert cal.next_close(utc(2026, 3, 8, 7, 0)) == utc(2026, 3, 8, 8, 0)  # 04:00 EDT
    assert not cal.is_open(utc(2026, 3, 8, 6, 59))


def test_new_york_fall_back_shift_in_the_repeated_hour_happens_twice():
    # 2026-11-01, a Sunday: 02:00 EDT goes back to 01:00 EST (06:00 UTC).
    cal = calendar(NEW_YORK, sun=["01:00-01:30"])
    assert cal.next_open(utc(2026, 11, 1, 0, 0)) == utc(2026, 11, 1, 5, 0)  # 01:00 EDT
    assert cal.next_close(utc(2026, 11, 1, 5, 0)) == utc(2026, 11, 1, 5, 30)
    assert cal.next_open(utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 1, 6, 0)  # 01:00 EST
    assert cal.next_close(utc(2026, 11, 1, 6, 0)) == utc(2026, 11, 1, 6, 30)
    [(_, spans)] = cal.week(date(2026, 11, 1))[:1]
    assert [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in spans] == [
        (utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 30)),
        (utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 6, 30)),
    ]


def test_zone_without_dst_keeps_one_offset_all_year():
    cal = calendar(BUENOS_AIRES, mon=["09:00-18:00"])
    for monday in (date(2026, 1, 12), date(2026, 7, 6)):
        opens = cal.next_open(datetime.combine(monday, datetime.min.time(), UTC))
        assert opens == datetime(monday.year, monday.month, monday.day, 12, 0, tzinfo=UTC)


# --- Validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "message"),
    [
        ("9-17", "HH:MM-HH:MM"),
        ("09:00 to 17:00", "HH:MM-HH:MM"),
        ("25:00-26:00", "00:00-23:59"),
        ("09:00-24:01", "00:00-24:00"),
        ("24:00-02:00", "00:00-23:59"),
        ("09:60-10:00", "00:00-23:59"),
        ("09:00-09:00", "empty"),
        ("00:00-00:00", "empty"),
        ("9" * 10_000, "HH:MM-HH:MM"),
    ],
)
def test_bad_interval_is_reported_at_its_index(interval: str, message: str):
    errors = error_locs({"fri": ["10:00-11:00", interval]})
    assert list(errors) == [("fri", 1)]
    assert message in errors[("fri", 1)]
    assert "9999" not in errors[("fri", 1)]  # the value is not echoed


def test_overlapping_intervals_of_a_day_are_an_error():
    errors = error_locs({"mon": ["09:00-13:00", "12:00-18:00"]})
    assert list(errors) == [("mon",)]
    assert "overlap" in errors[("mon",)]
    # Overnight intervals overlap with the same day's later ones, not the next day's.
    assert list(error_locs({"tue": ["22:00-03:00", "23:00-23:30"]})) == [("tue",)]
    BusinessHoursConfig(tue=("00:00-02:00", "22:00-03:00"), wed=("01:00-05:00",))
    BusinessHoursConfig(tue=("09:00-13:00", "13:00-18:00"))  # touching is fine


def test_always_open_with_weekday_hours_is_an_error():
    errors = error_locs({"always_open": True, "sat": ["10:00-12:00"]})
    assert list(errors) == [("sat",)]
    assert "always_open" in errors[("sat",)]


@pytest.mark.parametrize("zone", ["Not/A_Zone", "Europe/Madrid; rm -rf", "../etc/passwd"])
def test_bad_timezone_is_an_error(zone: str):
    errors = error_locs({"timezone": zone})
    assert list(errors) == [("timezone",)]
    assert "time zone" in errors[("timezone",)]
    assert zone not in errors[("timezone",)]


def test_closure_ending_before_it_starts_is_an_error():
    errors = error_locs(
        {
            "closures": [
                {"from": "2026-01-01T00:00", "to": "2026-01-02T00:00"},
                {"from": "2026-03-01T10:00", "to": "2026-03-01T09:00"},
            ]
        }
    )
    assert errors == {("closures", 1, "to"): "Value error, must be after 'from'"}


def test_closure_with_an_offset_or_unknown_key_is_an_error():
    errors = error_locs({"closures": [{"from": "2026-03-01T10:00Z", "to": "2026-03-01T11:00"}]})
    assert list(errors) == [("closures", 0, "from")]
    assert "offset" in errors[("closures", 0, "from")]
    errors = error_locs({"closures": [{"from": "2026-03-01T10:00", "until": "2026-03-02"}]})
    assert set(errors) == {("closures", 0, "to"), ("closures", 0, "until")}


def test_bad_holiday_and_unknown_key_are_errors():
    assert list(error_locs({"holidays": ["2026-02-30"]})) == [("holidays", 0)]
    assert list(error_locs({"weekdays": ["09:00-17:00"]})) == [("weekdays",)]


@pytest.mark.parametrize("fmt", ["", "no codes at all", "%", "x" * 101])
def test_bad_next_open_format_is_an_error(fmt: str):
    assert list(error_locs({"next_open_format": fmt})) == [("next_open_format",)]


# --- iCalendar -------------------------------------------------------------------------

ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//Leadline//tests//EN
BEGIN:VEVENT
UID:christmas@test
SUMMARY:Christmas
DTSTART;VALUE=DATE:20261224
DTEND;VALUE=DATE:20261226
END:VEVENT
BEGIN:VEVENT
UID:meeting@test
SUMMARY:Team meeting in Madrid
DTSTART;TZID=Europe/Madrid:20260310T120000
DTEND;TZID=Europe/Madrid:20260310T150000
END:VEVENT
BEGIN:VEVENT
UID:new-year@test
SUMMARY:New year
DTSTART;VALUE=DATE:20200101
RRULE:FREQ=YEARLY
EXDATE;VALUE=DATE:20280101
END:VEVENT
BEGIN:VEVENT
UID:training@test
DTSTART:20260311T150000Z
DURATION:PT1H
END:VEVENT
BEGIN:VEVENT
UID:cancelled@test
STATUS:CANCELLED
DTSTART;VALUE=DATE:20260312
END:VEVENT
END:VCALENDAR
"""


def write(tmp_path: Path, text: str | bytes, name: str = "closed.ics") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text.replace("\n", "\r\n"), encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def test_ical_events_close_days_spans_and_yearly_holidays(tmp_path: Path):
    table = {"ical": str(write(tmp_path, ICS)), "always_open": True}
    hours = BusinessHoursConfig.model_validate(table, context={"today": date(2026, 6, 1)})
    cal = BusinessCalendar(hours, BUENOS_AIRES)

    def ba(*parts: int) -> datetime:
        return local(BUENOS_AIRES, *parts)

    # The all-day event closes 24 and 25 December, as holidays.
    assert cal.is_open(ba(2026, 12, 23, 23, 59))
    assert not cal.is_open(ba(2026, 12, 24, 0, 0))
    assert not cal.is_open(ba(2026, 12, 25, 23, 59))
    assert cal.is_open(ba(2026, 12, 26, 0, 0))
    # 12:00-15:00 in Madrid (CET, +01:00) is 08:00-11:00 in Buenos Aires (-03:00).
    assert cal.is_open(ba(2026, 3, 10, 7, 59))
    assert not cal.is_open(ba(2026, 3, 10, 8, 0))
    assert cal.next_open(ba(2026, 3, 10, 9, 0)) == ba(2026, 3, 10, 11, 0)
    # A UTC event with a DURATION: 15:00-16:00 UTC.
    assert cal.closed_period(utc(2026, 3, 11, 15, 30)) == (
        utc(2026, 3, 11, 15, 0),
        utc(2026, 3, 11, 16, 0),
    )
    # The yearly holiday, except its EXDATE.
    assert not cal.is_open(ba(2026, 1, 1, 12, 0))
    assert not cal.is_open(ba(2027, 1, 1, 12, 0))
    assert cal.is_open(ba(2028, 1, 1, 12, 0))
    assert not cal.is_open(ba(2029, 1, 1, 12, 0))
    assert cal.is_open(ba(2026, 3, 12, 12, 0))  # the cancelled event closes nothing


def test_ical_relative_path_uses_the_config_dir(tmp_path: Path):
    write(tmp_path, ICS)
    context = {"config_dir": tmp_path, "today": date(2026, 6, 1)}
    hours = BusinessHoursConfig.model_validate({"ical": "closed.ics"}, context=context)
    assert date(2026, 12, 24) in hours.ical_data.holidays


def test_missing_ical_file_is_an_error_at_its_key(tmp_path: Path):
    errors = error_locs({"ical": str(tmp_path / "nope.ics")})
    assert errors == {("ical",): "Value error, iCalendar file not found"}


def test_unreadable_ical_file_is_an_error_at_its_key(tmp_path: Path):
    errors = error_locs({"ical": str(tmp_path)})  # a directory
    assert list(errors) == [("ical",)]
    assert "cannot read" in errors[("ical",)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not a calendar", "not an iCalendar file"),
        ("BEGIN:VEVENT\nDTSTART:20260101T100000\nEND:VEVENT\n", "not an iCalendar file"),
        ("BEGIN:VCALENDAR\nBEGIN:VEVENT\nSUMMARY:x\nEND:VEVENT\nEND:VCALENDAR\n", "event 1"),
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART;VALUE=DATE:20260101\n"
            "RRULE:FREQ=NOPE\nEND:VEVENT\nEND:VCALENDAR\n",
            "RRULE",
        ),
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART:20260101T100000Z\nDURATION:PT1M\n"
            "RRULE:FREQ=MINUTELY\nEND:VEVENT\nEND:VCALENDAR\n",
            "minute",
        ),
    ],
)
def test_bad_ical_content_is_an_error_at_its_key(tmp_path: Path, content: Any, message: str):
    errors = error_locs({"ical": str(write(tmp_path, content))})
    assert list(errors) == [("ical",)]
    assert message in errors[("ical",)]
