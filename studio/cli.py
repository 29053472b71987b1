"""``activation studio``: the live email studio on this machine (registered on the ``activation`` app)."""

from __future__ import annotations

import ipaddress
import secrets
import socket

import typer

from activation import console
from activation.errors import ConfigError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access(host: str, allow_remote: bool) -> tuple[str | None, set[str] | None]:
    """The token the studio requires and the Host names it answers: on loopback no token and only the
    loopback names; beyond it (``--allow-remote`` only) a new token and any name.

    Raises:
        ConfigError: a host beyond loopback without ``--allow-remote``.
    """
    if is_loopback(host):
        return None, LOOPBACK_NAMES | {host.strip("[]").lower()}
    if not allow_remote:
        raise ConfigError(
            f"--host {host} would let other machines see your customers' emails",
            fix="keep the default --host 127.0.0.1, or add --allow-remote (a token is then required)",
        )
    return secrets.token_urlsafe(24), None


def check_port(host: str, port: int) -> None:
    """Raise before any work when ``host:port`` cannot be listened on (another program has it).

    Raises:
        ConfigError: the port is taken or not allowed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                fix=f"use another port (--port {port + 1}) or stop the program that has it",
            ) from None


def studio(
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a --host beyond loopback; a printed token is then required."
    ),
) -> None:
    """Live preview of every segment's email while you edit templates/ and policy.yaml."""
    from activation.settings import get_settings
    from studio.catalog import read_only_engine
    from studio.serve import StudioServer
    from studio.state import Studio

    token, hosts = access(host, allow_remote)
    check_port(host, port)
    settings = get_settings()
    server = StudioServer(Studio(settings, read_only_engine(settings)), host, port, token=token, hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    link = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    console.out.print(f"studio on {link} (templates: {settings.templates_dir}); Ctrl-C stops", markup=False)
    if token:
        console.out.print(f"token: {token} (header X-Studio-Token or ?token=)", markup=False)
    server.run()


def register(app: typer.Typer) -> None:
    """Add ``studio`` to ``app``."""
    app.command("studio")(studio)
