"""``lockd``: the daemon (``serve``) and a thin client of its admin socket.

Every command: parse, one admin request, render. ``--json`` prints one JSON document on stdout. Errors are
one line on stderr; exit code 2 for anything the caller got wrong or can retry (bad name, lease busy, no such
lease), 1 for a failure of the store or the daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from typing import Annotated, Any

import typer

from lockd.errors import DaemonUnavailable, LockdError, ProtocolError, first_lockd_error, from_wire

app = typer.Typer(help="lockd: leases in the distributed store, for libvirt/QEMU hosts.",
                  pretty_exceptions_show_locals=False, no_args_is_help=True, add_completion=False)

ConfigOption = Annotated[str | None, typer.Option("--config", "-c", help="lockd TOML config",
                                                  envvar="LOCKD_CONFIG")]
SocketOption = Annotated[str | None, typer.Option("--socket", help="admin socket (default: from the config, "
                                                  "else /run/lockd/admin.sock)", envvar="LOCKD_SOCKET")]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON document")]


def admin_socket_path(config: str | None, sock: str | None) -> str:
    from lockd.daemon import DEFAULT_ADMIN_SOCKET, load_config

    if sock:
        return sock
    if config:
        return load_config(config).admin_socket
    return DEFAULT_ADMIN_SOCKET


def request(path: str, payload: dict[str, Any], *, timeout_s: float = 60.0) -> Any:
    """One admin request; returns the result or raises the daemon's error."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout_s)
    try:
        try:
            conn.connect(path)
        except OSError as exc:
            raise DaemonUnavailable(f"cannot reach lockd at {path}: {exc.strerror or exc}; is 'lockd serve' "
                                    "running?") from None
        conn.sendall(json.dumps(payload).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    except TimeoutError:
        raise DaemonUnavailable(f"lockd at {path} did not answer within {timeout_s} s") from None
    finally:
        conn.close()
    try:
        answer = json.loads(reply)
    except ValueError:
        raise ProtocolError(f"lockd at {path} sent a malformed answer") from None
    if not answer.get("ok"):
        raise from_wire(answer.get("error", {}))
    return answer.get("result")


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def _call(config: str | None, sock: str | None, payload: dict[str, Any]) -> Any:
    return request(admin_socket_path(config, sock), payload)


@app.command()
def serve(config: ConfigOption = None,
          host_id: Annotated[str | None, typer.Option(help="override host_id from the config")] = None) -> None:
    """Run the daemon in the foreground until SIGTERM (leases survive a stop or restart)."""
    from pathlib import Path

    from lockd.daemon import DEFAULT_CONFIG, load_config

    path = str(config or DEFAULT_CONFIG)
    load_config(path, host_id=host_id)  # a bad config fails here, in one line, with exit 2
    # Replace this process (same pid, for service managers) by the daemon proper, without the CLI's
    # libraries in memory.
    package_root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "lockd.daemon", "-c", path, *(["--host-id", host_id] if host_id else [])]
    os.execv(sys.executable, argv)


@app.command()
def status(config: ConfigOption = None, sock: SocketOption = None, as_json: JsonOption = False,
           prometheus: Annotated[bool, typer.Option(help="Prometheus text format")] = False) -> None:
    """This daemon's host, store, timing, lockspaces and counters."""
    if prometheus:
        typer.echo(_call(config, sock, {"op": "metrics"}), nl=False)
        return
    data = _call(config, sock, {"op": "status"})
    lines = [f"host {data['host']} (pid {data['pid']}), store {data['store']}, {data['leases']} lease(s), "
             f"{data['owners']} owner(s), up {data['uptime_s']:.0f} s"]
    for space in data["lockspaces"]:
        lines.append(f"  {space['lockspace']}: incarnation {space['incarnation']} counter {space['counter']}, "
                     f"last renew {space['since_last_renew_s']} s ago, self-fence in {space['self_fence_in_s']} s, "
                     f"{space['leases']} lease(s)")
    _emit(data, as_json, "\n".join(lines))


@app.command()
def leases(config: ConfigOption = None, sock: SocketOption = None, as_json: JsonOption = False) -> None:
    """Leases this host holds, with their owner processes and fencing tokens."""
    data = _call(config, sock, {"op": "leases"})
    lines = [f"{le['lockspace']}/{le['key']} {le['mode']} token {le['token']} pids "
             f"{','.join(str(o[0]) for o in le['owners'])}" for le in data]
    _emit(data, as_json, "\n".join(lines) or "no leases")


@app.command()
def hosts(config: ConfigOption = None, sock: SocketOption = None, as_json: JsonOption = False) -> None:
    """Liveness of every host seen in the joined lockspaces, as this daemon observes it."""
    data = _call(config, sock, {"op": "hosts"})
    lines = [f"{h['lockspace']} {h['host']} {h['state']} counter {h['counter']} changed "
             f"{h['last_change_age_s']} s ago{' (this host)' if h['self'] else ''}" for h in data]
    _emit(data, as_json, "\n".join(lines) or "no hosts")


@app.command()
def acquire(lockspace: str, key: str, config: ConfigOption = None, sock: SocketOption = None,
            pid: Annotated[int | None, typer.Option(help="owner process (default: this command's parent)")] = None,
            shared: Annotated[bool, typer.Option("--shared", help="a shared lease")] = False,
            as_json: JsonOption = False) -> None:
    """Acquire LOCKSPACE/KEY for process --pid now, or fail at once (exit 2) saying why and when to retry."""
    owner = pid if pid is not None else os.getppid()
    data = _call(config, sock, {"op": "acquire", "lockspace": lockspace, "key": key, "pid": owner,
                                "shared": shared})
    _emit(data, as_json, f"acquired {lockspace}/{key} ({data['mode']}, token {data['token']}) for pid {owner}")


@app.command()
def release(lockspace: str, key: str, config: ConfigOption = None, sock: SocketOption = None,
            pid: Annotated[int | None, typer.Option(help="only this owner's holding (default: all)")] = None,
            as_json: JsonOption = False) -> None:
    """Release LOCKSPACE/KEY (one owner's holding with --pid)."""
    data = _call(config, sock, {"op": "release", "lockspace": lockspace, "key": key, "pid": pid})
    _emit(data, as_json, f"released {lockspace}/{key}")


@app.command()
def fence(host: str, config: ConfigOption = None, sock: SocketOption = None,
          lockspace: Annotated[str | None, typer.Option(help="only this lockspace")] = None,
          as_json: JsonOption = False) -> None:
    """Declare HOST dead now (operator-forced): evict it and fence its store client and volumes."""
    data = _call(config, sock, {"op": "fence", "host": host, "lockspace": lockspace})
    lines = [f"fenced {d['host']} ({d['incarnation']}) in {d['lockspace']}: {'; '.join(d['actions']) or '-'}"
             for d in data]
    _emit(data, as_json, "\n".join(lines))


@app.command()
def bench(config: ConfigOption = None,
          rounds: Annotated[int, typer.Option(help="acquire/release rounds")] = 200,
          leases: Annotated[str, typer.Option(help="lease counts for the renewal cost, comma-separated")] = (
              "1,100,1000"),
          takeover: Annotated[bool, typer.Option(help="measure takeover time (takes about 2 x TTL)")] = True,
          baselines: Annotated[bool, typer.Option(help="also measure sanlock (lab daemon) and virtlockd")] = True,
          sanlock_takeover: Annotated[bool, typer.Option(
              help="also measure sanlock's takeover of a dead host's lease (about 70 s)")] = False,
          daemon_leases: Annotated[str, typer.Option(
              help="lease counts at which to measure a real lockd daemon's RSS, comma-separated ('' to skip)")] = (
              "1000,10000"),
          as_json: JsonOption = False) -> None:
    """Figures on the configured store: acquire/release latency, store ops per renewal and RSS by lease
    count, takeover time after a holder's death; the same for sanlock and virtlockd in the same run, with
    ratios (lockd / baseline). Prints numbers; asserts nothing."""
    from lockd.bench import bench as run_bench
    from lockd.daemon import DEFAULT_CONFIG, load_config

    try:
        counts = tuple(int(n) for n in leases.split(","))
        daemon_counts = tuple(int(n) for n in daemon_leases.split(",") if n.strip())
    except ValueError:
        raise typer.BadParameter(f"--leases and --daemon-leases want comma-separated integers, not {leases!r} "
                                 f"/ {daemon_leases!r}") from None
    settings = load_config(config or DEFAULT_CONFIG)
    data = asyncio.run(run_bench(settings, rounds=rounds, lease_counts=counts, takeover=takeover,
                                 baselines=baselines, sanlock_takeover=sanlock_takeover,
                                 daemon_leases=daemon_counts,
                                 progress=lambda text: typer.echo(f"... {text}", err=True)))
    lines = [f"store {data['store']}, TTL {data['timing']['ttl_s']} s, renew every "
             f"{data['timing']['renew_interval_s']} s",
             f"{_latency('acquire', data['acquire_ms'])}; {_latency('release', data['release_ms'])}",
             _latency("the store's own guarded write (the floor of an acquire):", data["store_write_ms"])
             + f"; acquire p99 / floor p99 {data['ratios_to_store']['acquire_p99']}"]
    lines += [f"{row['leases']:>6} leases: {row['store_ops_per_renew']} store ops per renewal, last renewal "
              f"{row['renew_ms_last']} ms, bench process RSS {row['bench_process_rss_mib']} MiB"
              for row in data["renewal"]]
    if "takeover_s" in data:
        lines.append(f"takeover {data['takeover_s']} s after the holder died")
    if "daemon" in data:
        daemon = data["daemon"]
        lines.append(f"lockd daemon (pid {daemon['pid']}) over its admin socket: "
                     f"{_latency('acquire', daemon['acquire_ms'])}; {_latency('release', daemon['release_ms'])}; "
                     f"RSS idle {daemon['rss_idle_mib']} MiB")
        lines.append(f"the floor under it (interpreter, asyncio, the store's client connected; python -m lockd.floor): "
                     f"RSS {daemon['floor_rss_mib']} MiB, {daemon['floor_threads']} threads")
        lines += [f"{row['leases']:>6} leases held: daemon RSS {row['daemon_rss_mib']} MiB (lockd's own "
                  f"{row['lockd_own_mib']} MiB above the floor), {row['threads']} threads" for row in daemon["held"]]
    for who, wire in data["wire"].items():
        lines.append(f"{who} over the virtlockd protocol: {_latency('REGISTER+ACQUIRE', wire['register_acquire_ms'])}; "
                     f"{_latency('RELEASE', wire['release_ms'])}"
                     + (f"; daemon RSS {wire['daemon_rss_mib']} MiB" if "daemon_rss_mib" in wire else ""))
    if "sanlock" in data:
        san = data["sanlock"]
        lines.append(f"sanlock (io_timeout {san['io_timeout_s']} s): add_lockspace {san['add_lockspace_s']} s; "
                     f"{_latency('acquire', san['acquire_ms'])}; {_latency('release', san['release_ms'])}; "
                     f"daemon RSS {san['daemon_rss_mib']} MiB"
                     + (f"; takeover {san['takeover_s']} s after the holder died" if "takeover_s" in san else ""))
        lines.append("ratios lockd / baseline: " + ", ".join(f"{k} {v}" for k, v in data["ratios"].items()))
    _emit(data, as_json, "\n".join(lines))


def _latency(label: str, summary: dict[str, float]) -> str:
    return f"{label} p50 {summary['p50']} ms p99 {summary['p99']} ms"


def main() -> None:
    """Entry point: one line on stderr and exit 2/1 for lockd's errors; click handles usage errors (2)."""
    try:
        app()
    except LockdError as error:
        typer.echo(f"lockd: {error}", err=True)
        sys.exit(error.exit_code)
    except ExceptionGroup as group:  # from a TaskGroup (serve, bench): report the first lockd error
        first = first_lockd_error(group)
        if first is None:
            raise
        typer.echo(f"lockd: {first}", err=True)
        sys.exit(getattr(first, "exit_code", 1))


if __name__ == "__main__":
    main()
