"""The whole stack over TLS, with a CA this test generates: the control plane and the node verify the server's
certificate; a client that does not trust the CA, or does not speak TLS, gets nowhere."""

from __future__ import annotations

import ssl

import nats
import pytest
import trustme

from control_plane.bus.natsconf import TlsFiles
from tests.fixtures.nats import NatsServer
from tests.harness import Stack
from tests.security.rogue import GENUINE_TEXT, MODEL


@pytest.fixture
def tls_server(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = NatsServer(tmp_path / "nats", tls=TlsFiles(str(cert_file), str(key_file)), ca_file=str(ca_file)).start()
    yield server, str(ca_file)
    server.stop()


async def test_a_job_runs_end_to_end_over_tls(tls_server, database_url, double):
    server, ca_file = tls_server
    assert server.url.startswith("tls://")
    double.stall_after = None
    stack = await Stack(server.url, database_url).start()
    try:
        assert stack.settings.nats_tls_ca == ca_file
        key = await stack.key("alice")
        node = await stack.add_node(double.url, nats_tls_ca=ca_file)
        await stack.wait_nodes_serving(MODEL)
        job = await stack.wait_job(key, (await stack.submit(key, model=MODEL)).json()["id"])
        assert job["status"] == "completed" and job["node_id"] == node.node_id
        assert job["result"]["content"] == GENUINE_TEXT
    finally:
        await stack.stop()


async def test_clients_that_do_not_trust_the_ca_or_skip_tls_are_refused(tls_server, database_url):
    server, ca_file = tls_server
    stack = await Stack(server.url, database_url).start()  # a control plane answers the auth callout
    try:
        await _refused(server, ca_file)
    finally:
        await stack.stop()


async def _refused(server, ca_file: str) -> None:
    untrusting = ssl.create_default_context()  # the system CAs: they never signed the test CA
    with pytest.raises(Exception):
        nc = await nats.connect(server.url, tls=untrusting, allow_reconnect=False, connect_timeout=5)
        await nc.close()
    plain = server.url.replace("tls://", "nats://")
    with pytest.raises(Exception):
        nc = await nats.connect(plain, allow_reconnect=False, connect_timeout=5)
        await nc.close()
    trusting = ssl.create_default_context(cafile=ca_file)  # and with trust, credentials are still needed
    with pytest.raises(Exception, match="Authorization Violation"):
        nc = await nats.connect(server.public_url, tls=trusting, allow_reconnect=False, connect_timeout=5)
        await nc.close()
