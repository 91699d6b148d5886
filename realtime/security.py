"""CURVE keys, the ZAP allow-list and the "is this address loopback?" rule of ``posecast serve``.

A key pair is two files written by ``zmq.auth.create_certificates``: ``NAME.key`` (public, safe to copy) and
``NAME.key_secret`` (public + secret, stays on its machine). The server holds one pair (``serve --keys DIR``:
DIR/server.key_secret) and a folder of the client public keys it allows (``serve --allow DIR``); a client holds
its own pair (``capture --key FILE``) and the server's public key (``capture --server-key FILE``).

Authentication is ZeroMQ's: ``ThreadAuthenticator`` answers the ZAP requests of the server socket, accepts only
the CURVE public keys found in the allow folder, and sets each connection's ``User-Id`` to the z85 text of its
key. The server reads that User-Id from every message (``frame.get("User-Id")``): identity comes from the key,
never from the routing id. A client with an unknown or no key fails the handshake and never gets a message.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path

import zmq
import zmq.auth

SERVER_KEY_NAME = "server"
ZAP_DOMAIN = "posecast"         # the ZAP domain of the server socket; the allow-list is configured for it


class KeyFileError(ValueError):
    """A key file or folder is missing or unreadable (a ValueError: the CLI prints it in one line)."""


def new_keypair(name: str, folder: str | os.PathLike = "keys") -> tuple[Path, Path]:
    """Write ``folder/NAME.key`` and ``folder/NAME.key_secret``; refuses to overwrite an existing pair."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise KeyFileError(f"key name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise KeyFileError(f"{p} already exists; remove it first or choose another name")
    pub, sec = zmq.auth.create_certificates(str(folder), name)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)


def load_public(path: str | os.PathLike) -> bytes:
    """The z85 public key of a ``.key`` or ``.key_secret`` file."""
    path = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: not a readable ZeroMQ key file ({e})") from None
    if not public:
        raise KeyFileError(f"{path}: no public-key line")
    return public


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys of a ``.key_secret`` file, or of ``DIR/server.key_secret`` for a folder."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{SERVER_KEY_NAME}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: not a readable ZeroMQ secret key file ({e}); "
                        f"make one with `posecast keys new NAME`") from None
    if not secret:
        raise KeyFileError(f"{path}: holds no secret key (use the .key_secret file, not the public .key)")
    return public, secret


def allowed_keys(folder: str | os.PathLike) -> dict[str, str]:
    """z85 public key -> name (file stem) of every ``*.key`` in ``folder``; refuses an empty or absent folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeyFileError(f"{folder}: the allow folder does not exist")
    names = {}
    for p in sorted(folder.glob("*.key")):
        names[load_public(p).decode("ascii")] = p.stem
    if not names:
        raise KeyFileError(f"{folder}: no client public keys (*.key) to allow; copy a client's NAME.key there")
    return names


@dataclasses.dataclass(frozen=True)
class CurveConfig:
    """What a CURVE server needs: its own key pair and the folder of allowed client public keys."""
    keys: Path          # the server's .key_secret file, or a folder holding server.key_secret
    allow: Path         # folder of allowed client public keys (*.key)


class CurveServer:
    """Turns a ROUTER socket into a CURVE server whose ZAP handler accepts only the allowed keys.

    ``names`` maps each allowed z85 key to its file name (for logs). ``close()`` stops the authenticator.
    """

    def __init__(self, ctx: zmq.Context, cfg: CurveConfig):
        from zmq.auth.thread import ThreadAuthenticator

        self.public, self._secret = load_secret(cfg.keys)
        self.names = allowed_keys(cfg.allow)
        self.allow = Path(cfg.allow)
        self._auth = ThreadAuthenticator(ctx, log=None)
        self._auth.start()
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(self.allow))

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    def close(self) -> None:
        self._auth.stop()


def apply_client_curve(sock: zmq.Socket, server_key: str | os.PathLike, key: str | os.PathLike) -> None:
    """Make a DEALER a CURVE client: its own key pair (``key``, a .key_secret) and the server's public key."""
    public, secret = load_secret(key)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = load_public(server_key)


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint only accepts connections from this machine (tcp on 127.0.0.0/8 / ::1 /
    localhost, ipc, inproc). Wildcards (``*``, 0.0.0.0), interface names and other addresses are not."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = re.fullmatch(r"tcp://(.+):(\d+|\*)", endpoint)
    if not m:
        return False
    host = m.group(1).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(endpoint: str, curve: CurveConfig | None, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without CURVE keys unless ``insecure`` (raises ValueError)."""
    if curve is None and not insecure and not is_loopback(endpoint):
        raise ValueError(
            f"refusing to serve {endpoint} without authentication: anyone who can reach it could use this "
            f"server and see what it generates. Give it keys (--keys DIR --allow DIR; `posecast keys new server`), "
            f"bind to loopback and tunnel, or pass --insecure on a network you trust")
