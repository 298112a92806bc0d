"""The test fixtures themselves: real NATS (single, restarted, clustered), per-test databases, managed processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import nats
import psycopg
import pytest
from nats.js.api import StorageType

from tests.fixtures.nats import NatsServer, fresh_nats
from tests.fixtures.ports import free_port, free_ports, port_open
from tests.fixtures.postgres import TEMPLATE, url_for
from tests.fixtures.processes import ProcessSet
from tests.fixtures.waiting import wait_until, wait_until_sync

NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)


def _gone(pid: int) -> bool:
    """No such process, or a zombie no one of ours has to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


# -- waiting and ports ---------------------------------------------------------------------------


async def test_wait_until_returns_the_value_and_accepts_async_predicates():
    calls = []

    async def third_time():
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await wait_until(third_time, timeout=10) == 3
    assert await wait_until(lambda: "yes") == "yes"


async def test_wait_until_fails_with_the_message_and_last_value():
    with pytest.raises(AssertionError, match=r"never ready .*last value: 0"):
        await wait_until(lambda: 0, timeout=0.05, message="never ready")
    with pytest.raises(AssertionError, match="ValueError"):
        await wait_until(lambda: int("x"), timeout=0.05, ignore=(ValueError,))
    with pytest.raises(AssertionError, match="never sync"):
        wait_until_sync(lambda: [], timeout=0.05, message="never sync")


def test_free_ports_are_distinct_and_closed():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert not port_open(free_port())


# -- NATS ----------------------------------------------------------------------------------------


async def test_jetstream_publish_and_pull(nats_url):
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="FIXTURE_PULL", subjects=["fixture.pull.>"])
        ack = await js.publish("fixture.pull.a", b"hello")
        assert ack.stream == "FIXTURE_PULL" and ack.seq == 1
        sub = await js.pull_subscribe("fixture.pull.>", durable="reader")
        [msg] = await sub.fetch(1, timeout=10)
        assert msg.data == b"hello"
        await msg.ack()
    finally:
        await nc.close()


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_starts_without_streams(nats_url, run):
    """Whichever of the two runs second proves the first one's stream was deleted."""
    nc = await nats.connect(nats_url)
    try:
        jsm = nc.jsm()
        assert await jsm.streams_info() == []
        await jsm.add_stream(name="FIXTURE_LEFTOVER", subjects=["fixture.leftover"])
    finally:
        await nc.close()


async def test_restart_keeps_durable_streams_and_clients_reconnect(nats_server, nats_url):
    events = {"disconnected": 0, "reconnected": 0}

    async def disconnected():
        events["disconnected"] += 1

    async def reconnected():
        events["reconnected"] += 1

    nc = await nats.connect(nats_url, reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                            disconnected_cb=disconnected, reconnected_cb=reconnected)
    try:
        js = nc.jetstream()
        await js.add_stream(name="FIXTURE_DURABLE", subjects=["fixture.durable"], storage=StorageType.FILE)
        sub = await js.pull_subscribe("fixture.durable", durable="survivor")
        for i in range(3):
            await js.publish("fixture.durable", f"m{i}".encode())
        [first] = await sub.fetch(1, timeout=10)
        await first.ack()

        await asyncio.to_thread(nats_server.restart)  # same port, same store; don't block the loop
        assert nats_server.url == nats_url
        await wait_until(lambda: events["reconnected"] >= 1, timeout=30, message="client never reconnected")
        assert events["disconnected"] >= 1

        info = await js.stream_info("FIXTURE_DURABLE")
        assert info.state.messages == 3
        await wait_until(lambda: js.publish("fixture.durable", b"m3"), timeout=30, ignore=NATS_ERRORS,
                         message="publish after restart never acknowledged")
        rest = await wait_until(lambda: sub.fetch(3, timeout=2), timeout=30, ignore=NATS_ERRORS,
                                message="durable consumer never delivered after restart")
        # The durable consumer remembered its ack of m0 across the restart.
        assert [m.data for m in rest] == [b"m1", b"m2", b"m3"]
    finally:
        await nc.close()


async def test_a_killed_session_server_is_revived_for_the_next_test(nats_server, nats_url):
    nats_server.kill()
    assert not nats_server.running and not port_open(nats_server.port)
    assert await fresh_nats(nats_server) == nats_url  # what the `nats_url` fixture does
    assert nats_server.running
    nc = await nats.connect(nats_url)
    await nc.close()


async def test_a_three_node_cluster_stream_survives_a_killed_member(nats_cluster):
    cluster = nats_cluster(3)
    assert len(cluster.urls) == 3 and cluster.url == ",".join(cluster.urls)
    nc = await nats.connect(servers=cluster.urls, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=5)
        quick = nc.jsm(timeout=1)  # polls must not sit out a 5 s timeout while a member is down
        await wait_until(lambda: js.add_stream(name="FIXTURE_R3", subjects=["fixture.r3"], num_replicas=3),
                         timeout=30, ignore=NATS_ERRORS, message="replicated stream never created")

        async def has_leader():
            # add_stream returns before the stream's raft group elects a leader; until then a publish gets
            # no response (NoStreamResponseError).
            return (await quick.stream_info("FIXTURE_R3")).cluster.leader
        await wait_until(has_leader, timeout=30, ignore=NATS_ERRORS, message="replicated stream never got a leader")
        for i in range(5):
            await js.publish("fixture.r3", f"m{i}".encode())
        info = await js.stream_info("FIXTURE_R3")
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
        # Kill a member leading nothing (killing a leader works too, but a raft election takes 5-10 s),
        # the one this client is connected to when it can: the client must move over.
        leaders = {info.cluster.leader, cluster.meta_leader().name}
        followers = [s for s in cluster.servers if s.name not in leaders]
        victim = next((s for s in followers if s.port == nc.connected_url.port), followers[0])
        victim.kill()

        await wait_until(lambda: js.publish("fixture.r3", b"m5"), timeout=60, ignore=NATS_ERRORS,
                         message="publish with a member down never acknowledged")
        info = await quick.stream_info("FIXTURE_R3")
        assert info.state.messages == 6
        assert [r.current for r in info.cluster.replicas if r.name == victim.name] in ([False], [])

        await asyncio.to_thread(victim.start)  # back on the same ports and store

        async def all_current():
            info = await quick.stream_info("FIXTURE_R3")
            replicas = info.cluster.replicas or []
            return info.state.messages == 6 and len(replicas) == 2 and all(r.current for r in replicas)

        await wait_until(all_current, timeout=60, ignore=NATS_ERRORS, message="restarted member never caught up")
    finally:
        await nc.close()


def test_nats_server_reports_an_early_exit(tmp_path):
    blocker = NatsServer(tmp_path / "a").start()
    try:
        clash = NatsServer(tmp_path / "b", port=blocker.port, http_port=free_port())
        with pytest.raises(AssertionError, match="exited"):
            clash.start()
        assert not clash.running
    finally:
        blocker.stop()
    assert blocker.proc.returncode is not None


# -- PostgreSQL ----------------------------------------------------------------------------------


def test_database_is_migrated_and_not_the_template(database_url):
    with psycopg.connect(database_url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        assert {"jobs", "accounts", "schema_migrations"} <= tables
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1
        name = conn.execute("SELECT current_database()").fetchone()[0]
    assert name.startswith("t_") and name != TEMPLATE
    assert psycopg.conninfo.conninfo_to_dict(database_url)["dbname"] == name


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_its_own_empty_database(database_url, run):
    """Each run checks its database is untouched before writing, so the order does not matter."""
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('fixture_probe')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0
        conn.execute("CREATE TABLE fixture_probe (run int)")
        conn.execute("INSERT INTO fixture_probe VALUES (%s)", (run,))


async def test_database_url_works_with_async_psycopg(database_url):
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)


def test_databases_are_dropped_after_use(pg_server, pg_admin_url):
    url = pg_server.create_database()
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    assert name in pg_server.databases()
    with psycopg.connect(url):  # still connected: the drop must force it out
        pg_server.drop_database(name)
    assert name not in pg_server.databases()
    with psycopg.connect(pg_admin_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "postgres"


def test_url_for_replaces_only_the_database():
    url = url_for("postgresql://postgres:@/postgres?host=/tmp/pg%20dir/pg", "t_1")
    assert psycopg.conninfo.conninfo_to_dict(url) == {"user": "postgres", "dbname": "t_1", "host": "/tmp/pg dir/pg"}
    url = url_for("host=db.example port=5433 user=u password='p@ss word' dbname=x sslmode=disable", "y z")
    assert psycopg.conninfo.conninfo_to_dict(url) == {
        "host": "db.example", "port": "5433", "user": "u", "password": "p@ss word", "dbname": "y z",
        "sslmode": "disable"}


# -- processes -----------------------------------------------------------------------------------


def test_managed_process_log_wait_then_kill_reaps_its_whole_group(processes):
    proc = processes.start(_script("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("child", child.pid)
        print("ready", 42)
        time.sleep(600)
    """), name="sleeper")
    child = int(proc.wait_for_log(r"^child (\d+)$", timeout=30).group(1))
    assert proc.wait_for_log(r"^ready (\d+)$", timeout=30).group(1) == "42"
    assert proc.running and proc.returncode is None
    assert proc.kill() == -9
    assert proc.returncode == -9
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)  # already reaped
    wait_until_sync(lambda: _gone(child), timeout=30, message="grandchild survived the group kill")
    assert "ready 42" in proc.log_text()


async def test_terminate_is_graceful_and_env_reaches_the_child(processes):
    proc = processes.start(_script("""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("bye", os.environ["FIXTURE_GREETING"]), sys.exit(0)))
        print("unbuffered" if os.environ.get("PYTHONUNBUFFERED") == "1" else "buffered")
        print("up")
        while True:
            time.sleep(1)
    """), env={"FIXTURE_GREETING": "hello"}, name="graceful")
    await proc.wait_for_log_async("^up$", timeout=30)
    assert "unbuffered" in proc.log_text()
    assert proc.terminate(timeout=30) == 0
    assert proc.wait_for_log("^bye hello$", from_start=True).group(0) == "bye hello"

    proc.start()  # the same argv again; waits only look at what this run writes
    await proc.wait_for_log_async("^up$", timeout=30)
    assert proc.log_text().count("up\n") == 2
    assert proc.kill() == -9


def test_wait_for_log_fails_fast_with_the_log_when_the_process_dies(processes):
    proc = processes.start(_script("""
        import sys
        print("something went wrong")
        sys.exit(3)
    """), name="crasher")
    with pytest.raises(AssertionError, match=r"(?s)exited before logging.*exited with 3.*something went wrong"):
        proc.wait_for_log("never printed", timeout=60)
    assert proc.wait_exit(timeout=30) == 3


def test_wait_for_port_and_teardown_kills_everything(tmp_path):
    port = free_port()
    procs = ProcessSet(tmp_path)
    server = procs.start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], name="http")
    server.wait_for_port(port, timeout=30)
    procs.close()
    assert server.returncode == -9 and not port_open(port)


async def test_a_process_that_does_not_exit_shows_where_it_is_stuck(processes):
    """The failure of an exit wait is written at the deadline, with the stack of each of the process's threads."""
    proc = processes.start(_script("""
        import faulthandler, signal, time
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        def stuck_here():
            print("up", flush=True)
            time.sleep(600)
        stuck_here()
    """), name="stuck", stack_signal=signal.SIGUSR1)
    await proc.wait_for_log_async("^up$", timeout=30)
    with pytest.raises(AssertionError, match=r"(?s)stuck still running.*line \d+ in stuck_here"):
        await proc.wait_exit_async(timeout=1)
    assert proc.running  # asked for its stacks, not stopped
