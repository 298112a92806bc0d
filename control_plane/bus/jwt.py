"""NATS JWTs for auth callout: decode the server's request, encode user claims and the signed response.

A NATS JWT is `base64url(header).base64url(claims).base64url(ed25519 signature)`; the signature is made with
an nkey (the `nkeys` package), the header is `{"typ": "JWT", "alg": "ed25519-nkey"}`. Shapes follow
nats-io/jwt v2 (`nats.type` "user" / "authorization_response", `nats.version` 2); tests check them against a
real nats-server.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import msgspec
import nkeys

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
#: The account the auth callout places nodes in (server config: accounts.<name>).
VERSION = 2


class JwtError(ValueError):
    """A token that is not a well-formed NATS JWT."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_account_seed() -> str:
    """A fresh account nkey seed (`SA...`): the auth callout's issuer."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()


def keypair(seed: str) -> nkeys.KeyPair:
    try:
        return nkeys.from_seed(seed.encode())
    except Exception as exc:  # nkeys raises its own error types for every malformed seed
        raise JwtError(f"not an nkey seed: {type(exc).__name__}") from None


def public_key(seed: str) -> str:
    """The public key (`A...`) of an account seed, as the server config's `auth_callout.issuer` wants it."""
    return keypair(seed).public_key.decode()


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the auth request arrives on a subject only the server may publish)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("expected three dot-separated parts")
    try:
        claims = msgspec.json.decode(_unb64(parts[1]))
    except (ValueError, msgspec.DecodeError) as exc:
        raise JwtError(f"unreadable claims: {exc}") from None
    if not isinstance(claims, dict):
        raise JwtError("claims are not an object")
    return claims


def encode(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """Sign claims with an account nkey; sets `iss`, `iat` and `jti` as nats-io/jwt does."""
    body = dict(claims)
    body["iss"] = signer.public_key.decode()
    body["iat"] = int(time.time())
    body.pop("jti", None)
    digest = hashlib.sha256(msgspec.json.encode(body) + os.urandom(8)).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(msgspec.json.encode(_HEADER)) + "." + _b64(msgspec.json.encode(body))
    return head + "." + _b64(signer.sign(head.encode()))


def user_claims(user_nkey: str, *, account: str, name: str, pub_allow: list[str], sub_allow: list[str],
                expires_at: int | None = None) -> dict[str, Any]:
    """A user JWT's claims: placed in `account`, allowed only these subjects, may answer requests it got."""
    nats: dict[str, Any] = {
        "pub": {"allow": pub_allow}, "sub": {"allow": sub_allow},
        # Replies to requests this user received (assignment replies), one each, within the default 2 min.
        "resp": {"max": 1, "ttl": 0},
        "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": VERSION,
    }
    claims: dict[str, Any] = {"sub": user_nkey, "aud": account, "name": name, "nats": nats}
    if expires_at:
        claims["exp"] = int(expires_at)
    return claims


def response_claims(user_nkey: str, server_id: str, *, user_jwt: str | None = None,
                    error: str | None = None) -> dict[str, Any]:
    """The authorization response: for the server that asked (`aud`), about the user it named (`sub`)."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": VERSION}
    if user_jwt is not None:
        nats["jwt"] = user_jwt
    else:
        nats["error"] = error or "not authorized"
    return {"sub": user_nkey, "aud": server_id, "nats": nats}
