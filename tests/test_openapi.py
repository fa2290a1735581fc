"""Schemathesis against the running app: no 500, and answers match /openapi.json."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings


def test_the_api_matches_its_openapi_document(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 25
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate()

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_document_names_every_route(app):
    documented = set(app.test_client().get("/openapi.json").get_json()["paths"])
    routes = {
        rule.rule.replace("<", "{").replace(">", "}")
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith(("/rq", "/static", "/openapi.json", "/dashboard"))
    }
    assert routes == documented
