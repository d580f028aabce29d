"""A private mosquitto for tests, the demo and HIL runs: free loopback port, optional TLS.

`Broker(workdir).start()` writes a mosquitto.conf into workdir and starts the real broker from
Debian's package; `make_pki()` creates a throw-away CA, a server certificate for localhost and
a client certificate with `cryptography` (nothing is ever written outside workdir, and nothing
is committed).  The broker can be stopped and restarted on the same port to test outages.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("mosquitto is not installed; run 'make setup' (it installs Debian's mosquitto)")


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, host: str = "localhost") -> Pki:
    """A test CA, a server certificate for `host` (and 127.0.0.1), and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pilegate test CA")])
    ca = _cert("pilegate test CA", ca_key, ca_name, ca_key, True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert(
        host, srv_key, ca_name, ca_key, False, [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("pilegate-test-client", cli_key, ca_name, ca_key, False)
    pki = Pki(
        folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem", folder / "client.key"
    )
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.server_key, srv_key)
    pki.client_cert.write_bytes(cli.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.client_key, cli_key)
    return pki


class Broker:
    """A mosquitto process on 127.0.0.1; plain MQTT, or TLS when `tls` is set."""

    def __init__(
        self,
        workdir: Path,
        tls: bool = False,
        require_client_cert: bool = False,
        port: int | None = None,
        persistence: bool = False,
        users: dict[str, str] | None = None,
        log_connections: bool = False,
    ):
        """persistence: keep retained messages and persistent sessions (with their queued
        messages) across a clean stop and start, as a production broker does.
        users: user name -> password; anonymous clients are then refused (a password file
        made with Debian's mosquitto_passwd).  log_connections: log every connection attempt
        (mosquitto's `notice` lines: "New connection from ...", "... not authorised"), so a
        test can count them with `connection_attempts()`."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.port = port or free_port()
        self.pki = make_pki(self.workdir / "pki") if tls else None
        self.persistence = persistence
        self.users = users
        self.log_connections = log_connections
        self._baseline = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.port}" if self.tls else f"mqtt://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false" if self.users else "allow_anonymous true",
            f"password_file {self._password_file()}" if self.users else "",
            "persistence true" if self.persistence else "persistence false",
            f"persistence_location {self.workdir}/" if self.persistence else "",
            # run as root (CI), mosquitto would drop to user "mosquitto" and lose access to
            # the key files in workdir; keep the invoking user instead
            "user root" if os.geteuid() == 0 else "",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice" if self.log_connections else "",
        ]
        if self.pki is not None:
            lines += [f"cafile {self.pki.ca}", f"certfile {self.pki.server_cert}", f"keyfile {self.pki.server_key}"]
            if self.require_client_cert:
                lines.append("require_certificate true")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(ln for ln in lines if ln) + "\n")
        return conf

    def _password_file(self) -> Path:
        path = self.workdir / "passwd"
        path.write_text("")
        path.chmod(0o600)
        for user, password in (self.users or {}).items():
            subprocess.run(
                [shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(path), user, password],
                check=True,
                capture_output=True,
            )
        return path

    def _logged_connections(self) -> int:
        if not self.log.exists():
            return 0
        # "New connection from" once MQTT may start (after the TLS handshake, with TLS); "Client
        # connection from ... failed" for a connection whose TLS handshake failed
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if "New connection from" in line or "Client connection from" in line)

    def connection_attempts(self) -> int:
        """TCP connections the broker logged since start(), not counting start()'s own probe
        (needs log_connections=True)."""
        return self._logged_connections() - self._baseline

    def start(self, timeout: float = 10.0) -> Broker:
        conf = self._config()
        self._baseline = self._logged_connections()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.02)
                continue
            if self.log_connections:  # the probe is logged too: wait for it, then start counting
                while self._logged_connections() <= self._baseline and time.monotonic() < deadline:
                    time.sleep(0.01)
                self._baseline = self._logged_connections()
            return self
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly (an outage, not a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
