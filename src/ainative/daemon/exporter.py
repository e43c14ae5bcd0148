"""The daemon's Prometheus endpoint: `--metrics-address HOST:PORT`, and the HTTP server.

The address is parsed once, at start-up, into a MetricsAddress (or None for ``off``); a
bad one is a one-line error naming the option and the fix. Loopback is the default
because the metrics name local processes and their latencies; any other address works
but is logged as a warning. Port 0 takes a free port, which `ainative status` reports.

A port already in use stops the daemon at start (before its first change, after crash
recovery, which only undoes), rather than running without the endpoint it was asked
for: an operator who configured an address is told at once, by the exit status and one
line, instead of finding a blind dashboard later. Private daemons (ipc/launcher.py) run
with ``off`` by default, so a demo or a test never takes a system daemon's port.

The server is a small WSGI application behind a bounded threading server: one thread
per scrape, at most MAX_SCRAPERS at once (more are closed unanswered and counted), each
connection's reads and writes timed out, so a slow or hostile local client can hold a few
threads but never the daemon's loop nor unbounded memory. A scrape is the daemon's own
families, which render their text themselves (daemon/metrics.py, fast with many
processes), then a prometheus_client registry's: the GPU collector reading the sampler's
cached report (daemon/gpusampler.py) and the daemon process's own CPU and memory. The
reply is the text format 0.0.4 (what every Prometheus reads), gzipped when the scraper
accepts it (Prometheus does), at the fastest level: the text is large and repetitive.
"""

from __future__ import annotations

import errno
import gzip
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ainative import log

OPTION = "--metrics-address"
DEFAULT_ADDRESS = "127.0.0.1:9464"  # the OpenTelemetry Prometheus exporter's usual port
MAX_SCRAPERS = 8
CLIENT_TIMEOUT_S = 10.0


class AddressError(ValueError):
    """A --metrics-address value that cannot be used; one line with the fix."""


@dataclass(frozen=True)
class MetricsAddress:
    host: str  # a numeric address
    port: int
    family: socket.AddressFamily
    loopback: bool

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}/metrics"


def parse_address(text: str) -> MetricsAddress | None:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6, a host name resolved now) or ``off``
    (None). Raises AddressError."""
    fix = (f"give HOST:PORT, e.g. {OPTION} {DEFAULT_ADDRESS} (port 0: any free port), "
           f"or {OPTION} off")
    value = text.strip()
    if value.lower() == "off":
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise AddressError(f"{OPTION} {text!r}: no host and port; {fix}")
    if not host:
        raise AddressError(f"{OPTION} {text!r}: no host; give 127.0.0.1{value} (this "
                           f"machine only) or 0.0.0.0{value} (every interface)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"{OPTION} {text!r}: an IPv6 address goes in brackets, "
                           f"e.g. [::1]:9464")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"{OPTION} {text!r}: the port must be a number from 0 to "
                           f"65535; {fix}")
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise AddressError(f"{OPTION} {text!r}: cannot resolve {host!r} "
                           f"({getattr(e, 'strerror', None) or e}); use a numeric address "
                           f"such as 127.0.0.1") from None
    family, _, _, _, sockaddr = infos[0]
    addr = str(sockaddr[0])
    return MetricsAddress(addr, port, family, ipaddress.ip_address(addr).is_loopback)


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S  # StreamRequestHandler applies it to the connection

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the daemon's log is for what it does."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: MetricsAddress, max_clients: int) -> None:
        self.address_family = address.family
        self._slots = threading.BoundedSemaphore(max_clients)
        self.refused = 0
        super().__init__((address.host, address.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks socket.getfqdn(), a DNS lookup that can take
        # seconds where no resolver answers; the name is only used in CGI variables.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ExporterError(Exception):
    """The endpoint cannot listen; one line with the fix."""


Renderer = Callable[[], bytes]  # families already in the text exposition format
WsgiStart = Callable[[str, list[tuple[str, str]]], Any]


class MetricsServer:
    """The endpoint, serving from a thread of its own once started."""

    def __init__(self, address: MetricsAddress, renderers: list[Renderer],
                 collectors: list[Collector], max_clients: int = MAX_SCRAPERS) -> None:
        self.requested = address
        self.renderers = renderers
        self.registry = CollectorRegistry(auto_describe=True)
        for c in collectors:
            self.registry.register(c)
        ProcessCollector(registry=self.registry)  # the daemon's own CPU, memory, fds
        self.max_clients = max_clients
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.bound: MetricsAddress | None = None
        self.failures = 0

    def body(self) -> bytes:
        """One scrape's text."""
        return b"".join(r() for r in self.renderers) + generate_latest(self.registry)

    def app(self, environ: dict[str, Any], start_response: WsgiStart) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b"use GET\n"]
        try:
            body = self.body()
        except Exception as e:  # a scrape never takes the thread, or the daemon, down
            self.failures += 1
            if self.failures == 1:
                log.error("metrics_render_failed", error=f"{type(e).__name__}: {e}")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [f"ainative could not render its metrics: {type(e).__name__}\n".encode()]
        headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    def start(self) -> MetricsAddress:
        """Listen and serve; returns the address bound (the real port for port 0)."""
        a = self.requested
        try:
            server = _Server(a, self.max_clients)
        except OSError as e:
            raise ExporterError(_bind_error(a, e)) from None
        server.set_app(self.app)
        self._server = server
        self.bound = MetricsAddress(a.host, server.server_port, a.family, a.loopback)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="ainative-metrics", daemon=True)
        self._thread.start()
        return self.bound

    @property
    def refused(self) -> int:
        return self._server.refused if self._server else 0

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None


def _bind_error(a: MetricsAddress, e: OSError) -> str:
    why = e.strerror or str(e)
    if e.errno == errno.EADDRINUSE:
        return (f"{OPTION} {a}: the port is already in use (another exporter or ainative "
                f"daemon listens there); choose a free port with {OPTION} HOST:PORT, or "
                f"{OPTION} off")
    if e.errno == errno.EADDRNOTAVAIL:
        return (f"{OPTION} {a}: {why} (no interface of this machine has that address); use "
                f"one of its addresses, e.g. {DEFAULT_ADDRESS}")
    if e.errno == errno.EACCES:
        return (f"{OPTION} {a}: {why} (ports below 1024 need root); use a port above "
                f"1023, e.g. {DEFAULT_ADDRESS}")
    return f"{OPTION} {a}: cannot listen: {why}; choose another address, or {OPTION} off"
