"""A fault-injecting HTTP proxy on 127.0.0.1, in front of a real local server (STAC API, COG asset server).

The faults are real network faults, seen by the real clients (pystac-client/urllib3, GDAL's curl): an HTTP
status instead of the answer, a connection closed without an answer, a server that sends no byte for a
while. Requests that match no rule, or whose rule is used up, are forwarded to the upstream server and
its answer is passed back (the upstream's own URL rewritten to the proxy's in JSON bodies, so that
pagination ``next`` links and asset hrefs keep going through the proxy).

Hand-written (about a hundred lines of the standard library) because the proxies that inject faults
(toxiproxy, mitmproxy) are not pip/apt installable here or are far heavier than these three faults need.

Run it in a child process (:class:`FaultProxy`), so that a stalled answer never blocks the test's own
threads: ``python tests/fault_proxy.py UPSTREAM_PORT PORT RULES_JSON LOG``. Each request is logged as a JSON
line ``{"method", "path", "action"}`` in LOG, which the tests read to check that the fault happened.

A rule: ``{"match": regex searched in the path, "method": "GET" (optional), "action": "status" | "drop" |
"stall", "status": 500, "seconds": 30, "skip": 0, "times": 1}``: the first ``skip`` matching requests pass,
the next ``times`` (-1: all) get the fault.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "content-length",
       "accept-encoding", "host"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        rule = self.server.pick(self.command, self.path)
        action = rule["action"] if rule else "pass"
        self.server.log(self.command, self.path, action)
        if action == "status":
            payload = json.dumps({"code": "InjectedFault", "description": "fault proxy"}).encode()
            self.send_response(int(rule.get("status", 500)))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if action in ("drop", "stall"):
            if action == "stall":
                time.sleep(float(rule.get("seconds", 30)))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._forward(body)

    def _forward(self, body: bytes | None) -> None:
        up = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Host"] = f"127.0.0.1:{self.server.upstream}"
        up.request(self.command, self.path, body=body, headers=headers)
        resp = up.getresponse()
        data = resp.read()
        if "json" in (resp.getheader("Content-Type") or ""):
            data = data.replace(self.server.upstream_base.encode(), self.server.base.encode())
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        size = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", size)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        up.close()

    do_GET = do_POST = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream: int, rules: list[dict[str, Any]], log_path: Path) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.upstream, self.rules, self.log_path = upstream, rules, log_path
        self.base, self.upstream_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{upstream}"
        self.seen = [0] * len(rules)
        self.lock = threading.Lock()

    def pick(self, method: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for k, rule in enumerate(self.rules):
                if rule.get("method", method) != method or not re.search(rule["match"], path):
                    continue
                self.seen[k] += 1
                n, skip, times = self.seen[k], int(rule.get("skip", 0)), int(rule.get("times", 1))
                if n > skip and (times < 0 or n <= skip + times):
                    return rule
        return None

    def log(self, method: str, path: str, action: str) -> None:
        with self.lock, self.log_path.open("a") as f:
            f.write(json.dumps({"method": method, "path": path, "action": action}) + "\n")


class FaultProxy:
    """The proxy in a child process: ``with FaultProxy(upstream_port, rules, log) as proxy: proxy.url``."""

    def __init__(self, upstream_port: int, rules: list[dict[str, Any]], log: Path) -> None:
        from glacierflow.twin.stac_servers import free_port

        self.upstream, self.rules, self.log_path, self.port = upstream_port, rules, Path(log), free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, str]]:
        """The requests seen so far, in order."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def __enter__(self) -> FaultProxy:
        cmd = [sys.executable, __file__, str(self.upstream), str(self.port), json.dumps(self.rules),
               str(self.log_path)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"fault proxy did not start on port {self.port}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


if __name__ == "__main__":
    upstream, port, rules, log = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), Path(sys.argv[4])
    _Server(port, upstream, rules, log).serve_forever()
