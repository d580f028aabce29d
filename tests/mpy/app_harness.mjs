// The whole ESP32 gateway (firmware/pilefw's App) on the official MicroPython WebAssembly VM,
// with its UARTs, console and MQTT socket bridged to real endpoints.
//
//   node tests/mpy/app_harness.mjs        (driven by hil/pilehil/mpyapp.py: JSON lines on stdio)
//
// Design (docs/esp32.md, "The App on MicroPython in CI"):
//
// * The VM runs on this (main) thread. Python code calls the JS module `pgbridge` (registered
//   here) synchronously; bytes never cross as Python objects: every stream (a UART, the console,
//   each TCP connection) is an emscripten device file /dev/pg/<name> whose read pulls bytes from
//   a JS queue and whose write appends to one, so Python moves bytes with plain file I/O.
// * Pseudo-terminals (the meter simulator's bus, a console pty) are read and written here with
//   non-blocking synchronous fs calls.  TCP (the broker, an rtu+tcp bus) lives on a worker
//   thread, because Node has no synchronous sockets: a call posts a request to the worker and
//   blocks this thread in Atomics.wait on a SharedArrayBuffer until the worker has answered
//   (data copied into the shared buffer), so a blocking socket read in MicroPython is a real
//   blocking read with its timeout.
// * The flash (/data) is a host directory mounted into the VM's file system (hostDirFs): what
//   the App writes is in the host's file system when write() returns, ENOSPC from the host is
//   the board's OSError(28), and a SIGKILL of this process keeps it all, as a board keeps its
//   flash through a power cut.  Everything else (/lib, /config.json) is in the VM's memory.
// * The clock is this process's: ticks_ms from performance.now(), time from Date.now(), both
//   plus a skew that the driver moves forward (`advance`) to skip idle time.
// * This VM collects garbage only when control returns to JavaScript, so memory is measured
//   between main-loop passes, each pass being its own runPython call (see `step`).
//
// Requests (one JSON object per line on stdin), answers {"id", "ok", "result" | "error"}:
//   {"op": "init", "lib": dir, "files": {vmpath: base64}, "streams": {name: endpoint},
//    "data": {"mount": "/data", "dir": hostdir}}
//        endpoint "pty:/dev/pts/N" or "tcp:host:port"; lib is copied to /lib (pilecore, pilefw,
//        umqtt as .py or .mpy, plus vmhw.py); data mounts a host directory at /data (the
//        flash, see hostDirFs); files are written into the VM's file system (through the
//        mount for paths under it, into the VM's memory for the rest).
//   {"op": "exec", "code": str}          run Python; answers the JSON text left in `_r`, if any
//   {"op": "step", "n": int, "mem": bool, "until": str?, "idle_ms": int?}
//        n main-loop passes (`_h.step()`), stopping early when the Python expression `until`
//        is true; with mem, the live set after each pass and the pass's allocations; with
//        idle_ms, a pass that did nothing is followed by a nap that long (App.run's idle nap)
//   {"op": "advance", "ms": int}         move the VM's clock forward
//   {"op": "mem"}                        the memory figures so far (see memState)
//   {"op": "exit"}
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { fileURLToPath } from "node:url";

const DATA_BYTES = 1 << 16;
// Emscripten errno numbers (WASI's: the VM's libc), for the errors its FS layer understands.
const EM = { ENOENT: 44, EEXIST: 20, ENOTDIR: 54, EISDIR: 31, ENOTEMPTY: 55, EINVAL: 28, EBADF: 8, EIO: 29 };
// ENOSPC as the ESP32's MicroPython raises it from LittleFS: OSError(28) (newlib's number).
// The VM's own ENOSPC would be 51 (WASI); a full flash must look the same as on a board.
const BOARD_ENOSPC = 28;

if (!isMainThread) {
  netWorker();
} else {
  await main();
}

// ------------------------------------------------------------------ the TCP worker

function netWorker() {
  const ctrl = new Int32Array(workerData.ctrl);
  const data = new Uint8Array(workerData.data);
  const conns = new Map(); // name -> {sock, rx: Buffer[], eof, err, waiter}

  function answer(status, bytes) {
    let n = 0;
    if (bytes) {
      n = bytes.length;
      data.set(bytes, 0);
    }
    Atomics.store(ctrl, 1, status);
    Atomics.store(ctrl, 2, n);
    Atomics.store(ctrl, 0, 1);
    Atomics.notify(ctrl, 0);
  }

  function take(c, max) {
    const out = [];
    let n = 0;
    while (c.rx.length && n < max) {
      const head = c.rx[0];
      const k = Math.min(head.length, max - n);
      out.push(head.subarray(0, k));
      n += k;
      if (k === head.length) c.rx.shift();
      else c.rx[0] = head.subarray(k);
    }
    return Buffer.concat(out, n);
  }

  function serveWait(c, max) {
    if (c.rx.length) return answer(1, take(c, max));
    if (c.eof || c.err) return answer(c.err ? -2 : -1, null);
    return null;
  }

  parentPort.on("message", (m) => {
    if (m.op === "connect") {
      const sock = net.createConnection({ host: m.host, port: m.port });
      const c = { sock, rx: [], eof: false, err: null, waiter: null };
      let settled = false;
      const timer = setTimeout(() => {
        if (!settled) {
          settled = true;
          sock.destroy();
          answer(-110, null);
        }
      }, m.timeout < 0 ? 60000 : m.timeout);
      sock.setNoDelay(true);
      sock.on("connect", () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        conns.set(m.name, c);
        answer(0, null);
      });
      const wake = () => {
        if (c.waiter) {
          const w = c.waiter;
          if (serveWait(c, w.max) !== null || c.rx.length || c.eof || c.err) {
            clearTimeout(w.timer);
            c.waiter = null;
          }
        }
      };
      sock.on("data", (buf) => {
        c.rx.push(buf);
        wake();
      });
      sock.on("end", () => {
        c.eof = true;
        wake();
      });
      sock.on("error", (e) => {
        c.err = e;
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          answer(-111, null);
          return;
        }
        wake();
      });
      sock.on("close", () => {
        c.eof = true;
        wake();
      });
    } else if (m.op === "write") {
      const c = conns.get(m.name);
      if (!c || c.err || c.eof) return answer(-32, null);
      c.sock.write(Buffer.from(data.subarray(0, m.len)));
      answer(m.len, null);
    } else if (m.op === "wait") {
      const c = conns.get(m.name);
      if (!c) return answer(-9, null);
      if (serveWait(c, m.max) !== null) return;
      if (m.timeout === 0) return answer(0, null);
      const timer = setTimeout(() => {
        c.waiter = null;
        answer(0, null);
      }, m.timeout < 0 ? 3600000 : m.timeout);
      c.waiter = { max: m.max, timer };
    } else if (m.op === "close") {
      const c = conns.get(m.name);
      if (c) {
        c.sock.destroy();
        conns.delete(m.name);
      }
      answer(0, null);
    }
  });
}

// ------------------------------------------------------------------ the flash: a host directory

// A host directory mounted into the VM (`FS.mount(hostDirFs(FS), {root: dir}, "/data")`): this
// build has no NODEFS, so this is the part of it the App needs.  MicroPython's VfsPosix file
// objects (the ones `open()` returns) call the VM's libc, whose syscalls end here, one host
// syscall each: a write() is a pwrite on the host file (so the bytes are in the host's file
// system, and survive a SIGKILL of this process, once write() returns), flush() is an fsync,
// os.rename a rename(2) (atomic replace), os.remove an unlink.  A write is whole or refused, as
// LittleFS's: when the host refuses part of it (a full file system) what it did write is cut
// off again and the VM gets OSError(28).  Nothing is cached here: sizes and listings are the
// host's at each call.  The file contents never enter the VM's heap.
function hostDirFs(FS) {
  function errno(e) {
    if (e && e.name === "ErrnoError") return e;
    const code = e && e.code;
    if (code === "ENOSPC" || code === "EDQUOT") return new FS.ErrnoError(BOARD_ENOSPC);
    return new FS.ErrnoError(EM[code] || EM.EIO);
  }
  function host(fn) {
    try {
      return fn();
    } catch (e) {
      throw errno(e);
    }
  }
  function realPath(node) {
    const parts = [];
    while (node.parent !== node) {
      parts.push(node.name);
      node = node.parent;
    }
    parts.push(node.mount.opts.root);
    return path.join(...parts.reverse());
  }
  function statOf(p) {
    const st = fs.lstatSync(p);
    return {
      dev: st.dev,
      ino: st.ino,
      mode: st.mode,
      nlink: st.nlink,
      uid: st.uid,
      gid: st.gid,
      rdev: st.rdev,
      size: st.size,
      blksize: st.blksize,
      blocks: st.blocks,
      atime: st.atime,
      mtime: st.mtime,
      ctime: st.ctime,
    };
  }
  let node_ops = null;
  let stream_ops = null;
  function createNode(parent, name, mode) {
    const node = FS.createNode(parent, name, mode, 0);
    node.node_ops = node_ops;
    node.stream_ops = stream_ops;
    return node;
  }
  node_ops = {
    getattr: (node) => host(() => statOf(realPath(node))),
    setattr(node, attr) {
      const p = realPath(node);
      host(() => {
        if (attr.mode !== undefined) {
          fs.chmodSync(p, attr.mode & 0o7777);
          node.mode = (node.mode & ~0o7777) | (attr.mode & 0o7777);
        }
        if (attr.size !== undefined) fs.truncateSync(p, attr.size);
      });
    },
    lookup(parent, name) {
      const p = path.join(realPath(parent), name);
      let st;
      try {
        st = fs.lstatSync(p);
      } catch (e) {
        throw errno(e);
      }
      return createNode(parent, name, st.mode);
    },
    mknod(parent, name, mode) {
      const p = path.join(realPath(parent), name);
      host(() => {
        if (FS.isDir(mode)) fs.mkdirSync(p, { mode: mode & 0o7777 });
        else fs.closeSync(fs.openSync(p, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o600));
      });
      return createNode(parent, name, FS.isDir(mode) ? mode : (mode & ~0o7777) | 0o600);
    },
    rename(oldNode, newDir, newName) {
      const from = realPath(oldNode);
      const to = path.join(realPath(newDir), newName);
      host(() => fs.renameSync(from, to)); // replaces `to` in one step, as LittleFS's rename
      // the replaced file's node (FS.rename looked it up before calling here) is gone
      for (let n = FS.nameTable[FS.hashName(newDir.id, newName)]; n; n = n.name_next) {
        if (n !== oldNode && n.parent.id === newDir.id && n.name === newName) {
          FS.hashRemoveNode(n);
          break;
        }
      }
      oldNode.name = newName;
    },
    unlink: (parent, name) => host(() => fs.unlinkSync(path.join(realPath(parent), name))),
    rmdir: (parent, name) => host(() => fs.rmdirSync(path.join(realPath(parent), name))),
    readdir: (node) => [".", "..", ...host(() => fs.readdirSync(realPath(node)))],
    statfs(root) {
      const st = host(() => fs.statfsSync(root));
      return {
        bsize: st.bsize,
        frsize: st.bsize,
        blocks: st.blocks,
        bfree: st.bfree,
        bavail: st.bavail,
        files: st.files,
        ffree: st.ffree,
      };
    },
  };
  stream_ops = {
    open(stream) {
      if (FS.isFile(stream.node.mode)) stream.nfd = host(() => fs.openSync(realPath(stream.node), stream.flags & 3));
    },
    dup(stream) {
      if (FS.isFile(stream.node.mode)) stream.nfd = host(() => fs.openSync(realPath(stream.node), stream.flags & 3));
    },
    close(stream) {
      if (stream.nfd !== undefined) {
        const fd = stream.nfd;
        stream.nfd = undefined;
        host(() => fs.closeSync(fd));
      }
    },
    read(stream, buffer, offset, length, position) {
      if (!length) return 0;
      return host(() => fs.readSync(stream.nfd, buffer, offset, length, position));
    },
    write(stream, buffer, offset, length, position) {
      if (!length) return 0;
      const fd = stream.nfd;
      const before = host(() => fs.fstatSync(fd).size);
      let n = 0;
      try {
        while (n < length) {
          const k = fs.writeSync(fd, buffer, offset + n, length - n, position + n);
          if (k <= 0) throw Object.assign(new Error("short write"), { code: "ENOSPC" });
          n += k;
        }
      } catch (e) {
        // whole or nothing: cut off what this write added past the old end
        if (n > 0 && position + n > before) {
          try {
            fs.ftruncateSync(fd, Math.max(before, position));
          } catch {
            // the host cannot even do that: the App's recovery finds a torn tail
          }
        }
        throw errno(e);
      }
      return n;
    },
    llseek(stream, offset, whence) {
      let pos = offset;
      if (whence === 1) pos += stream.position;
      else if (whence === 2 && FS.isFile(stream.node.mode)) pos += host(() => fs.fstatSync(stream.nfd).size);
      if (pos < 0) throw new FS.ErrnoError(EM.EINVAL);
      return pos;
    },
    fsync(stream) {
      if (stream.nfd !== undefined) host(() => fs.fsyncSync(stream.nfd));
      return 0;
    },
  };
  return {
    mount(mount) {
      const st = host(() => fs.statSync(mount.opts.root));
      if (!st.isDirectory()) throw new FS.ErrnoError(EM.ENOTDIR);
      return createNode(null, "/", st.mode);
    },
  };
}

// ------------------------------------------------------------------ the main thread

async function main() {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
  const { loadMicroPython } = await import("@micropython/micropython-webassembly-pyscript");

  let captured = [];
  const mp = await loadMicroPython({
    heapsize: 64 * 1024,
    stdout: (s) => captured.push(s),
    stderr: (s) => process.stderr.write("[vm] " + s + "\n"),
  });
  const FS = mp.FS;

  const ctrlSab = new SharedArrayBuffer(16);
  const dataSab = new SharedArrayBuffer(DATA_BYTES);
  const ctrl = new Int32Array(ctrlSab);
  const data = new Uint8Array(dataSab);
  const worker = new Worker(fileURLToPath(import.meta.url), { workerData: { ctrl: ctrlSab, data: dataSab } });
  worker.unref();

  function netCall(msg, waitMs) {
    Atomics.store(ctrl, 0, 0);
    worker.postMessage(msg);
    const r = Atomics.wait(ctrl, 0, 0, waitMs + 10000);
    if (r === "timed-out") throw new Error("the network worker did not answer " + msg.op);
    const status = Atomics.load(ctrl, 1);
    const n = Atomics.load(ctrl, 2);
    return { status, bytes: n ? Buffer.from(data.subarray(0, n)) : null };
  }

  // streams: name -> {kind, rx: number[], tx: number[], fd?}
  const streams = new Map();
  let skewMs = 0;
  const t0 = performance.now();
  FS.mkdirTree("/dev/pg");

  function device(name, st) {
    FS.createDevice(
      "/dev/pg",
      name,
      () => (st.rx.length ? st.rx.shift() : null),
      (b) => {
        if (b !== null && b !== undefined) st.tx.push(b & 0xff);
      },
    );
  }

  function ptyPull(st) {
    const buf = Buffer.alloc(4096);
    for (;;) {
      let n = 0;
      try {
        n = fs.readSync(st.fd, buf, 0, buf.length, null);
      } catch (e) {
        if (e.code === "EAGAIN" || e.code === "EWOULDBLOCK") return;
        if (e.code === "EIO") return; // the other side is not open (yet)
        throw e;
      }
      if (n <= 0) return;
      for (let i = 0; i < n; i++) st.rx.push(buf[i]);
    }
  }

  function openStream(name, endpoint) {
    const st = { name, rx: [], tx: [], kind: "", fd: -1 };
    if (endpoint.startsWith("pty:")) {
      st.kind = "pty";
      st.fd = fs.openSync(endpoint.slice(4), fs.constants.O_RDWR | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK);
    } else if (endpoint.startsWith("tcp:")) {
      st.kind = "tcpdev";
      const i = endpoint.lastIndexOf(":");
      st.host = endpoint.slice(4, i);
      st.port = Number(endpoint.slice(i + 1));
      st.name = name;
      const r = netCall({ op: "connect", name, host: st.host, port: st.port, timeout: 5000 }, 5000);
      if (r.status !== 0) throw new Error("cannot connect stream " + name + " to " + endpoint);
    } else {
      throw new Error("unknown endpoint " + endpoint + ' (want "pty:PATH" or "tcp:HOST:PORT")');
    }
    streams.set(name, st);
    device(name, st);
  }

  function pull(st, max, timeoutMs) {
    if (st.kind === "pty") {
      ptyPull(st);
      if (st.rx.length || timeoutMs === 0) return st.rx.length;
      const deadline = performance.now() + (timeoutMs < 0 ? 3600000 : timeoutMs);
      const nap = new Int32Array(new SharedArrayBuffer(4));
      while (!st.rx.length && performance.now() < deadline) {
        Atomics.wait(nap, 0, 0, 1);
        ptyPull(st);
      }
      return st.rx.length;
    }
    if (st.rx.length) return st.rx.length;
    const r = netCall({ op: "wait", name: st.name, max, timeout: timeoutMs }, timeoutMs < 0 ? 3600000 : timeoutMs);
    if (r.bytes) for (const b of r.bytes) st.rx.push(b);
    if (r.status < 0 && !st.rx.length) return r.status;
    return st.rx.length;
  }

  function push(st) {
    if (!st.tx.length) return 0;
    const bytes = Buffer.from(st.tx);
    st.tx = [];
    if (st.kind === "pty") {
      let off = 0;
      while (off < bytes.length) {
        try {
          off += fs.writeSync(st.fd, bytes, off, bytes.length - off);
        } catch (e) {
          if (e.code !== "EAGAIN") throw e;
          const nap = new Int32Array(new SharedArrayBuffer(4));
          Atomics.wait(nap, 0, 0, 1);
        }
      }
      return bytes.length;
    }
    for (let off = 0; off < bytes.length; off += DATA_BYTES) {
      const chunk = bytes.subarray(off, Math.min(bytes.length, off + DATA_BYTES));
      data.set(chunk, 0);
      const r = netCall({ op: "write", name: st.name, len: chunk.length }, 5000);
      if (r.status < 0) return r.status;
    }
    return bytes.length;
  }

  let connSeq = 0;
  const bridge = {
    // streams (UARTs, console, TCP connections)
    avail: (name) => pull(streams.get(name), 4096, 0),
    wait: (name, max, timeoutMs) => pull(streams.get(name), max, timeoutMs),
    flush: (name) => push(streams.get(name)),
    connect: (host, port, timeoutMs) => {
      const name = "tcp" + ++connSeq;
      const r = netCall({ op: "connect", name, host, port, timeout: timeoutMs }, timeoutMs < 0 ? 60000 : timeoutMs);
      if (r.status !== 0) return r.status;
      const st = { name, rx: [], tx: [], kind: "tcp" };
      streams.set(name, st);
      device(name, st);
      return name;
    },
    close: (name) => {
      const st = streams.get(name);
      if (st && st.kind === "tcp") {
        netCall({ op: "close", name }, 1000);
        streams.delete(name);
        try {
          FS.unlink("/dev/pg/" + name);
        } catch {
          // already gone
        }
      }
      return 0;
    },
    // the clock
    ticks_ms: () => Math.floor(performance.now() - t0 + skewMs) % 0x40000000,
    time: () => Math.floor((Date.now() + skewMs) / 1000),
    sleep_ms: (ms) => {
      const nap = new Int32Array(new SharedArrayBuffer(4));
      Atomics.wait(nap, 0, 0, Math.max(0, ms));
      return 0;
    },
  };
  mp.registerJsModule("pgbridge", bridge);

  // ---------------------------------------------------------------- memory figures
  const memState = {
    passes: 0,
    live: 0, // live set after the last pass (bytes, after a full collection)
    peak_live: 0, // the largest live set after any pass
    peak_live_pass: 0,
    max_block: 0, // the largest single block on the heap (live or garbage) seen after any pass
    max_pass_alloc: 0, // the most bytes allocated by one pass (garbage included)
    heap_total: 0, // the VM heap's size (it grows; the ESP32's does not)
    peak_modules: [], // sys.modules at the peak
  };

  function gcInfo() {
    captured = [];
    mp.runPython("_mi()");
    const text = captured.join("\n");
    captured = [];
    const blk = /max blk sz: (\d+)/.exec(text);
    const tot = /GC: total: (\d+)/.exec(text);
    return { maxBlockBytes: blk ? Number(blk[1]) * 16 : 0, total: tot ? Number(tot[1]) : 0 };
  }

  function collectAndMeasure() {
    mp.runPython("gc.collect()"); // collected when control comes back here
    mp.runPython("_m = gc.mem_alloc()");
    return mp.globals.get("_m");
  }

  // idleMs > 0: a pass that did nothing is followed by a nap of idleMs, as App.run naps on a
  // board (hw.sleep_ms(5)), so a free-running VM does not spin a host core at 100 %.
  function stepPasses(n, withMem, until, idleMs) {
    let did = 0;
    let passes = 0;
    let stopped = false;
    for (let i = 0; i < n; i++) {
      let before = 0;
      if (withMem) before = collectAndMeasure();
      mp.runPython("_d = _h.step()\n_a = gc.mem_alloc()");
      passes += 1;
      memState.passes += 1;
      if (mp.globals.get("_d")) did += 1;
      else if (idleMs > 0) bridge.sleep_ms(idleMs);
      if (withMem) {
        const after = mp.globals.get("_a");
        const info = gcInfo();
        memState.max_pass_alloc = Math.max(memState.max_pass_alloc, after - before);
        memState.max_block = Math.max(memState.max_block, info.maxBlockBytes);
        memState.heap_total = Math.max(memState.heap_total, info.total);
        const live = collectAndMeasure();
        memState.live = live;
        if (live > memState.peak_live) {
          memState.peak_live = live;
          memState.peak_live_pass = memState.passes;
          // which modules were loaded at the peak (their code is part of it); read after the
          // measurement, collected before the next one
          mp.runPython("_r = json.dumps(sorted(k for k in sys.modules))");
          memState.peak_modules = JSON.parse(mp.globals.get("_r"));
        }
      }
      if (until) {
        mp.runPython("_u = bool(" + until + ")");
        if (mp.globals.get("_u")) {
          stopped = true;
          break;
        }
      }
    }
    return { passes, did, until: stopped, mem: { ...memState } };
  }

  function copyTree(src, dst) {
    FS.mkdirTree(dst);
    for (const name of fs.readdirSync(src).sort()) {
      const s = path.join(src, name);
      if (fs.statSync(s).isDirectory()) {
        if (name !== "__pycache__") copyTree(s, dst + "/" + name);
      } else if (name.endsWith(".py") || name.endsWith(".mpy")) {
        FS.writeFile(dst + "/" + name, fs.readFileSync(s));
      }
    }
  }

  const ops = {
    init(req) {
      if (req.data) {
        // the App's flash: a host directory, so it can fill up and survives this process
        FS.mkdirTree(req.data.mount);
        FS.mount(hostDirFs(FS), { root: path.resolve(req.data.dir) }, req.data.mount);
      }
      copyTree(req.lib, "/lib");
      FS.writeFile("/lib/vmhw.py", fs.readFileSync(path.join(root, "tests", "mpy", "vmhw.py")));
      FS.writeFile("/lib/usocket.py", "from vmhw import socket, getaddrinfo  # noqa\n");
      FS.writeFile("/lib/vmbinascii.py", fs.readFileSync(path.join(root, "tests", "mpy", "vmbinascii.py")));
      for (const [p, b64] of Object.entries(req.files || {})) {
        FS.mkdirTree(path.posix.dirname(p));
        FS.writeFile(p, Buffer.from(b64, "base64"));
      }
      for (const [name, endpoint] of Object.entries(req.streams || {})) openStream(name, endpoint);
      mp.runPython(
        'import sys, gc, json, micropython\nsys.path.insert(0, "/lib")\n' +
          // the ESP32's binascii is C; the VM's is O(n^2) in memory (tests/mpy/vmbinascii.py)
          "import vmbinascii\nsys.modules['binascii'] = sys.modules['ubinascii'] = vmbinascii\n" +
          "def _mi():\n    micropython.mem_info()\n",
      );
      mp.runPython("_r = '%d.%d.%d' % sys.implementation.version[:3]");
      return { version: mp.globals.get("_r") };
    },
    exec(req) {
      captured = [];
      mp.runPython("_r = None");
      mp.runPython(req.code);
      const r = mp.globals.get("_r");
      const out = captured.join("\n");
      captured = [];
      return { value: typeof r === "string" ? JSON.parse(r) : null, stdout: out };
    },
    step(req) {
      return stepPasses(req.n || 1, !!req.mem, req.until || "", req.idle_ms || 0);
    },
    advance(req) {
      skewMs += req.ms;
      return { skew_ms: skewMs };
    },
    measure() {
      const live = collectAndMeasure();
      const info = gcInfo();
      return { live, max_block: info.maxBlockBytes, heap_total: info.total };
    },
    mem() {
      return { ...memState };
    },
    reset_mem() {
      for (const k of Object.keys(memState)) memState[k] = 0;
      memState.peak_modules = [];
      return {};
    },
    exit() {
      for (const st of streams.values()) if (st.kind === "pty") fs.closeSync(st.fd);
      setImmediate(() => process.exit(0));
      return {};
    },
  };

  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let req;
    let answer;
    try {
      req = JSON.parse(line);
      const fn = ops[req.op];
      if (!fn) throw new Error("unknown op " + req.op);
      answer = { id: req.id, ok: true, result: fn(req) };
    } catch (e) {
      const text = e && e.name === "PythonError" ? e.type + ": " + e.message : String(e && e.stack ? e.stack : e);
      answer = { id: req ? req.id : null, ok: false, error: text, stdout: captured.join("\n") };
      captured = [];
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  }
  process.exit(0);
}
