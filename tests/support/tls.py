"""Certificates for a Redis behind TLS, from throw-away trustme CAs, as files redis-server reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trustme

from rankstream.dev.redis_server import TLSFiles


@dataclass(frozen=True, slots=True)
class Certificates:
    """The test CA, the server's pair (127.0.0.1 and localhost), a client's pair from the same CA,
    and a second CA that signed none of them."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    def server(self, client_certs: Literal["no", "optional", "yes"] = "optional") -> TLSFiles:
        """What `RedisServer(tls=...)` needs; `client_certs` is redis-server's tls-auth-clients."""
        return TLSFiles(self.server_cert, self.server_key, self.ca, client_certs)


def make_certificates(folder: Path) -> Certificates:
    """Write a fresh set of certificates into `folder` (PEM files)."""
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("rankstream-worker@example.invalid")
    files = Certificates(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
        other_ca=folder / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_and_cert_chain_pem.write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.private_key_and_cert_chain_pem.write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    other.cert_pem.write_to_path(str(files.other_ca))
    return files
