"""Schemathesis hooks for tests/test_openapi.py, loaded through ``SCHEMATHESIS_HOOKS``.

JSON Schema cannot say which strings are valid cron expressions (five fields, each in its
range, due at least once in 8 years), so /openapi.json documents ``cron`` as a string of
``format: cron``. Left alone, schemathesis fills that format with any string, and its check that
valid requests are accepted fails on the API's right 422 for ``""``. This teaches it the format:
valid data is drawn from real schedules, and invalid data still comes from the rest of the schema.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

#: Valid five-field schedules of every field shape the API accepts (steps, ranges, lists, names).
CRONS = ("* * * * *", "*/5 * * * *", "0 9 * * 1-5", "30 2 1 * *", "15,45 */2 * * *", "0 0 29 2 *", "0 12 * jan,jul mon")

schemathesis.openapi.format("cron", st.sampled_from(CRONS))
