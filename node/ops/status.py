"""The node's HTTP side: a status page for people, ``/healthz`` for load balancers and service
managers, ``/metrics`` for Prometheus.

Served by the standard library's ``http.server`` on a bounded pool of threads: four routes,
server-rendered HTML and no JavaScript need no framework, and a hospital server installs one
dependency less. Bound to loopback by default; elsewhere the configuration must give non-empty
credentials (HTTP basic, RFC 7617, or a bearer token, RFC 6750), checked on every request.

What a client can make the server spend is bounded (:class:`_PooledHTTPServer`): a thread only
while a request is read and answered, at most ``status.max_connections`` of them; a connection
lasts at most ``status.request_timeout`` seconds; a request body is read only when its
``Content-Length`` is given, valid and at most ``MAX_FORM_BYTES``. A request whose ``Host`` is
not one the server answers to (``status.allowed_hosts``) gets 421 and nothing else: a page that
reached the server through a DNS name rebound to its address carries that name.

The one state-changing request, ``POST /deliveries/retry``, is guarded against cross-site request
forgery (OWASP CSRF cheat sheet): the request's ``Origin`` (or, lacking it, ``Referer``) must be
this server, and the form must carry the token the page was rendered with (an HMAC of a secret
made at start). The retry is recorded in the audit trail with the user who asked.

The page shows UIDs, AE titles, states and times; never a patient's name, ID or birth date (the
index holds none).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import queue
import selectors
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, quote, urlsplit

from node import __version__
from node.config import NodeConfig, host_name
from node.logs import fields
from node.ops.health import Health
from node.ops.metrics import render_metrics
from node.ops.rule_test import series_summary
from node.state import Index
from node.state.audit import SEGMENTATION_NOT_PROCESSED

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096
"""The largest request body read: the retry form (a token and a delivery id) is about 100 bytes."""

WAITING_PER_WORKER = 8
"""Connections that may wait for their first bytes, per worker thread."""

BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nCache-Control: no-store\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nbusy\n")
"""The answer when every worker is busy (RFC 9110 15.6.4, Retry-After 10.2.3)."""

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1f2933; background: #f5f7fa; }
header { background: #243b53; color: #fff; padding: 14px 28px; display: flex;
         align-items: baseline; gap: 24px; }
header h1 { font-size: 20px; margin: 0; }
header span { color: #bcccdc; }
main { padding: 8px 28px 28px; }
h2 { font-size: 16px; margin: 22px 0 8px; color: #243b53; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #e4e7eb;
         vertical-align: top; white-space: nowrap; }
th { background: #e4e7eb; font-weight: 600; font-size: 12px; text-transform: uppercase;
     letter-spacing: .03em; color: #486581; }
tr:nth-child(even) td { background: #f8fafc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; color: #334e68; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; }
.ok, .done, .delivered { background: #e3f9e5; color: #207227; }
.fail, .failed, .dead { background: #ffe3e3; color: #a61b1b; }
.queued, .pending, .receiving { background: #fff3c4; color: #8d6708; }
.running, .stable { background: #dceefb; color: #0b4f8a; }
.checks { display: flex; gap: 12px; flex-wrap: wrap; margin-top: 14px; }
.check { background: #fff; box-shadow: 0 1px 2px #0002; padding: 8px 12px; min-width: 210px; }
.check b { display: block; margin-bottom: 2px; }
.empty { color: #829ab1; font-style: italic; padding: 6px 0; }
button { background: #2680c2; color: #fff; border: 0; padding: 3px 12px; border-radius: 3px;
         cursor: pointer; }
.reason { color: #a61b1b; white-space: normal; display: block; min-width: 180px; }
"""


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) if stamp else "-"


def _job_note(job: sqlite3.Row) -> str:
    """The job's reason, after "new result: inputs changed since job N" for a rerun (the
    reprocess policy of node.flow.router), then "delta: <state> (<reason>)" for a job of a rule
    with ``prior`` (node.flow.priors)."""
    rerun = f"new result: inputs changed since job {job['rerun_of']}" if job["rerun_of"] else ""
    delta = (f"delta: {job['delta']}" + (f" ({job['delta_reason']})" if job["delta_reason"]
                                         else "")) if job["delta"] else ""
    return "; ".join(part for part in (rerun, job["reason"] or "", delta) if part)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _bytes(count: float | None) -> str:
    count = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _uid(uid: str | None) -> str:
    """A UID shortened to its end (where UIDs differ), the whole one in the tooltip."""
    if not uid:
        return "-"
    shown = uid if len(uid) <= 24 else "\u2026" + uid[-23:]
    return f'<code title="{html.escape(uid)}">{html.escape(shown)}</code>'


def _badge(state: str) -> str:
    return f'<span class="badge {html.escape(state)}">{html.escape(state)}</span>'


def _table(title: str, headers: Iterable[str], rows: list[list[str]], empty: str) -> str:
    """A section: heading and table of already-escaped cells (``num:`` prefix: right-aligned)."""
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if not rows:
        parts.append(f'<div class="empty">{html.escape(empty)}</div>')
        return "".join(parts)
    parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            if cell.startswith("num:"):
                cells.append(f'<td class="num">{cell[4:]}</td>')
            else:
                cells.append(f"<td>{cell}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


class StatusServer:
    """Serves the page, ``/healthz`` and ``/metrics`` in background threads."""

    def __init__(self, config: NodeConfig, index: Index, health: Callable[[], Health]):
        self.config = config
        self.index = index
        self.health = health
        self.hosts = config.status.served_hosts
        self._secret = os.urandom(32)
        self._server: _PooledHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def csrf_token(self) -> str:
        """The token every retry form carries (HMAC-SHA256 of a per-start secret)."""
        return hmac.new(self._secret, b"deliveries/retry", hashlib.sha256).hexdigest()

    def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound (host, port)."""
        settings = self.config.status
        server_class = _PooledHTTPServerV6 if ":" in settings.host else _PooledHTTPServer
        server = server_class((settings.host, settings.port), _handler_for(self),
                              settings.max_connections, settings.request_timeout)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="status-http",
                                        daemon=True)
        self._thread.start()
        host, port = server.server_address[:2]
        log.info("status page serving", extra=fields(host=host, port=port,
                                                     authentication=self.requires_auth))
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def requires_auth(self) -> bool:
        settings = self.config.status
        return settings.password is not None or settings.token is not None

    def authenticate(self, header: str | None) -> str | None:
        """The user an ``Authorization`` header proves (``token`` for the bearer token), or
        None. Without configured credentials (loopback only) everyone is ``loopback``."""
        settings = self.config.status
        if not self.requires_auth:
            return "loopback"
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and settings.token is not None:
            expected = settings.token.get_secret_value().encode()
            return "token" if hmac.compare_digest(value.strip().encode(), expected) else None
        if scheme.lower() == "basic" and settings.password is not None:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            good_user = hmac.compare_digest(user.encode(), str(settings.username).encode())
            good_password = hmac.compare_digest(
                password.encode(), settings.password.get_secret_value().encode())
            return user if good_user and good_password else None
        return None

    # -- the page -------------------------------------------------------------------------------

    def render_page(self, message: str = "") -> str:
        """The status page as one HTML document."""
        settings, index = self.config.status, self.index
        limit = settings.recent
        health = self.health()
        checks = "".join(
            f'<div class="check"><b>{html.escape(c.name)} {_badge("ok" if c.ok else "fail")}</b>'
            f"{html.escape(c.detail)}</div>" for c in health.checks)
        usage = shutil.disk_usage(self.config.state_dir)
        depths = index.queries.queue_depths()
        disk_rows = [[html.escape(str(self.config.state_dir.resolve())),
                      f"num:{_bytes(usage.total)}", f"num:{_bytes(usage.used)}",
                      f"num:{_bytes(usage.free)}", f"num:{_bytes(self.config.min_free_bytes)}",
                      f"num:{_bytes(index.queries.spool_bytes())}"]]
        studies = [[_uid(r["study_uid"]), f"num:{r['n_series']}", f"num:{r['n_instances']}",
                    f"num:{_bytes(r['bytes'])}", html.escape(r["senders"] or "-"),
                    _when(r["first_received"]), _when(r["last_received"])]
                   for r in index.queries.recent_studies(limit)]
        series = [[_uid(r["series_uid"]), _uid(r["study_uid"]), html.escape(r["modality"]),
                   f"num:{r['n_instances']}",
                   _badge("stable" if r["stable_at"] else "receiving"),
                   _when(r["last_received"]),
                   '<span class="reason">' + html.escape(series_summary(
                       index, self.config.rules, r["series_uid"], self.config.study_rules))
                   + "</span>"]
                  for r in index.queries.recent_series(limit)]
        jobs = []
        for r in index.queries.recent_jobs(limit):
            ended = r["finished_at"] if r["state"] in ("done", "failed") else None
            running = r["state"] == "running" and r["started_at"]
            duration = (ended - r["started_at"]) if ended and r["started_at"] else \
                (index.clock.time() - r["started_at"]) if running else None
            jobs.append([f"num:{r['id']}", _badge(r["state"]), html.escape(r["preset"]),
                         html.escape(r["roles"] or "-"),
                         _uid(r["study_uid"]), _uid(r["source_series_uid"]),
                         f"num:{r['attempts']}", _when(r["created_at"]),
                         f"num:{_duration(duration)}",
                         f'<span class="reason">{html.escape(_job_note(r))}</span>'])
        qc = [[f"num:{r['id']}", html.escape(r["preset"]), _uid(r["source_series_uid"]),
               _when(r["finished_at"]), f'<span class="reason">{html.escape(r["reason"])}</span>']
              for r in index.queries.failed_jobs_matching("QC", limit)]
        unpaired = [[_when(r["at"]), _uid(r["study_uid"]), _uid(r["series_uid"]),
                     f'<span class="reason">{html.escape(json.loads(r["detail"])["reason"])}'
                     "</span>"]
                    for r in index.audit.rows(SEGMENTATION_NOT_PROCESSED, limit)]
        token = self.csrf_token
        dead = [[f"num:{r['id']}", f"num:{r['job_id']}", html.escape(r["destination"]),
                 _uid(r["sop_instance_uid"]), f"num:{r['attempts']}",
                 f'<span class="reason">{html.escape(r["last_error"] or "")}</span>',
                 f'<form method="post" action="/deliveries/retry">'
                 f'<input type="hidden" name="csrf" value="{token}">'
                 f'<input type="hidden" name="id" value="{r["id"]}">'
                 f'<button type="submit">Retry</button></form>']
                for r in index.outbox.with_checks("dead")[-limit:]]
        retry_all = (f'<form method="post" action="/deliveries/retry" style="margin-top:8px">'
                     f'<input type="hidden" name="csrf" value="{token}">'
                     f'<input type="hidden" name="all" value="dead">'
                     f'<button type="submit">Retry all dead-lettered</button></form>'
                     if dead else "")
        models = [[html.escape(r["preset"]), html.escape(r["preset_hash"] or "-"),
                   html.escape(", ".join(f"{k} {v}" for k, v in
                                         sorted(json.loads(r["models"] or "{}").items())) or "-"),
                   f"num:{r['jobs']}", _when(r["last_finished"])]
                  for r in index.queries.versions_in_use()]
        notice = f'<p class="check">{html.escape(message)}</p>' if message else ""
        listener = self.config.listener
        return "".join([
            "<!doctype html><html lang=en><head><meta charset=utf-8>",
            "<title>radiomics-node status</title>",
            f"<style>{STYLE}</style></head><body><header><h1>radiomics-node</h1>",
            f"<span>{html.escape(listener.ae_title)} on {html.escape(listener.host)}:"
            f"{listener.port}</span><span>version {html.escape(__version__)}</span>",
            f"<span>{_when(index.clock.time())} UTC</span>",
            f"<span>health {_badge('ok' if health.ok else 'fail')}</span></header><main>",
            notice, f'<div class="checks">{checks}</div>',
            _table("Queues", ["jobs queued", "jobs running", "deliveries pending",
                              "deliveries dead", "retrievals waiting", "series receiving"],
                   [[f"num:{depths[k]}" for k in ("jobs_queued", "jobs_running",
                                                   "deliveries_pending", "deliveries_dead",
                                                   "retrievals_waiting", "series_receiving")]],
                   ""),
            _table("Jobs", ["id", "state", "preset", "roles", "study", "source series",
                            "attempts", "queued", "duration", "reason"], jobs, "no job yet"),
            _table("QC failures", ["job", "preset", "source series", "failed", "reason"], qc,
                   "no job failed its quality control"),
            _table("Segmentations not processed", ["when", "study", "series", "reason"],
                   unpaired, "every segmentation received names a series"),
            _table("Dead-lettered deliveries", ["id", "job", "destination", "object",
                                                "attempts", "last error", ""], dead,
                   "no dead-lettered delivery"),
            retry_all,
            _table("Disk", ["state directory", "size", "used", "free", "floor", "spool"],
                   disk_rows, ""),
            _table("Recent studies", ["study", "series", "instances", "size", "sent by",
                                      "first received", "last received"], studies,
                   "no study received yet"),
            _table("Series", ["series", "study", "modality", "instances", "state",
                              "last received", "rules (radiomics-node rules test)"], series,
                   "no series"),
            _table("Presets and model versions in use", ["preset", "preset hash", "models",
                                                         "jobs done", "last"], models,
                   "no job done yet"),
            _table("Model packages configured", ["package", "pinned sha256"],
                   [[html.escape(str(ref.path)), f"<code>{html.escape(ref.sha256)}</code>"]
                    for ref in self.config.models], "no model package configured"),
            "</main></body></html>",
        ])

    def retry(self, form: dict[str, list[str]], user: str) -> str:
        """Handle the retry form; returns the message shown on the page."""
        actor = f"status-page:{user}"
        if form.get("all") == ["dead"]:
            reset = self.index.outbox.retry(None, actor=actor)
        else:
            try:
                ids = [int(v) for v in form.get("id", [])]
            except ValueError:
                return "retry: delivery ids must be numbers"
            if not ids:
                return "retry: no delivery named"
            reset = self.index.outbox.retry(ids, actor=actor)
        log.info("deliveries retried", extra=fields(deliveries=reset, actor=actor))
        return (f"{len(reset)} deliver{'y' if len(reset) == 1 else 'ies'} due again now: "
                f"{', '.join(map(str, reset)) or 'none'}")


class _Connection(NamedTuple):
    sock: socket.socket
    address: tuple
    deadline: float
    """``time.monotonic()`` when the connection is closed, whatever it is doing."""


def _answer_busy(sock: socket.socket) -> None:
    """Answer :data:`BUSY` and close, without a thread and without waiting: what the client has
    sent is read first (once, at most 64 KiB), so that closing sends FIN rather than RST and the
    client gets to read the answer."""
    sock.setblocking(False)
    with suppress(OSError):
        sock.recv(65536)
        sock.send(BUSY)
    sock.close()


def _shut(sock: socket.socket) -> None:
    """Shut a connection down both ways: a worker blocked reading it reads end of file, one
    blocked writing it gets an error."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _PooledHTTPServer(HTTPServer):
    """An HTTP server whose connections cost a thread only while a request is read and answered.

    - An accepted connection waits in a selector, without a thread, for its first bytes; at most
      ``WAITING_PER_WORKER * workers`` of them wait: a new one beyond that closes the one that
      has waited longest.
    - A connection with bytes to read goes to one of ``workers`` threads, started with the
      server; when none is free it is answered 503 with ``Retry-After`` and closed.
    - Every connection is shut down ``timeout`` seconds after it was accepted, whether it is
      waiting, being read or being answered: a client that sends or reads slowly holds a worker
      that long at most.
    - One request per connection: the handler answers HTTP/1.0 and closes (no keep-alive).
    """

    request_queue_size = 128  # listen backlog; the loop accepts as fast as connections come

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 workers: int, timeout: float) -> None:
        super().__init__(address, handler)
        self.socket.setblocking(False)  # accept() after a client gave up raises, never blocks
        self.connection_timeout = timeout
        self._capacity = WAITING_PER_WORKER * workers
        self._free = threading.Semaphore(workers)
        self._queue: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()
        self._waiting: dict[socket.socket, _Connection] = {}  # in the order accepted
        self._busy: dict[socket.socket, float] = {}  # handed to a worker, to its deadline
        self._lock = threading.Lock()  # _busy: the loop shuts down only what no worker closed
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._workers = [threading.Thread(target=self._work, name=f"status-http-{i}",
                                          daemon=True) for i in range(workers)]

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections, hand out those with a request and close those past their
        deadline until :meth:`shutdown`; deadlines and the stop are looked at every
        ``poll_interval`` seconds at least."""
        for worker in self._workers:
            worker.start()
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept(selector)
                    elif key.fileobj in self._waiting:  # not closed by an accept before it
                        self._dispatch(selector, key.fileobj)
                self._expire(selector, time.monotonic())
            while self._waiting:
                self._drop(selector, next(iter(self._waiting)))
        with self._lock:
            for sock in self._busy:
                _shut(sock)
        for _ in self._workers:
            self._queue.put(None)
        end = time.monotonic() + self.connection_timeout
        for worker in self._workers:
            worker.join(max(end - time.monotonic(), 0))
        self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving: waiting connections are closed, those being answered shut down;
        returns when the workers have ended (or a timeout later)."""
        self._stopping.set()
        self._stopped.wait()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            sock, address = self.socket.accept()
        except OSError:  # the client gave up before it was accepted, or no descriptor is left
            return
        sock.setblocking(True)  # workers read and write it blocking, until the deadline shuts it
        if len(self._waiting) >= self._capacity:
            self._drop(selector, next(iter(self._waiting)))
        self._waiting[sock] = _Connection(sock, address,
                                          time.monotonic() + self.connection_timeout)
        selector.register(sock, selectors.EVENT_READ)

    def _dispatch(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        selector.unregister(sock)
        connection = self._waiting.pop(sock)
        if not self._free.acquire(blocking=False):
            _answer_busy(sock)
            return
        with self._lock:
            self._busy[sock] = connection.deadline
        self._queue.put(connection)

    def _drop(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        selector.unregister(sock)
        del self._waiting[sock]
        sock.close()

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        """Close waiting connections past their deadline (the oldest first: the order
        accepted is the order of deadlines), shut down those being answered."""
        while self._waiting and next(iter(self._waiting.values())).deadline <= now:
            self._drop(selector, next(iter(self._waiting)))
        with self._lock:
            for sock in [sock for sock, deadline in self._busy.items() if deadline <= now]:
                del self._busy[sock]
                _shut(sock)

    def _work(self) -> None:
        while (connection := self._queue.get()) is not None:
            try:
                self.finish_request(connection.sock, connection.address)
            except OSError as exc:  # the client went away, or the deadline shut the socket
                log.debug("status connection ended early", extra=fields(error=str(exc)))
            except Exception:  # a fault in a page: logged, and the worker serves on
                log.exception("status request failed")
            finally:
                with self._lock:
                    self._busy.pop(connection.sock, None)
                self.shutdown_request(connection.sock)
                self._free.release()


class _PooledHTTPServerV6(_PooledHTTPServer):
    address_family = socket.AF_INET6


def _same_origin(headers, host_header: str | None) -> bool:
    """The request's Origin (or, lacking it, Referer) names the host the request was sent to
    (http, or https behind a TLS-terminating proxy that keeps the Host header)."""
    if not host_header:
        return False
    claimed = headers.get("Origin") or headers.get("Referer")
    if not claimed:
        return False
    parts = urlsplit(claimed)
    return parts.scheme in ("http", "https") and parts.netloc == host_header


def _handler_for(status: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"radiomics-node/{__version__}"
        protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive to hold

        def log_message(self, format: str, *args: object) -> None:
            """Requests are not logged line by line (the paths carry no patient data, but a
            scraper every few seconds would bury the node's own events)."""

        def _send(self, code: int, body: bytes, content_type: str,
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy",
                             "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _refuse(self, code: HTTPStatus, reason: str) -> None:
            self._send(code, f"{reason}\n".encode(), "text/plain; charset=utf-8")

        def _host_served(self) -> bool:
            """Whether the request names a host this server answers to; if not, it has been
            answered: 400 without exactly one valid ``Host`` (RFC 9112 3.2), 421 Misdirected
            Request (RFC 9110 15.5.20) for a host not in ``status.allowed_hosts`` and the
            server's own names, as a page fetched through a rebound DNS name sends."""
            values = self.headers.get_all("Host") or []
            name = host_name(values[0]) if len(values) == 1 else None
            if name is None:
                self._refuse(HTTPStatus.BAD_REQUEST, "exactly one valid Host header required")
                return False
            if name not in status.hosts:
                self._refuse(HTTPStatus.MISDIRECTED_REQUEST,
                             "this host name is not served here (status.allowed_hosts)")
                return False
            return True

        def _body_length(self) -> int | None:
            """The length of the request body, to be read; None when the request has been
            answered instead, without reading the body: 411 for a transfer coding or no
            ``Content-Length`` (RFC 9112 6.1, 6.3; RFC 9110 15.5.12), 400 for several
            ``Content-Length`` fields or one that is not decimal digits (RFC 9112 6.3, RFC 9110
            8.6), 413 for more than ``MAX_FORM_BYTES`` (RFC 9110 15.5.14)."""
            if self.headers.get("Transfer-Encoding") is not None:
                self._refuse(HTTPStatus.LENGTH_REQUIRED,
                             "Transfer-Encoding is not accepted: send Content-Length")
                return None
            values = self.headers.get_all("Content-Length") or []
            if not values:
                self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
                return None
            value = values[0].strip()
            if len(values) > 1 or not (value.isascii() and value.isdigit()):
                self._refuse(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
                return None
            if int(value) > MAX_FORM_BYTES:
                self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "form too large")
                return None
            return int(value)

        def _user(self) -> str | None:
            user = status.authenticate(self.headers.get("Authorization"))
            if user is None:
                self._send(HTTPStatus.UNAUTHORIZED, b"authentication required\n",
                           "text/plain; charset=utf-8",
                           {"WWW-Authenticate": 'Basic realm="radiomics-node"'})
            return user

        def do_GET(self) -> None:
            if not self._host_served():
                return
            path = urlsplit(self.path).path
            if path == "/healthz":  # no credentials: service managers and probes call it
                health = status.health()
                body = json.dumps(health.as_json(), indent=1).encode()
                self._send(HTTPStatus.OK if health.ok else HTTPStatus.SERVICE_UNAVAILABLE,
                           body, "application/json")
                return
            user = self._user()
            if user is None:
                return
            if path == "/metrics":
                self._send(HTTPStatus.OK, render_metrics(status.config, status.index,
                                                         status.health),
                           "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/":
                message = parse_qs(urlsplit(self.path).query).get("message", [""])[0]
                self._send(HTTPStatus.OK, status.render_page(message).encode(),
                           "text/html; charset=utf-8")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

        def do_POST(self) -> None:
            if not self._host_served():
                return
            if urlsplit(self.path).path != "/deliveries/retry":
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
                return
            user = self._user()
            if user is None:
                return
            if not _same_origin(self.headers, self.headers.get("Host")):
                self._send(HTTPStatus.FORBIDDEN, b"cross-origin request refused\n",
                           "text/plain; charset=utf-8")
                return
            length = self._body_length()
            if length is None:
                return
            body = self.rfile.read(length)
            if len(body) < length:  # the client closed, or its deadline shut the connection
                return  # an incomplete message (RFC 9112 8): nothing is done, nothing to answer
            form = parse_qs(body.decode("ascii", "replace"))
            token = form.get("csrf", [""])[0]
            if not hmac.compare_digest(token.encode(), status.csrf_token.encode()):
                self._send(HTTPStatus.FORBIDDEN, b"missing or stale form token: reload the page\n",
                           "text/plain; charset=utf-8")
                return
            message = status.retry(form, user)
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain",
                       {"Location": f"/?message={quote(message)}"})

    return Handler
