"""The housekeeping pass (backend/recovery/housekeeping.py) and its settings: what goes on without Redis."""

from __future__ import annotations

import pytest

from backend.api.context import services
from backend.app import create_app
from backend.core.settings import SettingError, Settings
from tests.test_retention import age, ended


@pytest.fixture
def settings(settings):
    # The tests run the housekeeping pass themselves, at the moment they choose.
    settings["HOUSEKEEPING_INTERVAL"] = 0
    return settings


def test_retention_and_the_history_go_on_while_redis_is_down(settings):
    # Given an API with an old COMPLETED job, whose Redis then goes away (the store is up)
    app = create_app(settings)
    client = app.test_client()
    job_id = ended(client, "COMPLETED")
    age(app, [job_id], days=40)
    pool = services(app).redis.connection_pool
    pool.reset()
    pool.connection_kwargs["port"] = 1  # nothing listens there: connection refused

    # When the housekeeping pass runs
    done = services(app).housekeeping.run_once()

    # Then the store-only steps ran (the old job pruned, the history rolled), the queue sampling,
    # which needs Redis, waits for it
    assert done is not None and done["retention"] == {"COMPLETED": 1}, done
    assert done["history.roll_up"] >= 1 and "history.prune" in done
    assert "history.sample_queues" not in done
    assert client.get(f"/jobs/{job_id}").status_code == 404


@pytest.mark.one_pass("settings only: no store")
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HISTORY_DAYS", "0"),
        ("HISTORY_DAYS", "-5"),
        ("HISTORY_DAYS", "3651"),
        ("HISTORY_DAYS", "100000000"),
        ("HOUSEKEEPING_INTERVAL", "nan"),
        ("HOUSEKEEPING_INTERVAL", "inf"),
        ("HOUSEKEEPING_INTERVAL", "-1"),
    ],
)
def test_history_days_and_housekeeping_interval_out_of_range_are_refused_at_start(name, value):
    # HISTORY_DAYS=0 would roll nothing and prune every row; 100000000 overflows timedelta on every
    # pass; HOUSEKEEPING_INTERVAL=nan turned the thread (and retention) off without a word, inf
    # overflowed Event.wait after the first pass
    with pytest.raises(SettingError) as refused:
        Settings.load({name: value}, environ={})
    assert name in str(refused.value)


@pytest.mark.one_pass("settings only: no store")
def test_history_days_and_housekeeping_interval_in_range_are_taken():
    taken = (("HISTORY_DAYS", "1", 1), ("HISTORY_DAYS", "3650", 3650),
             ("HOUSEKEEPING_INTERVAL", "0", 0.0), ("HOUSEKEEPING_INTERVAL", "2.5", 2.5))  # fmt: skip
    for name, value, parsed in taken:
        assert getattr(Settings.load({name: value}, environ={}), name.lower()) == parsed
