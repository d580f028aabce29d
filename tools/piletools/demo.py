"""`make demo` / `pilegate demo`: the whole chain on one machine, no hardware, no setup.

A private mosquitto on a free port, the example 8-pile site simulated (meters, presence sensors,
pile controllers, vehicles arriving, charging, overstaying and parking as fuel cars, plate
reads), `pilegate run` as the gateway, and the reference verifier printing live verified
readings.  Ctrl-C (or --duration) stops everything cleanly and prints the verifier's account.
Everything lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pilegate import keys, siteconfig
from pilehil import sitesim
from pilehil.broker import Broker
from piletools.receiver import KeyRegister, Receiver
from piletools.verify import Subscriber, summary_lines

ROOT = Path(__file__).resolve().parents[2]


def demo_site_text(text: str, broker_url: str, socket: Path) -> str:
    """The example site, pointed at the private broker and a private console socket."""
    text = re.sub(
        r"(?ms)^\[mqtt\]\n.*?(?=^\[)",
        f'[mqtt]\nurl = "{broker_url}"\nallow_insecure = true   # demo: a private broker on this machine\n\n',
        text,
    )
    text = re.sub(r"(?ms)^\[signing\]\n.*?(?=^\[)", "", text)
    text = re.sub(r"(?ms)^\[console\]\n.*?(?=^\[)", f'[console]\nsocket = "{socket}"\n\n', text)
    text = re.sub(r'(?m)^plate_broker = ".*"', f'plate_broker = "{broker_url}"', text)
    return text


class InputsWriter(threading.Thread):
    """Keeps a JSON file of the simulated board inputs' levels for the gateway (HIL GPIO)."""

    def __init__(self, inputs: Any, names: list[str], path: Path):
        super().__init__(name="inputs", daemon=True)
        self.inputs, self.names, self.path = inputs, names, path
        self.stop = threading.Event()
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: self.inputs.read(n) for n in self.names}))
        tmp.replace(self.path)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.write()


class PlatePublisher(threading.Thread):
    """Publishes the simulated cameras' plate reads to the local plate topic."""

    def __init__(self, feed: Any, url: str, topic: str):
        super().__init__(name="plates", daemon=True)
        self.feed, self.topic = feed, topic
        host, port = url.split("://")[1].rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-cameras")
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for read in self.feed.poll():
                self.client.publish(self.topic, json.dumps(read), qos=1)

    def close(self) -> None:
        self.stop.set()
        self.client.loop_stop()
        self.client.disconnect()


def main(args: Any) -> int:
    site_file = Path(args.site or ROOT / "examples" / "site.toml")
    site, problems = siteconfig.load_site(site_file)
    if site is None:
        for p in problems:
            print(p, file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pilegate-demo-"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    broker = sim = gw = sub = plates = inputs = None
    try:
        broker = Broker(work / "broker").start()
        print(f"demo: private mosquitto at {broker.url}")
        # vehicles come every 20 s to 5 min per bay, so there is something to see at once
        sim, _ = sitesim.build(site.config, seed=args.seed, gap_s=(5, 120))
        sim.start()
        sim_site = work / "sim-site.toml"
        sitesim.write_site(site_file, sim_site, sim, site.config)
        demo_site = work / "demo-site.toml"
        demo_site.write_text(demo_site_text(sim_site.read_text(), broker.url, work / "console.sock"))
        print(
            f"demo: simulated site {site.config['gateway']['site']}: "
            + ", ".join(f"{n} on {ep}" for n, ep in sim.endpoints.items())
        )
        data = work / "data"
        key, _ = keys.load_or_create(data)
        register = KeyRegister()
        register.add(site.config["gateway"]["id"], key.public_pem)
        receiver = Receiver(register)
        sub = Subscriber(receiver, broker.url, "pilegate/v1/+/+/+", client_id="demo-verifier").start()
        feed = getattr(sim, "bays", None)
        env = dict(os.environ)
        if feed is not None:
            plates = PlatePublisher(
                feed.plates, broker.url, site.config.get("bays", {}).get("plate_topic", "pilegate/local/plates")
            )
            plates.start()
            names = [i["name"] for i in site.config["board_def"].get("input", [])]
            inputs = InputsWriter(feed.inputs, names, work / "inputs.json")
            inputs.start()
            env["PILEGATE_FAKE_INPUTS"] = str(work / "inputs.json")
        with open(work / "gateway.log", "w") as log:
            gw = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pilegate.cli",
                    "run",
                    str(demo_site),
                    "--data-dir",
                    str(data),
                    "--interval",
                    str(args.interval),
                    "--poll",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        print(f"demo: gateway {site.config['gateway']['id']} running (kid {key.kid[:16]}...), log {work}/gateway.log")
        print(f"demo: technician console: pilegate console --socket {work}/console.sock")
        print("demo: verified readings every few seconds; Ctrl-C stops everything\n", flush=True)
        end = time.monotonic() + args.duration if args.duration else None
        while not stop.wait(5.0):
            if gw.poll() is not None:
                print(f"demo: the gateway stopped unexpectedly (exit {gw.returncode}); see {work}/gateway.log")
                break
            with sub.lock:
                lines = summary_lines(receiver)
            print(time.strftime("%H:%M:%S"), "verified:")
            print("\n".join(lines) if lines else "  (waiting for the first messages)", flush=True)
            if end is not None and time.monotonic() >= end:
                break
    finally:
        if gw is not None and gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(20)
            except subprocess.TimeoutExpired:
                gw.kill()
        if plates is not None:
            plates.close()
        if inputs is not None:
            inputs.stop.set()
        if sub is not None:
            time.sleep(0.5)
            sub.stop()
            text, _ = sub.receiver.report()
            print("\ndemo: the verifier's account:\n" + text)
        if sim is not None:
            sim.stop()
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if (gw is not None and gw.returncode == 0) else 1
