"""Webhook signatures, target checks and backoff (pure)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from control_plane.errors import BadRequest
from control_plane.webhooks import signing
from control_plane.webhooks.targets import TargetRefused, check_url, is_public, resolve
from control_plane.webhooks.worker import backoff_secs


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"type":"job.completed"}'
    header = signing.sign("whsec_x", body, 1_700_000_000)
    expected = hmac.new(b"whsec_x", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert signing.verify("whsec_x", body, header, now=1_700_000_100)
    assert not signing.verify("whsec_x", body, header, now=1_700_000_000 + signing.TOLERANCE_SECS + 1)
    assert not signing.verify("whsec_y", body, header, now=1_700_000_000)
    assert not signing.verify("whsec_x", body + b"x", header, now=1_700_000_000)
    assert not signing.verify("whsec_x", body, "garbage", now=1_700_000_000)
    assert signing.new_secret().startswith("whsec_") and signing.new_secret() != signing.new_secret()


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("10.0.0.1", False),
    ("192.168.1.1", False), ("172.16.0.1", False), ("169.254.169.254", False), ("::1", False), ("fc00::1", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("::ffff:127.0.0.1", False),
])
def test_public_addresses(address, public):
    assert is_public(address) is public


def test_check_url():
    assert check_url("https://hooks.example.com/x?y=1", allow_private=False)
    for bad in ("http://127.0.0.1/x", "http://localhost:8080/", "http://a.localhost/", "ftp://example.com/",
                "https://user:pw@example.com/", "//example.com", "http://example.com:99999/", "https://" + "a" * 3000):
        with pytest.raises(BadRequest):
            check_url(bad, allow_private=False)
    assert check_url("http://127.0.0.1:9000/x", allow_private=True)


async def test_resolution_refuses_names_that_point_inside():
    with pytest.raises(TargetRefused):
        await resolve("localhost", 80, allow_private=False)
    assert await resolve("localhost", 80, allow_private=True) in ("127.0.0.1", "::1")


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_secs(n, 5.0, 60.0) for n in range(1, 7)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
