"""Go's own text/template, to render the Modelfile TEMPLATEs ``export`` writes as Ollama (a Go
program) would: the npm package @evertdespiegeleer/go-template ships Go's text/template compiled
to WebAssembly, run here by Node. Installed once per machine into the user's cache, like the
llama.cpp sources in vocab_files.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.vocab_files import REAL_CACHE, REAL_HOME_ENV

PACKAGE = "@evertdespiegeleer/go-template@1.0.2"
#: Seconds npm may take to fetch the package (about 1.5 MB).
INSTALL_TIMEOUT = 300

_SCRIPT = """
import { parse } from %s;
const jobs = JSON.parse(await new Promise((ok) => { let s = ""; process.stdin.on("data", (d) => s += d); process.stdin.on("end", () => ok(s)); }));
const out = [];
for (const job of jobs) {
  try { out.push({ text: await parse(job.template, job.values) }); }
  catch (e) { out.push({ error: String(e && e.message || e) }); }
}
process.stdout.write(JSON.stringify(out));
"""


def _engine() -> Path:
    folder = REAL_CACHE / "llamashare-test" / "go-template-1.0.2"
    main = folder / "node_modules" / "@evertdespiegeleer" / "go-template" / "dist" / "main.js"
    if main.is_file():
        return main
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "Node.js and npm are needed for the Go template tests (apt install nodejs npm)"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: v for k, v in REAL_HOME_ENV.items() if v is not None}}
    p = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), PACKAGE],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env=env,
    )
    assert p.returncode == 0 and main.is_file(), f"npm install {PACKAGE} failed: {p.stderr[-2000:]}"
    return main


def render_go(jobs: Sequence[tuple[str, object]]) -> list[str]:
    """Each (template, values) rendered by Go's text/template; an error is raised as AssertionError."""
    main = _engine()
    script = main.parent.parent / "llamashare-render.mjs"
    script.write_text(_SCRIPT % json.dumps(main.as_uri()))
    p = subprocess.run(
        ["node", str(script)],
        input=json.dumps([{"template": t, "values": v} for t, v in jobs]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads(p.stdout)
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[:3]
    return [r["text"] for r in results]
