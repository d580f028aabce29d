// Loads the official MicroPython WebAssembly build with firmware/pilecore in its file system
// (at /lib/pilecore, /lib on sys.path) and returns { mp, output } for the helper scripts.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

export async function loadCore() {
  const state = { output: "" };
  const mp = await loadMicroPython({ heapsize: 64 * 1024 * 1024, stdout: (s) => { state.output += s + "\n"; } });
  mp.FS.mkdirTree("/lib/pilecore");
  const src = path.join(root, "firmware", "pilecore");
  for (const name of fs.readdirSync(src)) {
    if (name.endsWith(".py")) mp.FS.writeFile("/lib/pilecore/" + name, fs.readFileSync(path.join(src, name)));
  }
  mp.runPython('import sys\nsys.path.insert(0, "/lib")');
  return { mp, state };
}
