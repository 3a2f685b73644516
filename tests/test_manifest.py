"""Manifest parsing: round trips, and every hostile or malformed input is one ManifestError."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamashare.errors import ManifestError
from llamashare.manifests.manifest import (
    BaseRef,
    FileEntry,
    Manifest,
    Origin,
    TorrentRef,
    canonical_bytes,
    check_relative_path,
    dumps,
    load_manifest,
    manifest_id,
    parse_manifest,
    to_dict,
    unsafe_char,
)
from llamashare.manifests.torrent import TorrentFile, build_torrent, canonical_order, file_root, read_torrent

HEX64 = "ab" * 32

# ----------------------------------------------------------------------------- strategies


def fake_file(path: str, size: int, piece: int) -> TorrentFile:
    """A torrent entry with made-up but self-consistent hashes (no data needed)."""
    import hashlib

    n = -(-size // piece)
    layer = [hashlib.sha256(f"{path}:{i}".encode()).digest() for i in range(n)]
    root = b"" if not size else file_root(layer, piece) if size > piece else layer[0]
    return TorrentFile(tuple(path.split("/")), size, bytes(20) * n, b"".join(layer), root)


def portable(comp: str) -> bool:
    """Whether a manifest accepts ``comp`` as a path component (not, e.g., Windows' reserved "con")."""
    try:
        check_relative_path(comp, "path")
    except ManifestError:
        return False
    return True


component = st.text(
    st.characters(min_codepoint=0x61, max_codepoint=0x7A) | st.sampled_from("-_0123456789é权"), min_size=1, max_size=12
).filter(portable)
rel_path = st.lists(component, min_size=1, max_size=3).map("/".join)
hexstr = lambda n: st.text("0123456789abcdef", min_size=n, max_size=n)  # noqa: E731


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    """Valid manifests whose embedded torrent really lists their files (fake piece hashes)."""
    paths = draw(st.lists(rel_path, min_size=1, max_size=6, unique_by=str.casefold))
    folders = {p.rsplit("/", 1)[0].casefold() for p in paths if "/" in p}
    folders |= {f.rsplit("/", 1)[0] for f in folders if "/" in f}
    paths = [p for p in paths if p.casefold() not in folders] or ["only.bin"]
    paths = canonical_order(paths)
    piece = 16 * 1024
    sizes = draw(st.lists(st.integers(0, 5 * piece), min_size=len(paths), max_size=len(paths)))
    name = draw(st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}", fullmatch=True))
    if sum(sizes) == 0:
        sizes[0] = 1
    tfiles = [fake_file(p, s, piece) for p, s in zip(paths, sizes)]
    trackers = tuple(
        draw(
            st.lists(
                st.lists(
                    st.sampled_from(["udp://127.0.0.1:6969/announce", "http://127.0.0.1:8000/announce"]),
                    min_size=1,
                    max_size=2,
                ).map(tuple),
                max_size=2,
            )
        )
    )
    data = build_torrent(name, piece, tfiles, trackers)
    meta = read_torrent(data)
    kind = draw(st.sampled_from(["full", "delta"]))
    return Manifest(
        name=name,
        version=draw(st.text(min_size=1, max_size=10).filter(lambda v: v.strip() and unsafe_char(v) is None)),
        license=draw(st.sampled_from(["Apache-2.0", "llama2", "MIT\nwith text"])),
        description=draw(st.text(min_size=1, max_size=50).filter(lambda d: d.strip() and unsafe_char(d, True) is None)),
        homepage=draw(st.none() | st.just("https://example.org/model")),
        trackers=trackers,
        web_seeds=tuple(draw(st.lists(st.just("http://127.0.0.1:9000/m/"), max_size=1))),
        kind=kind,
        base=BaseRef("llama-7b", draw(hexstr(64))) if kind == "delta" else None,
        recommended_quant=draw(st.none() | st.just("Q4_K_M")),
        origin=draw(
            st.none()
            | st.builds(
                Origin,
                st.sampled_from(["HuggingFaceTB/SmolLM2-135M", "gpt2"]),
                hexstr(40),
                st.none() | st.just("main"),
                st.lists(st.sampled_from(paths), unique=True).map(lambda g: tuple(sorted(g))),
            )
        ),
        files=tuple(FileEntry(p, s, draw(hexstr(64)), draw(hexstr(64))) for p, s in zip(paths, sizes)),
        torrent=TorrentRef(meta.info_hash_v1, meta.info_hash_v2, piece, data=data),
    )


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(manifests())
def test_round_trip(m: Manifest) -> None:
    text = dumps(m)
    again = parse_manifest(text)
    assert again == m
    assert dumps(again) == text
    assert canonical_bytes(again) == canonical_bytes(m)


@settings(max_examples=30, deadline=None)
@given(manifests())
def test_canonical_bytes_ignore_layout_but_not_values(m: Manifest) -> None:
    doc = to_dict(m)
    reordered = dict(reversed(list(doc.items())))
    assert manifest_id(parse_manifest("# a comment\n" + tomli_w.dumps(reordered))) == manifest_id(m)
    assert manifest_id(replace(m, version=m.version + "x")) != manifest_id(m)


# ----------------------------------------------------------------------------- hostile cases


@pytest.fixture(scope="module")
def good() -> dict:
    paths = ["a.bin", "sub/b.bin"]
    piece = 16 * 1024
    tfiles = [fake_file(p, 100, piece) for p in paths]
    data = build_torrent("model", piece, tfiles)
    meta = read_torrent(data)
    m = Manifest(
        name="model",
        version="1",
        license="MIT",
        description="d",
        files=tuple(FileEntry(p, 100, HEX64, HEX64) for p in paths),
        torrent=TorrentRef(meta.info_hash_v1, meta.info_hash_v2, piece, data=data),
    )
    return to_dict(m)


def mutate(doc: dict, path: str, value: object) -> dict:
    """Copy of ``doc`` with ``path`` ("files.0.size") set to ``value`` (or deleted if DELETE)."""
    import copy

    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    key = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return out


DELETE = object()

HOSTILE = [
    ("name", DELETE, "name", "missing"),
    ("name", "../evil", "name", "must be"),
    ("name", 7, "name", "must be of type string, not integer"),
    ("format_version", 2, "format_version", "understands only 1"),
    ("format_version", DELETE, "format_version", "missing"),
    ("kind", "partial", "kind", "one of"),
    ("kind", "delta", "base", "required"),
    ("version", "   ", "version", "empty"),
    ("license", DELETE, "license", "missing"),
    ("homepage", "javascript:alert(1)", "homepage", "not a http/https URL"),
    ("trackers", ["ftp://x/announce"], "trackers[0]", "URL"),
    ("trackers", [[]], "trackers[0]", "empty tier"),
    ("web_seeds", ["file:///etc/passwd"], "web_seeds[0]", "URL"),
    ("surprise", 1, "surprise", "not a known field"),
    ("files", [], "files", "at least one"),
    ("files.0.size", -1, "files[0].size", "negative"),
    ("files.0.size", True, "files[0].size", "integer, not boolean"),
    ("files.0.size", 1 << 60, "files[0].size", "implausibly large"),
    ("files.0.blake3", "XYZ", "files[0].blake3", "hex"),
    ("files.0.sha256", HEX64.upper(), "files[0].sha256", "lowercase hex"),
    ("files.0.path", "/etc/passwd", "files[0].path", "absolute"),
    ("files.0.path", "C:/Windows/x", "files[0].path", "absolute"),
    ("files.0.path", "../../x", "files[0].path", "'..'"),
    ("files.0.path", "a/./b", "files[0].path", "'.'"),
    ("files.0.path", "a//b", "files[0].path", "empty"),
    ("files.0.path", "a\\b", "files[0].path", "backslash"),
    ("files.0.path", "a\nb", "files[0].path", "control"),
    ("files.0.path", "sub/B.BIN", "files[1].path", "duplicates"),
    ("files.0.path", "sub", "files[0].path", "both a file and a folder"),
    ("files.0.path", "CON.txt", "files[0].path", "not portable"),
    ("files.0.path", ".pad/5", "files[0].path", "reserved"),
    ("files.0.extra", 1, "files[0].extra", "not a known field"),
    ("files.0", "a.bin", "files[0]", "table"),
    ("torrent.info_hash_v1", "00" * 20, "torrent.info_hash_v1", "the torrent's is"),
    ("torrent.info_hash_v2", "zz", "torrent.info_hash_v2", "hex"),
    ("torrent.piece_size", 1000, "torrent.piece_size", "power of two"),
    ("torrent.piece_size", 32768, "torrent.piece_size", "the torrent's is"),
    ("torrent.data", "!!!", "torrent.data", "base64"),
    ("torrent.data", base64.b64encode(b"d4:infoi1ee").decode(), "torrent", "invalid torrent"),
    ("torrent.file", "x.torrent", "torrent", "exactly one"),
    ("torrent.v1_twin", "00" * 20, "torrent.v1_twin", "the torrent's v1 twin is"),
    ("torrent.v1_twin", "00", "torrent.v1_twin", "hex"),
    ("files.0.size", 101, "torrent", "file list differs"),
    (
        "signature",
        {"algorithm": "rsa", "public_key": HEX64, "value": HEX64 * 2},
        "signature.algorithm",
        "not supported",
    ),
    ("signature", {"algorithm": "ed25519", "public_key": "00", "value": HEX64 * 2}, "signature.public_key", "hex"),
    ("base", {"name": "llama", "manifest_sha256": HEX64}, "base", "only allowed"),
    ("origin", {"huggingface": "org--x/name", "revision": "0" * 40}, "origin.huggingface", "not a Hugging Face repo"),
    ("origin", {"huggingface": "org/../name", "revision": "0" * 40}, "origin.huggingface", "not a Hugging Face repo"),
    ("origin", {"huggingface": "org/name", "revision": "main"}, "origin.revision", "40 lowercase hex"),
    ("origin", {"huggingface": "org/name", "revision": "0" * 40, "ref": "../x"}, "origin.ref", "branch or tag"),
    (
        "origin",
        {"huggingface": "org/name", "revision": "0" * 40, "git_files": ["not/there.json"]},
        "origin.git_files[0]",
        "one of the release's files",
    ),
    ("origin", {"huggingface": "org/name", "revision": "0" * 40, "x": 1}, "origin.x", "not a known field"),
    ("origin", {"revision": "0" * 40}, "origin.huggingface", "missing"),
    # Terminal escapes: text that would be commands on a terminal (clipboard, cursor, reordering).
    ("license", "MIT\x1b]52;c;aGk=\x07\x1b[1A\x1b[2K", "license", "U+001B"),
    ("description", "fine\u202egnp.exe", "description", "U+202E"),
    ("version", "1.0\nsignature ok", "version", "U+000A"),
    ("version", "1\x9b2J", "version", "U+009B"),
    ("homepage", "https://example.org/\x1b[2J", "homepage", "not a http/https URL"),
    ("trackers", ["udp://t.example:1/\x07"], "trackers[0]", "URL"),
    ("files.0.path", "a\x7fb", "files[0].path", "U+007F"),
    ("files.0.path", "a\x9bb", "files[0].path", "U+009B"),
    ("files.0.path", "evil\u202etxt.exe", "files[0].path", "U+202E"),
    ("files.0.path", "what?.bin", "files[0].path", "portable file name"),
    ("files.0.path", "a|b", "files[0].path", "portable file name"),
    ("files.0.path", "cafe\u0301.bin", "files[0].path", "NFC"),
]


@pytest.mark.parametrize("path,value,field,needle", HOSTILE, ids=[f"{h[0]}={str(h[1])[:20]}" for h in HOSTILE])
def test_hostile_fields_are_named(good: dict, path: str, value: object, field: str, needle: str) -> None:
    text = tomli_w.dumps(mutate(good, path, value))
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, source="m.toml")
    assert info.value.field == field
    assert needle in info.value.problem
    assert str(info.value).startswith(f"m.toml: manifest field '{field}'")
    assert "\n" not in str(info.value).replace(repr("a\nb"), "")


def test_good_fixture_parses(good: dict) -> None:
    assert parse_manifest(tomli_w.dumps(good)).files[1].path == "sub/b.bin"


@pytest.mark.parametrize(
    "data,needle", [(b"\xff\xfe", "UTF-8"), (b"name = ", "not valid TOML"), (b"", "format_version")]
)
def test_not_a_manifest(data: bytes, needle: str) -> None:
    with pytest.raises(ManifestError, match=needle):
        parse_manifest(data)


def test_sibling_torrent_file(tmp_path: Path, good: dict) -> None:
    data = base64.b64decode(good["torrent"]["data"])
    doc = mutate(mutate(good, "torrent.data", DELETE), "torrent.file", "model.torrent")
    (tmp_path / "m.toml").write_text(tomli_w.dumps(doc))
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path / "m.toml")
    (tmp_path / "model.torrent").write_bytes(data)
    assert load_manifest(tmp_path / "m.toml").torrent.data == data
    for bad in ("../model.torrent", "model.txt", "/tmp/x.torrent"):
        with pytest.raises(ManifestError, match="plain file name"):
            parse_manifest(tomli_w.dumps(mutate(doc, "torrent.file", bad)))


def test_unreadable_manifest_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path / "nope.toml")


# ----------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_fuzz_bytes_only_manifest_errors(data: bytes) -> None:
    try:
        parse_manifest(data)
    except ManifestError:
        pass


toml_values = st.recursive(
    st.none().map(lambda _: "x")
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=30)
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _containers(node: object, trail: tuple = ()) -> list[tuple]:
    """Every (container, key) place in a parsed TOML document."""
    places = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        places.append((node, key))
        places.extend(_containers(child))
    return places


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_structures_only_manifest_errors(good: dict, data: st.DataObject) -> None:
    """Replace any one value, anywhere in a valid manifest, with an arbitrary TOML value."""
    import copy

    doc = copy.deepcopy(good)
    places = _containers(doc)
    container, key = data.draw(st.sampled_from(places))
    container[key] = data.draw(toml_values)
    try:
        parse_manifest(tomli_w.dumps(doc))
    except ManifestError:
        pass


def test_documented_example_is_valid() -> None:
    """manifests/example.toml documents the format; it must stay a valid manifest."""
    path = Path(__file__).resolve().parents[1] / "manifests" / "example.toml"
    m = load_manifest(path)
    assert m.name == "tiny-llama" and len(m.trackers) == 2 and m.web_seeds and m.recommended_quant == "Q4_K_M"
    assert [f.path for f in m.files] == ["config.json", "model.safetensors"]
    text = path.read_text()
    for key in (
        "format_version",
        "kind",
        "license",
        "trackers",
        "web_seeds",
        "[base]",
        "[torrent]",
        "[[files]]",
        "[signature]",
    ):
        assert key in text


def test_untrusted_text_reaches_the_terminal_escaped() -> None:
    from llamashare.text import printable

    assert printable("a\x1b[2Kb\u202ec\x9bd\x07") == "a\\x1b[2Kb\\u202ec\\x9bd\\x07"
    assert printable("two\nlines\tok") == "two\nlines\tok" and printable("one\nline", multiline=False) == "one\\nline"
    assert printable("café — ünïcode ✓") == "café — ünïcode ✓"  # printable text is left alone
