"""Inputs that once took gigabytes or never finished, each now refused in one line, fast.

Each bomb runs in a child process with its address space capped (RLIMIT_AS) and a timeout, so a
regression fails the test (a MemoryError traceback, a timeout, a peak over the bound) instead of
taking the test machine down. Bounds are fixed in advance, far from both sides: the refusals
measure ~30-130 MB and well under a second; the bombs measured 1.2-8 GB and 16 s to forever.
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from llamashare.errors import InferenceError
from tests.hostile import binbytes8, hf_model, meta_stride0, write_pth, zero_bytes_pickle

REPO = Path(__file__).resolve().parent.parent
#: Address space a child may map (numba alone maps ~340 MB of it): a bomb stops here.
ADDRESS_SPACE = 1536 * 2**20
#: Resident memory a refusal may reach (measured: 30-135 MB, the interpreter and its imports).
PEAK_RSS = 250 * 2**20
TIMEOUT = 60.0


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes
    seconds: float


def bounded(code: str, *args: str) -> Outcome:
    """Run ``code`` (a script) in a child capped at ADDRESS_SPACE; its own peak RSS is reported
    by the child itself at exit (getrusage of the parent's children would mix in earlier ones)."""
    script = (
        "import atexit as _a, resource as _r, sys as _s\n"
        "_a.register(lambda: print('PEAK', _r.getrusage(_r.RUSAGE_SELF).ru_maxrss * 1024, file=_s.stderr))\n"
    ) + textwrap.dedent(code)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    start = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=cap,
        cwd=REPO,
    )
    seconds = time.monotonic() - start
    peaks = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("PEAK ")]
    return Outcome(p.returncode, p.stdout, p.stderr, peaks[-1] if peaks else -1, seconds)


#: The child's side: call, and print the error's class and its one line (a traceback otherwise).
REFUSED = """
    import sys
    from pathlib import Path
    from llamashare.errors import LlamashareError
    try:
        {call}
        print("ACCEPTED")
    except LlamashareError as e:
        print("REFUSED", type(e).__name__, str(e))
"""


def refused(call: str, *args: str) -> tuple[str, Outcome]:
    out = bounded(REFUSED.format(call=call), *args)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert 0 < out.peak_rss <= PEAK_RSS, f"peak RSS {out.peak_rss / 2**20:.0f} MB"
    assert out.seconds < 20, f"{out.seconds:.1f} s"
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("REFUSED"), line
    return line, out


CONVERT = "from llamashare.quant.convert import convert; convert(Path(sys.argv[1]), Path(sys.argv[2]), 'f32')"


# -- convert: the config against the tensors, before anything is built --------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ({"vocab_size": 30_000_000}, "has shape [300, 64], the config implies [30000000, 64]"),
        ({"num_hidden_layers": 100_000_000}, "the config says 100000000 layers, but the checkpoint has tensors for 2"),
        ({"num_attention_heads": 4_000_000, "head_dim": 1}, "the config implies [4000000, 64]"),
        ({"head_dim": 10**9, "rope_scaling": {"rope_type": "llama3"}}, "the config implies"),
    ],
)
def test_config_sizes_are_checked_against_the_tensors_first(tmp_path: Path, config: dict, message: str) -> None:
    """Before: vocab_size 3·10^7 took 2.6 GB and 16 s (the vocabulary was padded to it before
    any shape was checked); num_hidden_layers 10^8 reached 7.4 GB in 120 s without finishing."""
    root = hf_model(tmp_path / "m", config)
    line, _ = refused(CONVERT, str(root), str(tmp_path / "x.gguf"))
    assert "CheckpointError" in line and message in line, line
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("where", ["added_tokens", "vocab"])
def test_token_ids_beyond_the_embedding_are_refused(tmp_path: Path, where: str) -> None:
    """Before: an added token id of 10^9 built a 10^9-entry vocabulary (8 GB, then ENOMEM)."""

    def tok(doc: dict) -> None:
        if where == "added_tokens":
            doc["added_tokens"][0]["id"] = 10**9
        elif where == "vocab":
            doc["model"]["vocab"]["a"] = 10**9

    root = hf_model(tmp_path / "m", tokenizer=tok)
    line, _ = refused(CONVERT, str(root), str(tmp_path / "x.gguf"))
    assert "has token id 1000000000, outside the model's vocabulary of 300" in line, line


# -- .pth: the pickle and the views ----------------------------------------------------------------

ARCHIVE = (
    "from llamashare.quant.torch_pickle import TorchArchive; "
    "[t.load() for t in TorchArchive(Path(sys.argv[1])).tensors.values()]"
)


def test_compressed_pickle_is_refused_before_inflating(tmp_path: Path) -> None:
    """Before: a 600 KB deflated data.pkl inflated to 1.2 GB of memory (11.7 s)."""
    path = tmp_path / "consolidated.00.pth"
    write_pth(path, zero_bytes_pickle(300 * 2**20), compress_pickle=True)
    assert path.stat().st_size < 400_000
    line, _ = refused(ARCHIVE, str(path))
    assert "data.pkl is compressed; torch.save never compresses it" in line, line


@pytest.mark.parametrize(
    "pickle_bytes, message",
    [
        (binbytes8(2**44, b"x" * 16), "expected 17592186044416 bytes in a bytes8, but only 17 remain"),
        (b"\x80\x02N" + b"r" + struct.pack("<I", 2**27) + b".", "stores an object at memo index 134217728"),
    ],
    ids=["BINBYTES8 length", "memo index"],
)
def test_pickle_sizes_are_bounded_by_the_bytes_present(tmp_path: Path, pickle_bytes: bytes, message: str) -> None:
    """Before: BINBYTES8 claiming 2^44 bytes was a MemoryError traceback; a 9-byte pickle whose
    LONG_BINPUT names memo index 2^27 made the unpickler zero a 2 GB memo table (4.7 s)."""
    path = tmp_path / "consolidated.00.pth"
    write_pth(path, pickle_bytes)
    line, _ = refused(ARCHIVE, str(path))
    assert message in line, line


def test_stride0_views_do_not_become_a_huge_gguf(tmp_path: Path) -> None:
    """Before: a 1.5 KB .pth of stride-0 views converted to an 861 MB GGUF (25 s); every view
    is now checked against its storage when the archive opens."""
    root = meta_stride0(tmp_path / "m", dim=512, n_vocab=1000)
    assert (root / "consolidated.00.pth").stat().st_size < 4096
    line, _ = refused(CONVERT, str(root), str(tmp_path / "x.gguf"))
    assert "tok_embeddings.weight is a view whose elements overlap" in line, line
    assert not (tmp_path / "x.gguf").exists()


# -- chat templates: bounded in time and size ---------------------------------------------------

TEMPLATES = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(n=100000000) }}",
    "repetition": "{{ 'a' * 4000000000 }}",
    "printf width": "{{ '%2000000000s' % 'x' }}",
    "format width": "{{ '{:2000000000}'.format('x') }}",
    "big range": "{{ range(10**30) }}",
    "recursive macro": "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "loop over a string": "{% for a in 'x' * 1000000 %}{% for b in 'y' * 1000000 %}{% endfor %}{% endfor %}",
    "doubling": "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "buffered literal": "{% macro b() %}{% for i in range(100000) %}"
    + "y" * 10000
    + "{% endfor %}{% endmacro %}{{ b() }}",
}
CHAT = """
    import json, time
    from types import SimpleNamespace
    from llamashare.errors import InferenceError
    from llamashare.infer.chat import render
    tok = SimpleNamespace(tokens=["<s>", "</s>"], bos=0, eos=1)
    for name, template in json.loads(sys.argv[1]).items():
        start = time.monotonic()
        try:
            render(template, [{"role": "user", "content": "hi"}], tok)
            print("RENDERED", name)
        except InferenceError as e:
            print("REFUSED", round(time.monotonic() - start, 2), name, "|", e)
"""


def test_hostile_templates_stop_in_time_and_memory() -> None:
    """Before: nested ranges and lipsum(n=10^8) never finished; 'a' * 4·10^9 reached 3.9 GB
    and a MemoryError, a width of 2·10^9 5.8 GB; range(10**30) was an OverflowError and a
    recursive macro a RecursionError, both tracebacks."""
    from llamashare.infer.chat import RENDER_SECONDS

    out = bounded("import sys\n" + textwrap.dedent(CHAT), json.dumps(TEMPLATES))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert 0 < out.peak_rss <= PEAK_RSS, f"peak RSS {out.peak_rss / 2**20:.0f} MB"
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(TEMPLATES) and all(line.startswith("REFUSED") for line in lines), out.stdout
    for line in lines:
        seconds = float(line.split()[1])
        assert seconds <= RENDER_SECONDS + 1.0, line
        assert "the model's chat template failed: " in line and "\n" not in line
    assert "ran for more than 2 s" in lines[0] and "past a limit" in lines[1]


# -- run: the context ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llamashare.quant.convert import convert

    root = tmp_path_factory.mktemp("bombs")
    convert(hf_model(root / "m"), root / "m.gguf", "f32")  # trained on 256 tokens (the sample's config)
    return root / "m.gguf"


def test_huge_context_is_refused_in_one_line(small_gguf: Path) -> None:
    """Before: run -c 100000000 tried an 11.9 GiB allocation (a NumPy MemoryError traceback)."""
    out = bounded(
        "import sys\nfrom llamashare.cli import main\nsys.argv = ['llamashare', *sys.argv[1:]]\nmain()",
        "run",
        str(small_gguf),
        "-p",
        "hi",
        "-n",
        "1",
        "-c",
        "100000000",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: a context of 100000000 tokens was asked; this model was trained on 256, so the limit is 4096 tokens"
    ], out.stderr
    assert 0 < out.peak_rss <= PEAK_RSS


def test_context_is_capped_by_the_memory_available(small_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A context the training length allows but the machine cannot hold is refused before any
    allocation, with what it needs, what there is and how many tokens would fit."""
    import llamashare.infer.model as model

    monkeypatch.setattr(model, "available_memory", lambda: 2**20)
    with pytest.raises(InferenceError) as info:
        model.Llama(small_gguf, n_ctx=4096)
    per_token = model.context_bytes(model.ModelFile(small_gguf).config, 1)
    assert str(info.value) == (
        f"a context of 4096 tokens was asked; its key/value cache needs {4096 * per_token / 2**30:.1f} GiB and "
        f"0.0 GiB of memory are available, so the limit here is {2**20 // per_token} tokens"
    )
    monkeypatch.setattr(model, "available_memory", lambda: None)  # unknown: only the training limit applies
    assert model.Llama(small_gguf, n_ctx=4096).n_ctx == 4096
