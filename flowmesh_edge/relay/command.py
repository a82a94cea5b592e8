"""``flowmesh-edge relay``: run a relay server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import stat
import sys
from pathlib import Path

import click

from flowmesh import settings

from ..mesh import relay_protocol as rp

#: Where ``relay`` looks for its tokens when ``--token-file`` is not given.
DEFAULT_TOKEN_FILE = "relay-tokens"


class TokenFileError(ValueError):
    """A token file that cannot be used; ``str()`` is one line that never quotes a token."""


def check_private(path: Path, what: str) -> None:
    """TokenFileError unless ``path`` is a regular file only its owner can read or write."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise TokenFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise TokenFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise TokenFileError(f"{what} {path} is mode {mode:04o}: it holds secrets, "
                             f"make it readable by its owner only (chmod 600 {path})")


def read_token_file(path: Path) -> list[str]:
    """The tokens in ``path``: one per line (blank lines and ``#`` comments skipped),
    or a single token. Refused when the file is missing, empty, holds a token
    shorter than :data:`relay_protocol.MIN_TOKEN_BYTES` or longer than the protocol
    allows, or is readable by anyone but its owner (a secret file is mode 0600)."""
    check_private(path, "token file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"token file {path} cannot be read: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    tokens = [line.strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise TokenFileError(f"token file {path} holds no token")
    for number, token in enumerate(tokens, 1):
        size = len(token.encode())
        if not rp.MIN_TOKEN_BYTES <= size <= rp.MAX_TOKEN_BYTES:
            raise TokenFileError(f"token {number} in {path} is {size} bytes; a token is "
                                 f"{rp.MIN_TOKEN_BYTES} to {rp.MAX_TOKEN_BYTES} bytes")
    return tokens


@click.command()
@click.option("--bind", default="127.0.0.1", show_default=True, envvar="FLOWMESH_RELAY_BIND",
              show_envvar=True,
              help="Address to listen on; 0.0.0.0 to serve other hosts (with --tls-cert for wss://).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              envvar="FLOWMESH_RELAY_PORT", show_envvar=True, help="TCP port (0: any free port).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="FLOWMESH_RELAY_TOKEN_FILE", show_envvar=True,
              help="File of relay tokens, one a line, mode 0600 [default: <data dir>/relay-tokens].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path),
              envvar="FLOWMESH_RELAY_TLS_CERT", show_envvar=True,
              help="Serve wss:// with this certificate chain (PEM); needs --tls-key.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              envvar="FLOWMESH_RELAY_TLS_KEY", show_envvar=True,
              help="The certificate's private key (PEM, mode 0600).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Messages a second one connection may send before it is closed as a flood "
                   "[default: 200].")
@click.option("--burst", type=click.IntRange(min=1), default=None,
              help="Messages a connection may send at once above the rate [default: 400].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def relay(bind, port, token_file, tls_cert, tls_key, rate, burst, log_level) -> None:
    """Run a relay: members that share no network path reach each other through it.

    Members connect out over WebSocket and authenticate with a token from the
    token file. The relay forwards each mesh frame to the member it names in the
    same mesh, or to all of them; frames stay authenticated end to end by the
    mesh key, which the relay never holds.
    """
    path = token_file or settings.data_dir() / DEFAULT_TOKEN_FILE
    try:
        tokens = read_token_file(path)
        context = _tls(tls_cert, tls_key)
    except TokenFileError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s flowmesh-edge relay %(levelname)s %(message)s", stream=sys.stderr)
    # websockets narrates every connection at INFO
    logging.getLogger("flowmesh_edge.relay.websockets").setLevel(max(logging.WARNING, logging.root.level))
    from .server import DEFAULT_BURST, DEFAULT_RATE, Relay  # websockets only for this command

    server = Relay(bind, port, tokens, rate=rate or DEFAULT_RATE, burst=burst or DEFAULT_BURST, ssl=context)
    try:
        asyncio.run(_serve(server))
    except OSError as exc:  # the port is taken, the address is not ours
        raise click.ClickException(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None


def _tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise click.UsageError("--tls-cert and --tls-key go together")
    check_private(key, "TLS key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TokenFileError(f"cannot use {cert} with {key}: "
                             f"{getattr(exc, 'reason', None) or exc.strerror or exc}") from None
    return context


async def _serve(server) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close()


__all__ = ["TokenFileError", "read_token_file", "relay"]
