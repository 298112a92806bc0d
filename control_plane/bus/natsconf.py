"""nats-server configuration for a secured Infernet bus: accounts, the auth callout, TLS; and its credentials.

Layout (the same in the dev stack, the tests and deploy/nats): an application account (`INFERNET`) with
JetStream, whose static users are the control-plane replicas (one user each); the system account (`SYS`)
with one user per replica for server events and disconnecting revoked nodes; and an auth callout in
`INFERNET` that every other connection (the nodes) goes through. No user may connect anonymously.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.bus import jwt

APP_ACCOUNT = "INFERNET"
SYSTEM_ACCOUNT = "SYS"


_LETTERS = string.ascii_letters
_ALPHANUMERIC = string.ascii_letters + string.digits


def bus_password(length: int = 32) -> str:
    """A random password that nats-server reads back as a string when a config names it as `$VARIABLE`.

    The server parses a variable's value as a config value: one that starts with `-` or a digit, or looks like a
    number, size or date, is refused or becomes a number (then "interface {} is int64, not string"). Starting
    with a letter and using only letters and digits keeps it a string; 32 of them carry about 190 bits.
    """
    return secrets.choice(_LETTERS) + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length - 1))


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class BusCredentials:
    """Everything the server config and the control planes share: keep it secret (files mode 0600)."""

    #: Account nkey seed that signs the user JWTs the auth callout hands out; its public key is the `issuer`.
    issuer_seed: str
    #: One application-account identity per control-plane replica.
    control_planes: tuple[Identity, ...]
    #: One system-account identity per control-plane replica (events, disconnecting revoked nodes).
    systems: tuple[Identity, ...]
    account: str = APP_ACCOUNT

    @classmethod
    def generate(cls, replicas: int = 1) -> BusCredentials:
        return cls(
            issuer_seed=jwt.new_account_seed(),
            control_planes=tuple(Identity(f"control-plane-{i + 1}", bus_password()) for i in range(replicas)),
            systems=tuple(Identity(f"control-plane-{i + 1}-sys", bus_password()) for i in range(replicas)),
        )

    @property
    def issuer(self) -> str:
        return jwt.public_key(self.issuer_seed)

    def env(self, replica: int = 0) -> dict[str, str]:
        """The INFERNET_* settings replica number `replica` needs to use this bus."""
        cp, sys_ = self.control_planes[replica], self.systems[replica]
        return {"INFERNET_NATS_USER": cp.user, "INFERNET_NATS_PASSWORD": cp.password,
                "INFERNET_NATS_SYSTEM_USER": sys_.user, "INFERNET_NATS_SYSTEM_PASSWORD": sys_.password,
                "INFERNET_NATS_AUTH_SEED": self.issuer_seed, "INFERNET_NATS_ACCOUNT": self.account}


def deployment_env(creds: BusCredentials) -> dict[str, str]:
    """The variables deploy/nats/*.conf read (INFERNET_NATS_CP<i>_PASSWORD ...) and each replica's settings
    (INFERNET_NATS_CP<i>_* to map onto INFERNET_NATS_USER etc. of replica i)."""
    env = {"INFERNET_NATS_AUTH_ISSUER": creds.issuer, "INFERNET_NATS_AUTH_SEED": creds.issuer_seed}
    for i, (cp, system) in enumerate(zip(creds.control_planes, creds.systems), start=1):
        env[f"INFERNET_NATS_CP{i}_USER"] = cp.user
        env[f"INFERNET_NATS_CP{i}_PASSWORD"] = cp.password
        env[f"INFERNET_NATS_CP{i}_SYSTEM_USER"] = system.user
        env[f"INFERNET_NATS_CP{i}_SYSTEM_PASSWORD"] = system.password
    return env


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    #: CA to verify clients' certificates with (mutual TLS); None: clients authenticate by credentials only.
    ca: str | None = None


def auth_blocks(creds: BusCredentials) -> dict[str, Any]:
    """The accounts, system account and auth callout part of a server config."""
    return {
        "accounts": {
            creds.account: {"jetstream": "enabled",
                            "users": [{"user": i.user, "password": i.password} for i in creds.control_planes]},
            SYSTEM_ACCOUNT: {"users": [{"user": i.user, "password": i.password} for i in creds.systems]},
        },
        "system_account": SYSTEM_ACCOUNT,
        "authorization": {"auth_callout": {
            "issuer": creds.issuer,
            "auth_users": [i.user for i in (*creds.control_planes, *creds.systems)],
            "account": creds.account,
        }},
    }


@dataclass
class ServerConfig:
    """One nats-server's configuration (JSON is valid nats-server config syntax)."""

    creds: BusCredentials
    host: str = "127.0.0.1"
    port: int = 4222
    store_dir: str = "jetstream"
    server_name: str = "infernet-nats"
    http: str | None = None
    tls: TlsFiles | None = None
    cluster: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> dict[str, Any]:
        config: dict[str, Any] = {"server_name": self.server_name, "host": self.host, "port": self.port,
                                  "jetstream": {"store_dir": self.store_dir}}
        if self.http:
            config["http"] = self.http
        if self.tls is not None:
            tls: dict[str, Any] = {"cert_file": self.tls.cert, "key_file": self.tls.key}
            if self.tls.ca:
                tls["ca_file"] = self.tls.ca
            config["tls"] = tls
        if self.cluster:
            config["cluster"] = self.cluster
        config.update(auth_blocks(self.creds))
        config.update(self.extra)
        return config

    def write(self, path: Path) -> Path:
        """Write the config readable by its owner only (it holds passwords)."""
        write_private(path, json.dumps(self.render(), indent=2))
        return path


def write_private(path: Path, text: str) -> None:
    """Create or replace a file with mode 0600 before any secret is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
