"""Hostile input: mutated GGUF and safetensors headers, .pth pickles, torrent metadata and daemon
API requests each get one clean error (a LlamashareError shown as one line, or a JSON 4xx), never
a crash, a hang, a 5xx or a huge allocation.

Each file target starts from a real, valid file and lets hypothesis flip bytes, overwrite
little-endian counts and lengths with extreme values, and cut the file short; the API target sends
malformed JSON, path tricks and foreign headers to a real daemon. Bounded in count (max_examples)
and per example by the readers' own size checks.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamashare.daemon.client import DaemonClient
from llamashare.errors import LlamashareError
from llamashare.infer.model_file import ModelFile
from llamashare.manifests.torrent import read_torrent
from llamashare.quant import safetensors_io
from llamashare.quant.gguf_file import read_header
from llamashare.quant.torch_pickle import TorchArchive
from tests.helpers import Homes
from tests.torch_format import save_pth

pytestmark = pytest.mark.slow
#: target → [inputs tried, refused with a clean error]
Tally = dict[str, list[int]]
EXTREMES = [0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1]


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    """A few edits of a ``size``-byte file: flip a byte, write an extreme u32/u64, or truncate."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "u32", "u64", "cut"]))
        at = draw(st.integers(0, max(0, size - 1)))
        edits.append(
            (kind, at, draw(st.sampled_from(EXTREMES)) if kind in ("u32", "u64") else draw(st.integers(1, 255)))
        )
    return edits


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, at, value in edits:
        if kind == "flip" and at < len(buf):
            buf[at] ^= value
        elif kind == "u32":
            buf[at : at + 4] = struct.pack("<I", value & 0xFFFFFFFF)
        elif kind == "u64":
            buf[at : at + 8] = struct.pack("<Q", value)
        elif kind == "cut":
            del buf[at:]
    return bytes(buf)


def _attempt(tally: Tally, target: str, path: Path, read) -> None:
    counts = tally.setdefault(target, [0, 0])
    counts[0] += 1
    try:
        read(path)
    except LlamashareError as exc:
        counts[1] += 1
        assert "\n" not in str(exc).strip(), str(exc)
    except MemoryError:  # pragma: no cover - the point of the test
        pytest.fail(f"{target}: a mutated header made the reader allocate without bound")


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from llamashare.quant.convert import convert
    from llamashare.sample import SampleConfig, write_sample_model

    root = tmp_path_factory.mktemp("fuzz")
    write_sample_model(
        root / "m", SampleConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    )
    convert(root / "m", root / "m.gguf", "f16")
    return (root / "m.gguf").read_bytes()


@settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_mutated_gguf_headers_fail_cleanly(small_gguf: bytes, tmp_path: Path, data: st.DataObject) -> None:
    gguf_case(data, small_gguf, tmp_path, {})


def gguf_case(data: st.DataObject, source: bytes, tmp: Path, tally: Tally) -> None:
    header_end = 24 + 4096  # mutate where the counts, lengths and tensor table live
    edits = data.draw(mutations(min(header_end, len(source))))
    path = tmp / "f.gguf"
    path.write_bytes(mutate(source, edits))
    _attempt(tally, "GGUF header (quantize reader)", path, read_header)
    _attempt(tally, "GGUF model (run's checks)", path, ModelFile)


@pytest.fixture(scope="module")
def small_safetensors(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "t.safetensors"
    rng = np.random.default_rng(0)
    safetensors_io.write(
        path, [(f"w{i}", "F32", (4, 8), rng.standard_normal((4, 8), dtype=np.float32)) for i in range(3)]
    )
    return path.read_bytes()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_safetensors_headers_fail_cleanly(
    small_safetensors: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    safetensors_case(data, small_safetensors, tmp_path, {})


def safetensors_case(data: st.DataObject, source: bytes, tmp: Path, tally: Tally) -> None:
    edits = data.draw(mutations(min(400, len(source))))
    path = tmp / "t.safetensors"
    path.write_bytes(mutate(source, edits))
    _attempt(tally, "safetensors header", path, safetensors_io.read_header)


@pytest.fixture(scope="module")
def small_pth(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "consolidated.00.pth"
    save_pth(path, {"tok_embeddings.weight": np.ones((4, 8), np.float16), "norm.weight": np.ones(8, np.float32)})
    return path.read_bytes()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_pth_checkpoints_fail_cleanly(small_pth: bytes, tmp_path: Path, data: st.DataObject) -> None:
    pth_case(data, small_pth, tmp_path, {})


def pth_case(data: st.DataObject, source: bytes, tmp: Path, tally: Tally) -> None:
    edits = data.draw(mutations(len(source)))
    path = tmp / "consolidated.00.pth"
    path.write_bytes(mutate(source, edits))

    def read(p: Path) -> None:
        archive = TorchArchive(p)
        try:
            for t in archive.tensors.values():
                t.load()
        finally:
            archive.close()

    _attempt(tally, ".pth pickle", path, read)


@pytest.fixture(scope="module")
def small_torrent(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.helpers import make_release

    root = tmp_path_factory.mktemp("fuzz") / "rel"
    (root / "sub").mkdir(parents=True)
    for name, size in (("a.bin", 70_000), ("sub/b.json", 300), ("c.bin", 16_384)):
        (root / name).write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    return make_release(root, 16 * 1024, trackers=(("http://127.0.0.1:1/announce",),))[1]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_torrent_metadata_fails_cleanly(small_torrent: bytes, tmp_path: Path, data: st.DataObject) -> None:
    """Bencoded metadata: besides the generic edits, change a digit (a length or an integer) or
    a structure byte (d, l, i, e, :), which is where bencode parsers go wrong."""
    torrent_case(data, small_torrent, tmp_path, {})


def torrent_case(data: st.DataObject, source: bytes, tmp: Path, tally: Tally) -> None:
    buf = bytearray(mutate(source, data.draw(mutations(len(source)))))
    for _ in range(data.draw(st.integers(0, 3))):
        if buf:
            buf[data.draw(st.integers(0, len(buf) - 1))] = ord(data.draw(st.sampled_from("0123456789dlie:")))
    path = tmp / "t.torrent"
    path.write_bytes(bytes(buf))
    _attempt(tally, "torrent metadata", path, lambda p: read_torrent(p.read_bytes()))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
API_KEYS = [
    "manifest",
    "dir",
    "ratio",
    "seed_time",
    "no_seed",
    "seed_forever",
    "include",
    "peers",
    "key_file",
    "address",
    "timeout",
    "key",
    "manifest_sha256",
    "version",
    "quant",
    "convert",
]
PATH_TRICKS = ["../../etc", "/etc/passwd", "relative/dir", "", "/tmp/\x00x", "/" + "a" * 5000, "~/x"]


@st.composite
def api_requests(draw: st.DrawFn, manifest_text: str) -> tuple[str, str, bytes, dict[str, str]]:
    """A request a hostile local web page or process might send to the daemon's API."""
    method, path = draw(
        st.sampled_from(
            [
                ("POST", "/releases"),
                ("PATCH", "/releases/sample-llama"),
                ("PATCH", "/releases/..%2F..%2Fetc"),
                ("DELETE", "/releases/%00"),
                ("GET", "/status"),
                ("POST", "/releases/x/y"),
                ("POST", "/channels"),
                ("POST", "/resolve"),
                ("POST", "/follows"),
                ("GET", "/follows"),
                ("DELETE", "/follows?address=%00"),
                ("DELETE", "/follows"),
            ]
        )
    )
    body: dict = {k: draw(JSON) for k in draw(st.lists(st.sampled_from(API_KEYS), max_size=5, unique=True))}
    if draw(st.booleans()):
        body["manifest"] = draw(st.sampled_from([manifest_text, manifest_text[: len(manifest_text) // 2], "name = 1"]))
        body["dir"] = draw(st.sampled_from(PATH_TRICKS))
    raw = draw(
        st.sampled_from([json.dumps(body).encode(), b"{not json", b"\xff\xfe", json.dumps([body]).encode(), b""])
    )
    headers = draw(
        st.sampled_from(
            [{}, {"Host": "evil.example"}, {"Origin": "http://evil.example"}, {"Authorization": "Bearer x"}]
        )
    )
    return method, path, raw, headers


def api_case(client: DaemonClient, request: tuple[str, str, bytes, dict[str, str]], codes: dict[int, int]) -> None:
    """One hostile request to the daemon ``client`` talks to; its answer's status counted in ``codes``."""
    method, path, raw, extra = request
    headers = {"Authorization": f"Bearer {client.token}", "Content-Type": "application/json"} | extra
    req = urllib.request.Request(
        client.base + path, data=raw if method != "GET" else None, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, answer = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    codes[status] = codes.get(status, 0) + 1
    assert status < 500, answer
    json.loads(answer)  # always JSON, errors as {"error": ...}
    if status in (200, 201) and method == "POST":  # accepted: only ever an absolute dir, never a trick
        added = client.call("GET", "/status")["releases"]
        assert all(Path(r["dir"]).is_absolute() and ".." not in Path(r["dir"]).parts for r in added)
        for r in added:
            client.call("DELETE", "/releases/" + urllib.parse.quote(r["name"], safe=""))


def start_hostile_target(homes: Homes, sample_model: Path) -> tuple[DaemonClient, str]:
    """A running daemon, and a valid manifest's text for the requests to mangle."""
    from llamashare.daemon.client import start_daemon
    from llamashare.manifests.manifest import dumps
    from tests.helpers import make_release

    return start_daemon(homes("n")), dumps(make_release(sample_model)[0])


def test_daemon_api_answers_hostile_requests_with_clean_errors(tmp_path: Path, homes, sample_model: Path) -> None:
    client, text = start_hostile_target(homes, sample_model)
    codes: dict[int, int] = {}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(api_requests(text))
    def one(request: tuple[str, str, bytes, dict[str, str]]) -> None:
        api_case(client, request, codes)

    one()
    print(f"daemon API: {sum(codes.values())} hostile requests, answers by status: {dict(sorted(codes.items()))}")
    assert client.call("GET", "/status")["node"]["pid"]  # still up and answering


#: Hostile inputs per target in the report's own sample (its claim needs 100 of each).
REPORT_SAMPLE = 150


@pytest.fixture
def tally(
    small_gguf: bytes,
    small_safetensors: bytes,
    small_pth: bytes,
    small_torrent: bytes,
    tmp_path: Path,
    homes: Homes,
    sample_model: Path,
) -> Tally:
    """Every target's hostile inputs counted, from a sample this fixture runs itself (the same
    cases as the tests above, REPORT_SAMPLE of each, hypothesis derandomized so the numbers are the
    same every run): the report depends on no other test having run, or on their order."""
    counts: Tally = {}
    sample = settings(
        max_examples=REPORT_SAMPLE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )

    def run(case: Callable[[st.DataObject, bytes, Path, Tally], None], source: bytes) -> None:
        @sample
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            case(data, source, tmp_path, counts)

        one()

    run(gguf_case, small_gguf)
    run(safetensors_case, small_safetensors)
    run(pth_case, small_pth)
    run(torrent_case, small_torrent)
    client, text = start_hostile_target(homes, sample_model)
    codes: dict[int, int] = {}

    @sample
    @given(api_requests(text))
    def one_request(request: tuple[str, str, bytes, dict[str, str]]) -> None:
        api_case(client, request, codes)

    one_request()
    counts["daemon API requests"] = [sum(codes.values()), sum(n for c, n in codes.items() if c >= 400)]
    return counts


def test_report_cases_tried(tally: Tally) -> None:
    """How many hostile inputs each target saw, and that each target refuses a good share of them
    (so the mutations reach the error paths rather than only producing valid files)."""
    for target, (n, refused) in sorted(tally.items()):
        print(f"fuzz: {target}: {n} hostile inputs, {refused} refused with one clean error, the rest valid")
    assert set(tally) == {
        "GGUF header (quantize reader)",
        "GGUF model (run's checks)",
        "safetensors header",
        ".pth pickle",
        "torrent metadata",
        "daemon API requests",
    }
    assert all(n >= 100 and refused >= n // 4 for n, refused in tally.values()), tally
