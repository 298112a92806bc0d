"""The webhook address filter: every IPv6 form that carries a non-global IPv4 address is refused, at submission
(literal hosts) and by `is_public` (which delivery applies to every resolved address)."""

from __future__ import annotations

import pytest

from control_plane.errors import BadRequest
from control_plane.webhooks.targets import check_url, is_public

REFUSED = [
    "127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "::", "fe80::1", "fc00::1",
    "::ffff:127.0.0.1",            # IPv4-mapped loopback
    "::127.0.0.1", "::a9fe:a9fe",  # IPv4-compatible loopback / metadata
    "64:ff9b::7f00:1",             # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",          # NAT64 of the cloud metadata address
    "64:ff9b::a00:1",              # NAT64 of 10.0.0.1
    "64:ff9b:1::7f00:1",           # NAT64 local-use prefix
    "2002:7f00:1::1",              # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",           # 6to4 of 169.254.169.254
    "2001:0:7f00:1::1",            # Teredo, server 127.0.0.1
    "2001:0:808:808:0:0:80ff:fffe",  # Teredo, client (obfuscated) 127.0.0.1
]
PUBLIC = ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_addresses_and_their_ipv6_forms_are_not_public(address):
    assert is_public(address) is False


@pytest.mark.parametrize("address", PUBLIC)
def test_global_addresses_and_their_ipv6_forms_are_public(address):
    assert is_public(address) is True


@pytest.mark.parametrize("host", [f"[{a}]" if ":" in a else a for a in REFUSED]
                         + ["127.1", "0x7f.0.0.1", "2130706433", "localhost", "api.localhost"])
def test_literal_non_public_targets_are_refused_at_submission(host):
    with pytest.raises(BadRequest) as exc:
        check_url(f"http://{host}/hook", allow_private=False)
    assert exc.value.param == "webhook_url"
    assert check_url(f"http://{host}/hook", allow_private=True) == f"http://{host}/hook"


@pytest.mark.parametrize("host", ["[2606:4700:4700::1111]", "8.8.8.8", "hooks.example.com", "[64:ff9b::808:808]"])
def test_public_targets_pass_submission(host):
    assert check_url(f"https://{host}/hook", allow_private=False) == f"https://{host}/hook"
