"""The harness's API hosts: a port another program takes between ``free_port()`` and the bind
(the other pass of ``make test``, or a client's ephemeral port) moves the host to a fresh port,
before anything was given its URL, instead of failing the scenario.
"""

from __future__ import annotations

import socket

import pytest

from tests.chaos.api_hosts import ApiHost


@pytest.mark.one_pass(reason="the test harness's ports; no store involved")
@pytest.mark.timeout(120)
def test_a_host_whose_port_was_taken_before_its_first_bind_comes_up_on_another(cluster):
    cluster.start_redis()
    host = ApiHost(cluster, "taken")
    taken = host.port
    with socket.socket() as squatter:
        # Given another program listening on the port the host was given
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        # When the host starts
        host.start()
        # Then it answers on another port, and its client and URL name that port
        assert host.port != taken
        assert host.base_url == f"http://127.0.0.1:{host.port}"
        assert host.api.get("/monitoring/health").status_code in (200, 503)
        assert len(host.starts) == 1
        assert "is in use by another program" in host.output()
