"""The JSON body's checks (``backend/api/payloads.py``): its nesting depth, measured over its
objects and lists only, and its strings checked for unpaired surrogates only when the raw body
could hold one (a ``\\u`` escape, a UTF-8 0xED byte, a UTF-16 or UTF-32 body)."""

from __future__ import annotations

import json
import random

import pytest

from backend.api import payloads
from tests.helpers import stored_jobs

MAX_DEPTH = 32  # the default MAX_JSON_DEPTH


def _nested(levels: int) -> object:
    """A value ``levels`` deep by the body's count (a scalar is one level)."""
    value: object = 1
    for level in range(levels - 1):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("levels", "status"), [(MAX_DEPTH, 202), (MAX_DEPTH + 1, 400)])
def test_a_body_nested_to_the_cap_is_taken_and_one_level_more_refused(client, levels, status):
    # The body itself is one level, and "args" a list: the nested value starts two levels down.
    response = client.post("/tasks/echo", json={"args": [_nested(levels - 2)]})
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 400:
        assert "nests deeper" in response.get_json()["error"]["message"]


def test_an_empty_list_or_object_at_the_cap_is_taken(client):
    response = client.post("/tasks/echo", json={"args": [_nested(MAX_DEPTH - 3), [], {}]})
    assert response.status_code == 202, response.get_data(as_text=True)


@pytest.mark.parametrize(
    "raw",
    [
        # A surrogate's own UTF-8 bytes: json.loads decodes them with surrogatepass, no escape seen.
        b'{"args": ["\xed\xa0\x80"]}',
        '{"args": ["\ud800"]}'.encode("utf-16", "surrogatepass"),
        '{"args": ["\udfff"]}'.encode("utf-32-le", "surrogatepass"),
    ],
)
def test_an_unpaired_surrogate_without_an_escape_is_still_400(client, raw):
    response = client.post("/tasks/echo", data=raw, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "not Unicode text" in response.get_json()["error"]["message"]
    assert stored_jobs(client) == []


def test_a_body_in_utf16_with_text_only_is_taken(client):
    raw = json.dumps({"args": ["é", "\U0001f600"]}, ensure_ascii=False).encode("utf-16")
    response = client.post("/tasks/echo", data=raw, content_type="application/json")
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["args"] == ["é", "\U0001f600"]


def _reference(value: object) -> tuple[int, str | None]:
    """The check as it was: every item visited, a scalar one level below its container."""
    deepest, not_text, stack = 0, None, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
            stack.extend((key, level) for key in item)
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
        elif isinstance(item, str) and not_text is None and not payloads._is_text(item):
            not_text = item
    return deepest, not_text


def test_depth_and_the_first_string_not_text_agree_with_a_walk_of_every_item():
    rnd = random.Random(17)

    def value(level: int) -> object:
        pick = rnd.random()
        if level > 6 or pick < 0.3:
            return rnd.choice([1, 2.5, True, None, "a", "", "\ud800x", "\U0001f600"])
        if pick < 0.6:
            return {rnd.choice(["a", "b", "c", "\udc80"]): value(level + 1) for _ in range(rnd.randint(0, 4))}
        return [value(level + 1) for _ in range(rnd.randint(0, 4))]

    for _ in range(3000):
        body = value(0)
        depth, not_text = _reference(body)
        assert payloads._depth(body) == depth
        assert payloads._first_not_text(body) == not_text
        if not_text is not None:
            # However the body was sent, the raw bytes make the strings be checked.
            for raw in (
                json.dumps(body).encode(),
                json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                json.dumps(body, ensure_ascii=False).encode("utf-16", "surrogatepass"),
            ):
                assert payloads._may_hold_surrogates(raw)
