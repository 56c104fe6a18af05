// Runs a Python script on real MicroPython (the WebAssembly port, under Node) with the
// node-side codecs of this repository importable as `owlgate.codecs.node.*`.
//
//   node tests/tools/mpy_run.mjs REPO_ROOT SCRIPT.py
//
// The script's output goes to stdout. A Python exception prints its traceback to stderr and
// exits with status 1.
import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const [repo, script] = process.argv.slice(2);
if (!repo || !script) {
  console.error("usage: mpy_run.mjs REPO_ROOT SCRIPT.py");
  process.exit(2);
}

// Without line buffering the port hands over raw bytes (a number or a byte array per call).
const chunks = [];
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  stdout: (data) => {
    chunks.push(typeof data === "number" ? Buffer.from([data]) : Buffer.from(data));
  },
  linebuffer: false,
});
const flush = () => process.stdout.write(Buffer.concat(chunks));

// The node-side subset: the package markers, the error tree and everything in codecs/node/.
const files = [
  ["codecs/__init__.py", "owlgate/codecs/__init__.py"],
  ["codecs/errors.py", "owlgate/codecs/errors.py"],
];
for (const name of fs.readdirSync(path.join(repo, "codecs/node"))) {
  if (name.endsWith(".py")) files.push([`codecs/node/${name}`, `owlgate/codecs/node/${name}`]);
}
for (const dir of ["/lib", "/lib/owlgate", "/lib/owlgate/codecs", "/lib/owlgate/codecs/node"]) {
  mp.FS.mkdir(dir);
}
mp.FS.writeFile("/lib/owlgate/__init__.py", "");
for (const [src, dst] of files) {
  mp.FS.writeFile(`/lib/${dst}`, fs.readFileSync(path.join(repo, src), "utf8"));
}

const code = fs.readFileSync(script, "utf8");
try {
  mp.runPython("import sys\nsys.path.insert(0, '/lib')\n");
  mp.runPython(code);
} catch (error) {
  flush();
  if (error.name === "PythonError") {
    process.stderr.write(`${error.type}: ${error.message}\n`);
    process.exit(1);
  }
  throw error;
}
flush();
