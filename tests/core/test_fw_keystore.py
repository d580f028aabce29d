"""The ESP32's device key and state files (firmware/pilefw/keystore.py), on both interpreters.

Real files: a temporary directory on CPython, MicroPython's in-memory /tmp under the runner.
"""

import os

from mpytest import raises

from pilecore import ecdsa, envelope
from pilefw import keystore

_n = [0]


def fresh(tag):
    """A directory path that does not exist yet."""
    _n[0] += 1
    try:
        import tempfile

        return "%s/%s%d" % (tempfile.mkdtemp(prefix="fwkeys-"), tag, _n[0])
    except ImportError:  # MicroPython
        keystore.makedirs("/tmp/fwkeys")
        return "/tmp/fwkeys/%s%d" % (tag, _n[0])


def rand_bytes(n):
    """Random bytes: os.urandom where the port has it (CPython, the ESP32), else `random`
    (the WebAssembly MicroPython has no os.urandom)."""
    if hasattr(os, "urandom"):
        return os.urandom(n)
    import random

    return bytes([random.getrandbits(8) for _ in range(n)])


def counting_rand():
    calls = []

    def rand(n):
        calls.append(n)
        return rand_bytes(n)

    return rand, calls


def test_key_is_generated_once_from_48_random_bytes_and_loaded_after():
    root = fresh("k")
    rand, calls = counting_rand()
    ks = keystore.KeyStore(root, rand=rand)
    assert ks.load_or_create() is True
    assert calls == [48]
    with open(root + "/device.key", "rb") as f:
        raw = f.read()
    assert len(raw) == 32
    assert ks.kid == envelope.key_id(ecdsa.spki_der(ks.pub)) and len(ks.kid) == 64
    assert ks.pem.startswith("-----BEGIN PUBLIC KEY-----") and ecdsa.parse_spki_pem(ks.pem) == ks.pub
    again = keystore.KeyStore(root, rand=rand)
    assert again.load_or_create() is False
    assert calls == [48] and again.kid == ks.kid


def test_signatures_verify_raw_and_der():
    ks = keystore.KeyStore(fresh("s"), rand=rand_bytes)
    ks.load_or_create()
    sig = ks.sign_raw(b"message")
    assert len(sig) == 64
    r, s = ecdsa.parse_sig_raw(sig)
    assert ecdsa.verify(ks.pub, b"message", r, s)
    r2, s2 = ecdsa.parse_sig_der(ks.sign_der(b"message"))
    assert ecdsa.verify(ks.pub, b"message", r2, s2)
    assert not ecdsa.verify(ks.pub, b"other", r, s)


def test_the_private_key_never_shows_in_repr_or_str():
    root = fresh("r")
    ks = keystore.KeyStore(root, rand=rand_bytes)
    ks.load_or_create()
    with open(root + "/device.key", "rb") as f:
        raw = f.read()
    d = int.from_bytes(raw, "big")
    for text in (repr(ks), str(ks)):
        assert ks.kid[:16] in text
        for secret in (str(d), "%x" % d, "%064x" % d, repr(raw)):
            assert secret not in text


def test_a_damaged_key_file_is_refused_not_replaced():
    root = fresh("d")
    keystore.makedirs(root)
    with open(root + "/device.key", "wb") as f:
        f.write(b"\x00" * 31)
    with raises(ValueError, match="does not hold a valid device key"):
        keystore.KeyStore(root, rand=rand_bytes).load_or_create()
    with open(root + "/device.key", "rb") as f:
        assert f.read() == b"\x00" * 31  # left for a human to look at


def test_a_torn_first_generation_starts_again():
    root = fresh("t")
    keystore.makedirs(root)
    with open(root + "/device.key.tmp", "wb") as f:  # power cut while writing the first key
        f.write(b"\x01\x02\x03")
    ks = keystore.KeyStore(root, rand=rand_bytes)
    assert ks.load_or_create() is True
    with open(root + "/device.key", "rb") as f:
        assert len(f.read()) == 32


def test_wipe_forgets_the_key():
    root = fresh("w")
    ks = keystore.KeyStore(root, rand=rand_bytes)
    ks.load_or_create()
    kid = ks.kid
    ks.wipe()
    assert not keystore.exists(root + "/device.key")
    other = keystore.KeyStore(root, rand=rand_bytes)
    assert other.load_or_create() is True and other.kid != kid


def test_state_files_round_trip_and_replace_atomically():
    st = keystore.StateDir(fresh("state"))
    assert st.load("core") is None and st.load("core", {"x": 1}) == {"x": 1}
    st.save("core", {"a": [1, 2], "b": "x"})
    assert st.load("core") == {"a": [1, 2], "b": "x"}
    st.save("core", {"a": 3})
    assert st.load("core") == {"a": 3}
    assert not keystore.exists(st.path("core") + ".tmp")  # the temporary file was renamed


def test_state_file_cut_during_the_temporary_write_keeps_the_old_version():
    st = keystore.StateDir(fresh("cut"))
    st.save("replay", {"seen": {"c1": 5}})
    with open(st.path("replay") + ".tmp", "wb") as f:  # a torn write of the next version
        f.write(b'{"seen": {"c1"')
    assert st.load("replay") == {"seen": {"c1": 5}}
    st.save("replay", {"seen": {}})  # the next save replaces both
    assert st.load("replay") == {"seen": {}}


def test_state_file_between_remove_and_rename_reads_the_complete_temporary():
    st = keystore.StateDir(fresh("fat"))
    with open(st.path("settings") + ".tmp", "wb") as f:  # FAT fallback cut after remove
        f.write(b'{"interval_s": 60}')
    assert st.load("settings") == {"interval_s": 60}


def test_garbage_state_reads_as_absent_and_epoch_counts_starts():
    st = keystore.StateDir(fresh("e"))
    with open(st.path("core"), "wb") as f:
        f.write(b"\xff\xfenot json")
    assert st.load("core", "default") == "default"
    assert st.next_epoch() == 1
    assert st.next_epoch() == 2
    assert keystore.StateDir(st.root).next_epoch() == 3
