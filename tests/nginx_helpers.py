"""Run the shipped nginx configuration, deploy/nginx/huddle.conf, in a temporary prefix.

The site file is used as shipped except for its addresses. The upstream ports, the listen port
and the log directory are replaced with the test's own. Every location, header and timeout
under test is therefore the one that operators install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "deploy" / "nginx" / "huddle.conf"

# The addresses in the shipped file that the test replaces.
HUDDLE_ADDRESS = "127.0.0.1:8000"
NEXTJS_ADDRESS = "127.0.0.1:3000"
LISTEN_DIRECTIVE = "listen 80;"
LOG_DIRECTORY = "/var/log/nginx/"

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class NginxNotFound(RuntimeError):
    """The nginx binary is not installed."""


def find_nginx() -> str:
    """Return the path of the nginx binary, from PATH or /usr/sbin/nginx."""
    found = shutil.which("nginx")
    if found is not None:
        return found

    # /usr/sbin is missing from PATH for non-root users on Debian.
    fallback = Path("/usr/sbin/nginx")
    if fallback.is_file() and os.access(fallback, os.X_OK):
        return str(fallback)

    raise NginxNotFound(
        "nginx not found on PATH or at /usr/sbin/nginx, and the nginx tests need a real nginx. "
        "Install it with `apt-get install -y nginx-light` "
        "(or `apt-get install -y nginx` where nginx-light does not exist)."
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def render_site(text: str, *, huddle_port: int, nextjs_port: int, listen_port: int, log_dir: Path) -> str:
    """Point the shipped site at the test's servers, port and log directory.

    Raises ValueError when the shipped file no longer contains an address this helper replaces,
    so that a changed config fails loudly instead of being tested against the wrong servers.
    """
    replacements = [
        (HUDDLE_ADDRESS, f"127.0.0.1:{huddle_port}"),
        (NEXTJS_ADDRESS, f"127.0.0.1:{nextjs_port}"),
        (LISTEN_DIRECTIVE, f"listen 127.0.0.1:{listen_port};"),
        (LOG_DIRECTORY, f"{log_dir}/"),
    ]
    for original, replacement in replacements:
        if original not in text:
            raise ValueError(
                f"{SHIPPED_CONFIG} no longer contains {original!r}. "
                "Update the replacements in tests/nginx_helpers.py."
            )
        text = text.replace(original, replacement)
    return text


def main_config(prefix: Path, site: Path) -> str:
    """Return an nginx.conf that keeps every file nginx writes inside `prefix`."""
    # A master process started as root runs its workers as `nobody`, and they could not write
    # the request body buffers into this root-owned temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}"
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/logs/error.log notice;\n"
        "\n"
        "events {\n"
        "    worker_connections 256;\n"
        "}\n"
        "\n"
        "http {\n"
        f"    access_log {prefix}/logs/access.log;\n"
        f"    client_body_temp_path {prefix}/temp/client_body;\n"
        f"    proxy_temp_path {prefix}/temp/proxy;\n"
        f"    fastcgi_temp_path {prefix}/temp/fastcgi;\n"
        f"    uwsgi_temp_path {prefix}/temp/uwsgi;\n"
        f"    scgi_temp_path {prefix}/temp/scgi;\n"
        "\n"
        f"    include {site};\n"
        "}\n"
    )


@dataclass
class Nginx:
    """An nginx process in the foreground, serving the rendered site on 127.0.0.1:`port`."""

    binary: str
    prefix: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def access_log(self) -> Path:
        """The access log of every request, the site's SSE locations included."""
        return self.prefix / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def stderr_log(self) -> Path:
        return self.prefix / "logs" / "stderr.log"

    def command(self, *extra: str) -> list[str]:
        # `-e` sets the error log used before nginx.conf is read, which is otherwise under /var/log.
        return [
            self.binary, "-p", f"{self.prefix}/", "-c", str(self.config_path),
            "-e", str(self.error_log), *extra,
        ]

    def check_config(self) -> None:
        """Run `nginx -t`, raising RuntimeError with nginx's output when the config is invalid."""
        result = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"nginx -t failed for {self.config_path}:\n{result.stderr}")

    def start(self) -> None:
        """Start nginx and wait until it accepts connections on its port."""
        # A session of its own lets stop() reach the worker processes if the master hangs.
        with open(self.stderr_log, "ab") as stderr:
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with code {self.process.returncode}\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)

        self.stop()
        raise TimeoutError(f"nginx did not accept connections on port {self.port} "
                           f"within {START_TIMEOUT_SECONDS} s\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop nginx with a fast shutdown (SIGTERM), which also closes open WebSockets and streams."""
        if self.process is None:
            return

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of nginx's error log and standard error, for failure messages."""
        parts = []
        for path in (self.error_log, self.stderr_log):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"{path.name}:\n" + "\n".join(tail))
        return "\n".join(parts)


@contextmanager
def running_nginx(binary: str, prefix: Path, *, huddle_port: int, nextjs_port: int) -> Iterator[Nginx]:
    """Render the shipped site into `prefix`, check it with `nginx -t`, and run nginx."""
    for directory in ("logs", "temp"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)

    nginx = Nginx(binary, prefix, free_port())
    site = prefix / "huddle.conf"
    site.write_text(
        render_site(
            SHIPPED_CONFIG.read_text(),
            huddle_port=huddle_port, nextjs_port=nextjs_port, listen_port=nginx.port,
            log_dir=prefix / "logs",
        )
    )
    nginx.config_path.write_text(main_config(prefix, site))

    nginx.check_config()
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()
