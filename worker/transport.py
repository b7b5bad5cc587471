"""httpx2's HTTP transport and its environment proxies, on a network backend of our choosing.

`httpx2.AsyncHTTPTransport` builds its httpcore2 pool on httpcore2's default (anyio) network
backend and offers no way to pass another. `BackendTransport` is that transport rebuilt from
public parts: an httpcore2 pool (direct, HTTP proxy or SOCKS proxy) made with
`network_backend=`, and httpx2's request, response and exception mapping around it.

A client given `transport=` no longer reads HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY,
so `environment_proxies()` reads them the way httpx2 does (httpx2._utils.get_environment_proxies)
for the client to mount, pattern by pattern, as httpx2's own client would.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from types import TracebackType
from typing import Self
from urllib.request import getproxies

import httpcore2
import httpx2

# httpcore2's exceptions as httpx2's transport re-raises them, so the openai client still tells
# a timeout (APITimeoutError) from a failed connection (APIConnectionError).
EXCEPTIONS: dict[type[Exception], type[httpx2.TransportError]] = {
    httpcore2.TimeoutException: httpx2.TimeoutException,
    httpcore2.ConnectTimeout: httpx2.ConnectTimeout,
    httpcore2.ReadTimeout: httpx2.ReadTimeout,
    httpcore2.WriteTimeout: httpx2.WriteTimeout,
    httpcore2.PoolTimeout: httpx2.PoolTimeout,
    httpcore2.NetworkError: httpx2.NetworkError,
    httpcore2.ConnectError: httpx2.ConnectError,
    httpcore2.ReadError: httpx2.ReadError,
    httpcore2.WriteError: httpx2.WriteError,
    httpcore2.ProxyError: httpx2.ProxyError,
    httpcore2.UnsupportedProtocol: httpx2.UnsupportedProtocol,
    httpcore2.ProtocolError: httpx2.ProtocolError,
    httpcore2.LocalProtocolError: httpx2.LocalProtocolError,
    httpcore2.RemoteProtocolError: httpx2.RemoteProtocolError,
}


@contextlib.contextmanager
def httpcore_exceptions() -> Iterator[None]:
    """Re-raise an httpcore2 exception as the most specific httpx2 one, like httpx2 does."""
    try:
        yield
    except Exception as exc:
        for cls in type(exc).__mro__:  # the exception's own class first, then its bases
            mapped = EXCEPTIONS.get(cls)
            if mapped is not None:
                raise mapped(str(exc)) from exc
        raise


class ResponseStream(httpx2.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpcore_exceptions():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class BackendTransport(httpx2.AsyncBaseTransport):
    """`httpx2.AsyncHTTPTransport(verify=, limits=, proxy=)` whose sockets come from `network_backend`."""

    def __init__(
        self,
        network_backend: httpcore2.AsyncNetworkBackend,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx2.Limits,
        proxy: httpx2.Proxy | None = None,
    ) -> None:
        self.network_backend = network_backend
        self.proxy = proxy  # read by worker/llm.py to route its hand-written POST the same way
        self.ssl_context = ssl_context = httpx2.create_ssl_context(verify=verify)  # SSL_CERT_FILE/DIR count
        connections, keepalive, expiry = (
            limits.max_connections,
            limits.max_keepalive_connections,
            limits.keepalive_expiry,
        )
        self.pool: httpcore2.AsyncConnectionPool
        if proxy is None:
            self.pool = httpcore2.AsyncConnectionPool(
                ssl_context=ssl_context,
                max_connections=connections,
                max_keepalive_connections=keepalive,
                keepalive_expiry=expiry,
                network_backend=network_backend,
            )
            return
        url = proxy.url
        proxy_url = httpcore2.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        if url.scheme in ("http", "https"):  # an https target goes through a CONNECT tunnel
            self.pool = httpcore2.AsyncHTTPProxy(
                proxy_url=proxy_url,
                proxy_auth=proxy.raw_auth,
                proxy_headers=proxy.headers.raw,
                proxy_ssl_context=proxy.ssl_context,
                ssl_context=ssl_context,
                max_connections=connections,
                max_keepalive_connections=keepalive,
                keepalive_expiry=expiry,
                network_backend=network_backend,
            )
        elif url.scheme in ("socks5", "socks5h"):
            if importlib.util.find_spec("socksio") is None:  # httpx2's error, word for word
                raise ImportError(
                    "Using SOCKS proxy, but the 'socksio' package is not installed. "
                    "Make sure to install httpx using `pip install httpx[socks]`."
                )
            self.pool = httpcore2.AsyncSOCKSProxy(
                proxy_url=proxy_url,
                proxy_auth=proxy.raw_auth,
                ssl_context=ssl_context,
                max_connections=connections,
                max_keepalive_connections=keepalive,
                keepalive_expiry=expiry,
                network_backend=network_backend,
            )
        else:  # httpx2.Proxy has already refused any other scheme
            raise ValueError(f"Proxy protocol must be http, https, socks5 or socks5h, not {url.scheme!r}")

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        url = request.url
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,  # the timeouts, among others
        )
        with httpcore_exceptions():
            response = await self.pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=ResponseStream(response.stream),
            extensions=response.extensions,  # "network_stream" among them
        )

    async def __aenter__(self) -> Self:
        await self.pool.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        with httpcore_exceptions():
            await self.pool.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        await self.pool.aclose()


def environment_proxies() -> dict[str, str | None]:
    """URL pattern -> proxy URL, or None to connect directly: what httpx2 reads from the environment.

    The same patterns, in the same order, as httpx2's get_environment_proxies: HTTP_PROXY,
    HTTPS_PROXY and ALL_PROXY (lower case first, via urllib's getproxies) by scheme, then NO_PROXY
    entries as hosts, domains (`.example.com`, `*.example.com`, `example.com`), IP addresses,
    CIDR networks or `*` (no proxy at all), following curl's rules. Mounted on an httpx2 client,
    the most specific matching pattern wins (httpx2 sorts mounts so).
    """
    found = getproxies()
    patterns: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        if found.get(scheme):
            url = found[scheme]
            patterns[f"{scheme}://"] = url if "://" in url else f"http://{url}"

    for host in (entry.strip() for entry in found.get("no", "").split(",")):
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            patterns[host] = None
        elif _is_ip(host, ipaddress.IPv4Address):
            patterns[f"all://{host}"] = None
        elif _is_ip(host, ipaddress.IPv6Address):
            address, slash, prefix = host.partition("/")
            patterns[f"all://[{address}]/{prefix}" if slash else f"all://[{host}]"] = None
        elif (
            host.lower() == "localhost" or host.startswith("[") or (host.startswith("*.") and "/" not in host)
        ):
            patterns[f"all://{host}"] = None
        elif "/" not in host:
            patterns[f"all://*{host}"] = None  # the domain and its subdomains
    # httpx2 drops (as curl and Go do) entries its URL patterns cannot parse.
    return {pattern: url for pattern, url in patterns.items() if _mountable(pattern)}


def _is_ip(host: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(host.split("/")[0])
    except ValueError:
        return False
    return True


_NO_TRANSPORT = httpx2.AsyncBaseTransport()


def _mountable(pattern: str) -> bool:
    """Whether httpx2 accepts `pattern` as a mount key. Its pattern parser is private (URLPattern
    in httpx2._utils), so ask a client, whose `mounts=` parses keys with it (about 30 µs)."""
    try:
        httpx2.AsyncClient(transport=_NO_TRANSPORT, mounts={pattern: None}, trust_env=False)
    except httpx2.InvalidURL:
        return False
    return True
