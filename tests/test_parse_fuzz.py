"""Fuzzing every built-in adapter's parse, then the runtime's sanitizer (issue 15, item 1).

A webhook's body reaches `adapter.parse`, then `clean_events`, then the database; only
`RequestRejected` (a 4xx) may come out of the first two: anything else is answered as
a database failure (503), and the provider retries it for days. What comes out of the
sanitizer must be storable on SQLite and PostgreSQL alike: ids of at most 255 printable
characters, text without NUL or lone surrogates, JSON that JSONB takes.

Bodies are hypothesis-made: arbitrary JSON (and bytes), and the kits' real sample
deliveries (tests/conformance_kits.py) with values replaced by odd ones (bools where ints
go, floats, huge ints, nulls, huge strings, lone surrogates), by JSON nested up to past
the parser's limit, and by wide objects. Runs are derandomized: the suite stays
deterministic, and a failure names its example.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    OutboundEcho,
    ProviderNotice,
    RequestRejected,
    StatusUpdate,
    StatusWatermark,
)
from leadline.adapters.conformance import Kit
from leadline.runtime.sanitize import MAX_ID, clean_events
from tests.conformance_kits import KITS
from tests.fuzz import paths

ADAPTERS = sorted(KITS)  # whatsapp, messenger, instagram, telegram, tiktok
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- values ----------------------------------------------------------------------------------

TEXT = st.text(st.characters(categories=["L", "N", "P", "S", "Zs", "Cc", "Cs"]), max_size=30)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
ODD = st.sampled_from(
    [
        True, False, None, 0, -1, 2**63, -(2**63) - 1, 10**300, 1e308, -0.0, math.nan,
        math.inf, "", " ", "\x00", "\ud800", "a\nb", "x" * 256, "x" * 4096, "x" * 4097, [], {},
    ]
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)


@dataclass(frozen=True)
class Big:
    """A value too big to draw: written into the body's text when it is encoded."""

    kind: str  # "deep-list", "deep-object", "wide", "huge"
    size: int

    def text(self) -> str:
        if self.kind == "deep-list":
            return "[" * self.size + "1" + "]" * self.size
        if self.kind == "deep-object":
            return '{"a":' * self.size + "null" + "}" * self.size
        if self.kind == "wide":
            return json.dumps({f"k{i}": [i, None, True, "v"] for i in range(self.size)})
        return json.dumps("\u00e9x\u0000\ud800" * (self.size // 4), ensure_ascii=True)


# Around the sanitizer's cut (64), where recursion gave out (~450), and the parser's limit.
DEPTHS = st.sampled_from([500, 900, 63, 64, 65, 450, 990, 1_000, 5_000, 50_000]) | st.integers(
    1, 1_200
)
BIG = st.one_of(
    st.builds(Big, st.sampled_from(["deep-list", "deep-object"]), DEPTHS),
    st.builds(Big, st.just("wide"), st.integers(0, 20_000)),
    st.builds(Big, st.just("huge"), st.integers(0, 400_000)),
)


@dataclass
class Encoder:
    """json.dumps that writes `Big` values as raw text (json.dumps itself would recurse)."""

    ascii_only: bool = True
    bigs: dict[str, Big] = field(default_factory=dict)

    def placeholder(self, big: Big) -> str:
        name = f"@@big-{len(self.bigs)}@@"
        self.bigs[name] = big
        return name

    def encode(self, value: Any) -> str:
        text = json.dumps(value, ensure_ascii=self.ascii_only)
        for name, big in self.bigs.items():
            text = text.replace(json.dumps(name), big.text())
        return text


# --- bodies ----------------------------------------------------------------------------------


def samples(kit: Kit) -> list[Any]:
    return [json.loads(s.body) for s in [*kit.samples, *kit.status_samples]]


def opened(payload: Any) -> Any:
    """TikTok's `content` is a JSON document in a string: mutate it as an object."""
    if isinstance(payload, dict) and isinstance(payload.get("content"), str):
        payload["content"] = json.loads(payload["content"])
    return payload


def node(payload: Any, where: tuple[Any, ...]) -> Any:
    for step in where:
        payload = payload[step]
    return payload


DEEP = st.builds(Big, st.sampled_from(["deep-list", "deep-object"]), DEPTHS) | st.builds(
    Big, st.just("huge"), st.integers(0, 20_000)
)


def plant(payload: Any, draw: Callable[..., Any], encoder: Encoder) -> Any:
    """Into every object of the payload (messages, their contents), put the fields a
    parser keeps whole (an unknown type's raw object, a referral, a shared post, an
    unsupported message), each holding a value too deep or too big to draw."""
    big = draw(DEEP)
    kind = draw(st.sampled_from(["hologram", "share_post", "sticker", "unknown"]))
    for where in [p for p in paths(payload) if isinstance(node(payload, p), dict)]:
        target = node(payload, where)
        if "type" in target:
            target["type"] = kind
        for name in (kind, "referral"):
            target[name] = encoder.placeholder(big)
        target["is_unsupported"] = True  # Messenger keeps such a message raw
    return payload


def mutate(payload: Any, draw: Callable[..., Any], encoder: Encoder) -> Any:
    action = draw(st.sampled_from(["odd", "json", "big", "delete", "wrap", "values", "plant"]))
    if action == "plant":
        return plant(payload, draw, encoder)
    where = draw(st.sampled_from([p for p in paths(payload) if p] or [()]))
    if not where:
        return payload
    parent = node(payload, where[:-1])
    key = where[-1]
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "wrap":
        parent[key] = [parent[key]]
    elif action == "values" and isinstance(parent[key], dict):
        parent[key] = list(parent[key].values())
    elif action == "big":
        parent[key] = encoder.placeholder(draw(BIG))
    else:
        parent[key] = copy.deepcopy(draw(ODD if action == "odd" else JSON))  # ODD holds [], {}
    return payload


def encoded(payload: Any, encoder: Encoder, inner_as_text: bool) -> bytes:
    if inner_as_text and isinstance(payload, dict) and "content" in payload:
        payload["content"] = encoder.encode(payload["content"])
    text = encoder.encode(payload)
    return text.encode("utf-8", "surrogatepass")  # lone surrogates: bytes no decoder takes


@st.composite
def mutated_sample(draw: Callable[..., Any], kit: Kit) -> bytes:
    payload = opened(copy.deepcopy(draw(st.sampled_from(samples(kit)))))
    encoder = Encoder(ascii_only=draw(st.booleans()) or draw(st.booleans()))
    for _ in range(draw(st.integers(1, 4))):
        payload = mutate(payload, draw, encoder)
    return encoded(payload, encoder, inner_as_text=draw(st.booleans()) or draw(st.booleans()))


@st.composite
def planted_sample(draw: Callable[..., Any], kit: Kit) -> bytes:
    """A sample with deep or huge values in every object a parser may keep whole."""
    payload = opened(copy.deepcopy(draw(st.sampled_from(samples(kit)))))
    encoder = Encoder()
    payload = plant(payload, draw, encoder)
    if draw(st.booleans()):
        payload = mutate(payload, draw, encoder)
    return encoded(payload, encoder, inner_as_text=draw(st.booleans()))


@st.composite
def any_body(draw: Callable[..., Any], kit: Kit) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    encoder = Encoder()
    value = draw(JSON)
    envelope = draw(st.sampled_from(samples(kit)))
    if isinstance(envelope, dict) and draw(st.booleans()):  # the right envelope, odd insides
        value = {**envelope, draw(st.sampled_from(sorted(envelope))): value}
    return encoded(opened(copy.deepcopy(value)), encoder, inner_as_text=True)


# --- the path under test ---------------------------------------------------------------------


@cache
def adapter_for(name: str) -> tuple[Adapter, Kit]:
    """The adapter as a broker's channel builds it; parse needs no start (no session)."""
    kit = KITS[name]()
    config = kit.adapter.config_model.model_validate(dict(kit.config))
    return kit.adapter(config, AdapterContext("fuzz", "Fuzz Realty")), kit


def parse_and_clean(name: str, body: bytes) -> list[InboundEvent]:
    """What the webhook route runs on a verified body; [] when it is refused (4xx)."""
    adapter, kit = adapter_for(name)
    assert kit.sign is not None
    headers = CIMultiDict(kit.sign(body, time.time()))
    try:
        events = adapter.parse(headers, body)
        cleaned = clean_events(events)
        adapter.webhook_reply(events)
    except RequestRejected as rejected:
        assert 400 <= rejected.status < 500 and rejected.reason
        return []
    for event in cleaned:
        assert_storable(event)
    return cleaned


ID_FIELDS: dict[type, tuple[str, ...]] = {
    InboundMessage: ("channel_message_id", "channel_user_id", "reply_to"),
    InboundEdit: ("channel_message_id", "channel_user_id"),
    OutboundEcho: ("channel_message_id", "channel_user_id"),
    StatusUpdate: ("channel_message_id",),
    StatusWatermark: ("channel_user_id",),
    ProviderNotice: ("key",),
}


def assert_storable(event: InboundEvent) -> None:
    for name in ID_FIELDS[type(event)]:
        value = getattr(event, name)
        if value is None and name == "reply_to":
            continue
        assert isinstance(value, str) and 0 < len(value) <= MAX_ID, (name, value)
        assert value.isprintable(), (name, value)
    for name in ("text", "channel_username", "user_display_name", "error", "title", "code"):
        value = getattr(event, name, None)
        assert value is None or storable_text(value), (name, value)
    for name in ("sent_at", "edited_at", "up_to"):
        value = getattr(event, name, None)
        assert value is None or (isinstance(value, datetime) and value.tzinfo is not None)
    documents = [a.to_json() for a in getattr(event, "attachments", ())]
    documents += [getattr(event, n) for n in ("metadata", "detail") if hasattr(event, n)]
    for document in documents:
        # JSONB takes neither NaN nor \u0000; json.dumps recursion bounds the depth.
        text = json.dumps(document, ensure_ascii=False, allow_nan=False)
        assert storable_text(text)


def storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- the properties --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_sample_deliveries_with_odd_values_are_stored_or_refused_never_raised(name: str):
    kit = adapter_for(name)[1]

    @FUZZ
    @given(mutated_sample(kit))
    def check(body: bytes) -> None:
        parse_and_clean(name, body)

    check()


@pytest.mark.parametrize("name", ADAPTERS)
def test_deep_and_huge_values_a_parser_keeps_raw_are_cut_not_raised(name: str):
    """500 levels of nesting in a kept-raw object raised RecursionError in the sanitizer,
    which the webhook answered 503; the parser itself accepts about 990."""
    kit = adapter_for(name)[1]

    @FUZZ
    @given(planted_sample(kit))
    def check(body: bytes) -> None:
        parse_and_clean(name, body)

    check()


@pytest.mark.parametrize("name", ADAPTERS)
def test_arbitrary_json_and_bytes_are_stored_or_refused_never_raised(name: str):
    kit = adapter_for(name)[1]

    @FUZZ
    @given(any_body(kit))
    def check(body: bytes) -> None:
        parse_and_clean(name, body)

    check()


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_unchanged_samples_give_their_events_through_the_sanitizer(name: str):
    """The fuzz's baseline: the kits' real deliveries pass parse and clean whole."""
    kit = adapter_for(name)[1]
    for sample in [*kit.samples, *kit.status_samples]:
        events = parse_and_clean(name, sample.body)
        messages = sum(isinstance(e, InboundMessage) for e in events)
        statuses = sum(isinstance(e, StatusUpdate) for e in events)
        assert (messages, statuses) == (sample.messages, sample.statuses), sample.name
