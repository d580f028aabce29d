"""The ESP32's device key, start counter and small state files on flash.

Device key (ECDSA P-256):
- generated ON the device at first start from 48 bytes of `os.urandom` (the ESP32's hardware
  RNG) through `pilecore.ecdsa.private_key_from_seed`, and stored as its 32 raw big-endian bytes
  in `<root>/device.key`, written to a temporary file first and renamed, so a power cut leaves
  either no key or a whole one;
- never printed, logged, returned or put in an exception message: only `kid`, `pem` (the
  public key) and the two signing functions leave this module, and `repr()` shows the kid only;
- MicroPython's file systems have no permission bits.  The flash is reachable only through
  the USB/serial console (mpremote, the REPL), which production builds replace with the
  technician console, and the console never prints the key (`keys` shows the public part).
  On CPython (tests) the file is created with mode 0600 where `os.chmod` exists.

State files: small JSON documents (core snapshot, command replay guard, settings) written
atomically: `<name>.json.tmp` is written and flushed, then renamed over `<name>.json`.  A file
system whose rename does not replace (FAT) gets remove + rename; if a cut falls between the
two, the complete `.tmp` is what `load()` finds.  A file that does not parse reads as absent.

The start counter (`epoch` of every message) lives in the state file `epoch`.
"""

import json
import os

from pilecore import ecdsa, envelope

KEY_FILE = "device.key"
SEED_BYTES = 48


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def makedirs(path):
    """mkdir -p (MicroPython's os has no makedirs)."""
    if not path or exists(path):
        return
    parent = path.rsplit("/", 1)[0] if "/" in path.rstrip("/") else ""
    if parent and parent != path:
        makedirs(parent)
    try:
        os.mkdir(path)
    except OSError:
        if not exists(path):
            raise


def _sync(f):
    f.flush()
    fsync = getattr(os, "fsync", None)
    if fsync is not None:
        fsync(f.fileno())


def write_atomic(path, data, private=False):
    """Replace the file at `path` with `data` (bytes) so a cut leaves the old or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        chmod = getattr(os, "chmod", None)
        if private and chmod is not None:
            chmod(tmp, 0o600)
        f.write(data)
        _sync(f)
    try:
        os.rename(tmp, path)
    except OSError:
        # A file system whose rename does not replace: the complete .tmp stands in meanwhile.
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)
    sync = getattr(os, "sync", None)
    if sync is not None:
        sync()


def read_bytes(path):
    """The file's bytes, its complete stand-in `.tmp` when only that exists, or None."""
    for p in (path, path + ".tmp"):
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError:
            pass
    return None


def remove(path):
    for p in (path, path + ".tmp"):
        try:
            os.remove(p)
        except OSError:
            pass


class KeyStore:
    """The device key; see the module docstring.  `rand(n) -> n random bytes`."""

    def __init__(self, root, rand=None):
        self.root = root
        self.path = root + "/" + KEY_FILE
        self.rand = rand or getattr(os, "urandom", None)  # the ESP32's hardware RNG
        self._d = None
        self.pub = None
        self.kid = None
        self.pem = None

    def __repr__(self):
        return "KeyStore(kid=%s...)" % (self.kid or "none")[:16]

    def load_or_create(self):
        """Load the key, generating it on first start.  Returns True when it was created.

        Raises ValueError when the file exists but does not hold a valid key: the gateway must
        not silently replace a key the platform has registered."""
        raw = read_bytes(self.path)
        created = False
        if raw is not None and len(raw) != 32 and not exists(self.path):
            raw = None  # only a torn .tmp of an interrupted first generation: start again
        if raw is None:
            makedirs(self.root)
            d = ecdsa.private_key_from_seed(self.rand(SEED_BYTES))
            write_atomic(self.path, ecdsa.private_key_bytes(d), private=True)
            created = True
        else:
            try:
                d = ecdsa.private_key_from_bytes(raw)
            except ValueError:
                raise ValueError(
                    "%s does not hold a valid device key (%d bytes); factory-reset "
                    "the gateway and register its new key" % (self.path, len(raw))
                )
        self._d = d
        self.pub = ecdsa.public_key(d)
        self.kid = envelope.key_id(ecdsa.spki_der(self.pub))
        self.pem = ecdsa.spki_pem(self.pub)
        return created

    def sign_raw(self, msg):
        """ES256 signature as 64 bytes r || s (JWS)."""
        r, s = ecdsa.sign(self._d, msg)
        return ecdsa.sig_raw(r, s)

    def sign_der(self, msg):
        """ECDSA-SHA256 signature in DER (OCMF)."""
        r, s = ecdsa.sign(self._d, msg)
        return ecdsa.sig_der(r, s)

    def wipe(self):
        """Forget the key (factory reset): the next start generates a new one."""
        remove(self.path)
        self._d = None


class StateDir:
    """Small JSON state files in one directory; see the module docstring."""

    def __init__(self, root):
        self.root = root
        makedirs(root)

    def path(self, name):
        return "%s/%s.json" % (self.root, name)

    def load(self, name, default=None):
        raw = read_bytes(self.path(name))
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError:
            return default

    def save(self, name, obj):
        write_atomic(self.path(name), json.dumps(obj).encode())

    def remove(self, name):
        remove(self.path(name))

    def next_epoch(self):
        """The start counter: +1 per start, persisted before it is used."""
        n = self.load("epoch", {}).get("epoch", 0) + 1
        self.save("epoch", {"epoch": n})
        return n
