"""Console pages of a GPU operator: the nodes registered to their account, live, with earnings; drain one."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from control_plane.console import views
from control_plane.console.guard import ConsoleUser, require_csrf
from control_plane.console.pages import redirect, render
from control_plane.nodes.service import drain_node
from control_plane.runtime import Runtime


def node_command(runtime: Runtime, token: str = "<the node's token>") -> str:
    """The command that starts a node agent against this network."""
    return (f"INFERNET_NATS_URL={runtime.settings.nats_url.split(',')[0]} \\\n"
            f"INFERNET_NODE_TOKEN={token} \\\ninfernet-node start")


async def operator_context(runtime: Runtime, user: ConsoleUser) -> dict:
    rows = await views.operator_nodes(runtime, user.principal.account_id)
    return {"nodes": rows, "can_drain": True, "online": sum(1 for r in rows if r.state == "online"),
            "earnings": sum(r.earnings or 0 for r in rows), "jobs_served": sum(r.jobs_served or 0 for r in rows)}


class OperatorController(Controller):
    path = "/console"

    @get("/nodes")
    async def nodes(self, request: Request, user: NamedDependency[ConsoleUser],
                    runtime: NamedDependency[Runtime]) -> object:
        return render(request, user, "nodes.html", active="nodes", command=node_command(runtime),
                      account=user.account_name, chart=await views.earnings_chart(runtime, user.principal.account_id),
                      **await operator_context(runtime, user))

    @post("/nodes/{node_id:str}/drain")
    async def drain(self, request: Request, node_id: FromPath[str], user: NamedDependency[ConsoleUser],
                    runtime: NamedDependency[Runtime]) -> object:
        """Admins drain any node, operators their own: the API's rule (nodes.service.drain_node)."""
        await require_csrf(request, user.csrf)
        await drain_node(runtime.db, runtime.registry, runtime.bus, user.principal, node_id)
        back = request.query_params.get("back")
        return redirect("/console/admin/nodes" if back == "admin" else "/console/nodes")
