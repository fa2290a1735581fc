"""The page cursor codec of backend/core/cursors.py: pure functions, no Redis, no store.

A cursor is the last row's ``created_at`` in microseconds since the epoch, a dot, and its id;
it is not signed, so what decode refuses is exactly what CURSOR_PATTERN (and /openapi.json) refuses.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from backend.core.cursors import CURSOR_PATTERN, decode_cursor, encode_cursor
from backend.core.errors import ValidationFailed


def row(created_at: datetime, id: str = "job_0123abcd") -> SimpleNamespace:
    """What the lists hand to encode_cursor: anything with ``created_at`` and ``id``."""
    return SimpleNamespace(created_at=created_at, id=id)


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2026, 11, 29, 13, 27, 11, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_a_cursor_decodes_to_the_time_and_id_it_was_made_of(created_at):
    # Given the cursor of a row
    cursor = encode_cursor(row(created_at, "sch_A-b_9"))

    # When it is decoded
    decoded = decode_cursor(cursor)

    # Then it gives back the row's time, to the microsecond, and its id; and the published
    # pattern accepts it
    assert decoded == (created_at, "sch_A-b_9")
    assert re.fullmatch(CURSOR_PATTERN, cursor)


def test_a_naive_time_is_read_as_utc():
    # SQLite hands back naive datetimes; the store writes them in UTC.
    naive = datetime(2026, 1, 2, 3, 4, 5, 678901)

    assert encode_cursor(row(naive)) == encode_cursor(row(naive.replace(tzinfo=UTC)))
    assert decode_cursor(encode_cursor(row(naive)))[0] == naive.replace(tzinfo=UTC)


def test_a_time_in_another_zone_gives_the_cursor_of_the_same_instant():
    instant = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    same_instant = instant.astimezone(timezone(timedelta(hours=2)))

    assert encode_cursor(row(same_instant)) == encode_cursor(row(instant))


def test_the_encoding_is_microseconds_a_dot_and_the_id():
    created_at = datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)

    assert encode_cursor(row(created_at, "job_x")) == "1000005.job_x"


@pytest.mark.parametrize(
    "tampered",
    [
        "17648a2031123456.job_1",  # a letter in the time
        "-1764820311123456.job_1",  # a sign
        "+1764820311123456.job_1",
        "1764820311123456.job 1",  # a space in the id
        "1764820311123456.job/1",
        "1764820311123456.job_1'--",
        "1764820311123456.job.1",  # a second dot
        "1764820311123456.jöb_1",  # not ASCII
        "１７６４.job_1",  # digits of another script: int() would read them, the pattern does not
        " 1764820311123456.job_1",
        "1764820311123456.job_1 ",
    ],
)
def test_a_tampered_cursor_is_refused_naming_it(tampered):
    with pytest.raises(ValidationFailed) as refused:
        decode_cursor(tampered)

    assert refused.value.status == 422
    assert repr(tampered) in refused.value.message


@pytest.mark.parametrize("wrong", ["", ".", "1764820311123456", "1764820311123456.", ".job_1", "job_1.1764820311"])
def test_a_cursor_of_the_wrong_shape_is_refused(wrong):
    with pytest.raises(ValidationFailed, match="cursor is not one this API gave out"):
        decode_cursor(wrong)


def test_the_longest_parts_are_accepted_and_one_more_character_is_refused():
    longest_time, longest_id = "9" * 17, "a" * 64

    # 17 digits are about 3,170 years of microseconds: every time up to the year 5138 fits
    assert decode_cursor(f"{longest_time}.{longest_id}")[1] == longest_id
    for over_long in (f"{longest_time}9.{longest_id}", f"{longest_time}.{longest_id}a"):
        with pytest.raises(ValidationFailed):
            decode_cursor(over_long)


def test_a_huge_cursor_is_refused_with_only_its_start_in_the_message():
    huge = "1" * 100_000

    with pytest.raises(ValidationFailed) as refused:
        decode_cursor(huge)

    # The message quotes 100 characters: an error answer never echoes a megabyte back
    assert repr("1" * 100) in refused.value.message
    assert len(refused.value.message) < 200


def test_a_final_newline_passes_as_the_published_pattern_lets_it():
    # JSON Schema validators read the pattern with re.search semantics, where $ matches before
    # a final newline; decode agrees with what /openapi.json promises.
    assert decode_cursor("1000005.job_x\n") == (datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC), "job_x")
    assert re.match(CURSOR_PATTERN, "1000005.job_x\n")
