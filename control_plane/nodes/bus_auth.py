"""The bus's auth callout: nats-server asks who a connecting node is; the answer is a user JWT scoped to it.

Every connection that is not a control-plane replica goes through here. The node presents its registration
token; one replica (a queue group) checks it against the nodes table and answers with a user JWT, signed with
the account nkey the server trusts, that places the connection in the application account with the
permissions of that node only (control_plane/bus/permissions.py). Anything else gets a refusal, which the
server turns into "Authorization Violation".
"""

from __future__ import annotations

import structlog

from control_plane.bus import Bus, jwt
from control_plane.bus.permissions import node_permissions
from control_plane.nodes.service import authenticate_token
from control_plane.store import Database, StoreError

log = structlog.get_logger("control_plane.bus_auth")

#: Subject nats-server sends authorization requests to, in the callout account.
AUTH_REQUEST_SUBJECT = "$SYS.REQ.USER.AUTH"
#: Queue group: one replica answers each request.
AUTH_QUEUE = "infernet-auth-callout"


class NodeBusAuth:
    """Answers `$SYS.REQ.USER.AUTH` for node connections."""

    def __init__(self, db: Database, bus: Bus, *, issuer_seed: str, account: str) -> None:
        self._db = db
        self._bus = bus
        self._signer = jwt.keypair(issuer_seed)
        self._account = account
        self.issuer = self._signer.public_key.decode()

    async def start(self) -> None:
        await self._bus.subscribe(AUTH_REQUEST_SUBJECT, self._on_request, queue=AUTH_QUEUE)

    async def _on_request(self, msg) -> None:
        try:
            claims = jwt.decode_claims(msg.data.decode("ascii", errors="replace"))
            request = claims["nats"]
            user_nkey = request["user_nkey"]
            server_id = request["server_id"]["id"]
            options = request.get("connect_opts") or {}
        except (jwt.JwtError, KeyError, TypeError) as exc:
            log.warning("malformed_auth_request", error=str(exc))
            return
        token = options.get("auth_token") or options.get("pass") or ""
        host = (request.get("client_info") or {}).get("host")
        try:
            login = await authenticate_token(self._db, token)
        except StoreError as exc:
            log.warning("node_auth_unavailable", error=str(exc), host=host,
                        detail="PostgreSQL did not answer; the node retries")
            await self._answer(msg, jwt.response_claims(user_nkey, server_id, error="token check unavailable"))
            return
        if login.refusal is not None:
            log.warning("node_auth_refused", node_id=login.node_id, reason=login.refusal, host=host)
            await self._answer(msg, jwt.response_claims(user_nkey, server_id, error=login.refusal))
            return
        perms = node_permissions(login.node_id)
        user = jwt.encode(jwt.user_claims(user_nkey, account=self._account, name=login.node_id,
                                          pub_allow=list(perms.publish), sub_allow=list(perms.subscribe)),
                          self._signer)
        log.info("node_auth_accepted", node_id=login.node_id, name=login.name, host=host)
        await self._answer(msg, jwt.response_claims(user_nkey, server_id, user_jwt=user))

    async def _answer(self, msg, claims: dict) -> None:
        try:
            await msg.respond(jwt.encode(claims, self._signer).encode())
        except Exception as exc:  # the connection dropped: the server times the request out and refuses
            log.warning("auth_answer_failed", error=str(exc) or type(exc).__name__)
