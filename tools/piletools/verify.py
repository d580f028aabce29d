"""`pilegate verify`: the reference receiver for platform operators.

Subscribes to every gateway under a prefix (MQTT 5; with --share several instances split a
fleet through a shared subscription and write one SQLite store), verifies each message with the
key register, applies the receiver rules of docs/telemetry.md, stores accepted messages, and
prints a live summary per gateway.  `--report` prints the final account from the store and
exits 1 if any gap is open or any signature, link or replay check failed.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from piletools.receiver import KeyRegister, Receiver, Verdict


def rebuild(receiver: Receiver, store: Path) -> None:
    """Load every stored message into the receiver's accounts (for --report and restarts)."""
    import sqlite3

    db = sqlite3.connect(str(store))
    try:
        rows = db.execute("SELECT gw, seq, kind, hash, body FROM msg ORDER BY gw, seq").fetchall()
        rejected = db.execute("SELECT gw, status, n FROM rejected").fetchall()
    except sqlite3.OperationalError:
        rows, rejected = [], []
    db.close()
    for gw, status, n in rejected:
        acct = receiver.account(gw)
        if status == "bad_signature":
            acct.bad_signatures += n
        elif status == "replay":
            acct.replays += n
    for gw, seq, _kind, digest, body in rows:
        acct = receiver.account(gw)
        data = json.loads(body)
        acct.messages += 1
        acct.hashes[seq] = digest
        acct.prevs[seq] = data.get("prev", "")
        acct.high = max(acct.high, seq)
    for acct in receiver.accounts.values():
        for seq in sorted(acct.prevs):
            receiver._check_link(acct, seq, Verdict("accepted"))


class Subscriber:
    """An MQTT 5 client feeding a Receiver."""

    def __init__(
        self,
        receiver: Receiver,
        url: str,
        topic: str,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        share: str | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
        client_id: str | None = None,
    ):
        """client_id: fixed per verifier instance so the broker keeps its session (and the
        messages queued for it) while it is disconnected; default pilegate-verify-<pid>."""
        self.receiver = receiver
        self.on_verdict = on_verdict or (lambda v: None)
        scheme, _, rest = url.partition("://")
        host, _, port = rest.split("/")[0].rpartition(":")
        self.host, self.port = host, int(port)
        self.topic = f"$share/{share}/{topic}" if share else topic
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged the subscription
        cid = client_id or f"pilegate-verify-{os.getpid()}-{id(self) & 0xFFFF:x}"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        if scheme == "mqtts":
            c.tls_set(
                ca_certs=ca_file,
                certfile=cert_file,
                keyfile=key_file,
                cert_reqs=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED,
            )
            if insecure:
                c.tls_insecure_set(True)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.reconnect_delay_set(1, 10)
        self.client = c

    def _on_disconnect(self, *_: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            return
        client.subscribe(self.topic, options=SubscribeOptions(qos=1))
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            verdict = self.receiver.accept(msg.topic, bytes(msg.payload))
        self.on_verdict(verdict)

    def start(self) -> Subscriber:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def summary_lines(receiver: Receiver) -> list[str]:
    out = []
    for gw in sorted(receiver.accounts):
        a = receiver.accounts[gw]
        gaps = a.gaps()
        line = (
            f"{gw}: {a.messages} verified (seq {a.base}-{a.high}), {a.duplicates} dup, "
            f"{sum(y - x + 1 for x, y in gaps)} missing, {a.bad_signatures} bad sig, {a.replays} replay, "
            f"{len(a.broken_links)} broken"
        )
        out.append(line)
        tele = a.last_telemetry
        if tele:
            for p in tele.get("data", {}).get("piles", []):
                kwh = p.get("energy_wh")
                out.append(
                    f"    {p['pile']:<6} {('%.3f kWh' % (kwh / 1000)) if kwh is not None else '-':>14} "
                    f"{_w(p.get('power_w')):>9} W  {'metered' if p.get('metered') else 'UNMETERED'}"
                    f"{'  stale' if p.get('stale') else ''}"
                )
            bays = tele.get("data", {}).get("bays", [])
            if bays:
                out.append("    bays: " + "  ".join(f"{b.get('bay')}={b.get('state')}" for b in bays))
    return out


def _w(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(args: Any) -> int:
    if args.report:
        if not args.store:
            print("pilegate verify --report needs --store FILE (the database a verifier wrote)", file=sys.stderr)
            return 2
        receiver = Receiver(KeyRegister(), args.prefix)
        rebuild(receiver, Path(args.store))
        text, clean = receiver.report()
        print(text)
        return 0 if clean else 1
    try:
        keys = KeyRegister.load(args.keys)
    except (OSError, ValueError, KeyError) as exc:
        print(f"{args.keys}: cannot load the key register: {exc}", file=sys.stderr)
        return 2
    receiver = Receiver(
        keys, args.prefix, Path(args.store) if args.store else None, from_first_seen=args.from_first_seen
    )
    if args.store:
        rebuild(receiver, Path(args.store))
    topic = f"{args.prefix}/+/+/+"
    sub = Subscriber(receiver, args.broker, topic, args.ca, args.cert, args.key, args.insecure, args.share).start()
    end = time.monotonic() + args.duration if args.duration else None
    try:
        while end is None or time.monotonic() < end:
            time.sleep(min(args.every, max(0.0, (end or 1e18) - time.monotonic())))
            with sub.lock:
                lines = summary_lines(receiver)
            print(time.strftime("%H:%M:%S"), "verified so far:")
            print("\n".join(lines) if lines else "  (nothing yet)", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sub.stop()
    text, clean = receiver.report()
    print(text)
    return 0 if clean else 1
