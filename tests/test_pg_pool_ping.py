"""The PostgreSQL pool checks each connection as it is taken (``pool_pre_ping``): after the
server's processes all ended (a restart), the next requests are served on new connections, on
the paths that use a raw DB-API connection too (the submission's writer, the poll's read)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from backend.api.context import services
from backend.app import create_app


def test_requests_after_every_server_process_of_the_store_ended_are_served(settings, postgres_url, postgres_server):
    # Given an API on PostgreSQL whose pool holds connections handed back a moment ago
    app = create_app({**settings, "DATABASE_URL": postgres_url})
    client = app.test_client()
    try:
        job = client.post("/tasks/add", json={"args": [1, 2]}).get_json()
        assert client.get(f"/jobs/{job['job_id']}").status_code == 200
        # When every server process of its database ends (as in a restart: pg_ctl restart -m immediate)
        database = make_url(postgres_url).database
        postgres_server.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        # Then the next submissions and polls are served, none answered 503
        codes = [client.post("/tasks/add", json={"args": [i, i]}).status_code for i in range(4)]
        codes += [client.get(f"/jobs/{job['job_id']}").status_code for _ in range(2)]
        assert codes == [202] * 4 + [200] * 2
    finally:
        services(app).engine.dispose()
