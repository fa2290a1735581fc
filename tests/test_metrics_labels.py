"""/metrics labels stay bounded whatever methods and paths clients send."""

from __future__ import annotations

import random
import string


def _lines(client) -> int:
    response = client.get("/metrics")
    assert response.status_code == 200
    return len(response.get_data(as_text=True).splitlines())


def _random_word(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(size))


def test_random_methods_and_unknown_paths_add_a_bounded_number_of_metric_lines(client):
    rng = random.Random(10)
    # Once each kind of request was seen, the labels it needs exist.
    client.open("/no/such/path", method="BREW")
    client.open("/tasks", method="BREW")
    client.get("/no/such/path")
    before = _lines(client)

    statuses = set()
    for _ in range(200):
        method = _random_word(rng, rng.randint(3, 12))
        path = "/" + "/".join(_random_word(rng, 6).lower() for _ in range(rng.randint(1, 3)))
        statuses.add(client.open(path, method=method).status_code)
        statuses.add(client.open("/jobs", method=method).status_code)
        statuses.add(client.get(path + "/" + _random_word(rng, 4)).status_code)

    after = _lines(client)
    text = client.get("/metrics").get_data(as_text=True)
    assert after - before < 50, f"/metrics grew from {before} to {after} lines"
    assert 'method="other"' in text and 'endpoint="unmatched"' in text
    assert statuses <= {404, 405}
