"""The LLM simulator behind TLS, with a certificate from a throw-away CA."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trustme
import uvicorn
from conftest import wait_for

from rankstream.dev.redis_server import free_port
from rankstream.simulator import SimConfig, create_app


@contextmanager
def tls_simulator(folder: Path) -> Iterator[tuple[str, ssl.SSLContext]]:
    """(base URL on https://localhost, an SSL context that trusts its certificate)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    port = free_port()
    config = uvicorn.Config(
        create_app(SimConfig(ttft=0.01, tokens_per_second=2000)),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the TLS simulator")
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    try:
        yield f"https://localhost:{port}/v1", trusted
    finally:
        server.should_exit = True
        thread.join(10)
