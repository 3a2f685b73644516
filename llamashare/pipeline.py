"""fetch → verify → (apply delta) → convert → quantize, as one visible flow into the model store.

Each stage is the same library call its own command makes; this module only chains them, says
what each does and where its files go, and keys each derived file on what produced it (the
verified input hashes, the step's parameters, the llamashare version — see llamashare.store), so
a re-run skips finished steps and redoes an interrupted one from its start (convert and quantize
write ``OUT.partial`` and rename, so an interrupted step never leaves a file that looks done).
The daemon keeps seeding the source files whatever happens after the download.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llamashare import __version__
from llamashare.daemon.client import running_client
from llamashare.daemon.home import Home
from llamashare.daemon.submit import FetchOptions, fetch
from llamashare.errors import DaemonError, StoreError
from llamashare.fsio import safe_join
from llamashare.licenses import Acceptances, License, check_license
from llamashare.manifests.hf_cache import hub_cache, install, repo_folder
from llamashare.manifests.manifest import Manifest, load_manifest, manifest_id
from llamashare.manifests.signing import check_publisher
from llamashare.p2p.status import FileStatus, ReleaseStatus
from llamashare.quant.presets import Preset, preset
from llamashare.store import Entry, Store
from llamashare.ui import StepLog, human_size

#: What fetch quantizes to when neither the user nor the publisher says: llama.cpp's and
#: Ollama's usual choice, a quarter of f16's size for a few percent of perplexity.
FALLBACK_QUANT = "Q4_K_M"
FLOAT_PRESETS = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


@dataclass(frozen=True)
class BuildOptions:
    quant: str | None = None  # a preset; None: config default_quant, else the manifest's, else FALLBACK_QUANT
    convert: bool = True  # False: stop once the files are verified
    base_manifest: Path | None = None  # for a delta whose base is not in the store yet
    threads: int | None = None
    key: str | None = None  # --key: this publisher (hex) must have signed the release
    hf_cache: bool = False  # the files go to a Hugging Face cache snapshot: put them in its layout once verified
    accept_license: bool = False  # --accept-license: custom terms are accepted (and recorded) without asking
    ask_license: Callable[[License], bool] | None = None  # shows custom terms, returns the answer (a terminal)
    manifest_where: str = "the manifest"  # where the license text is, for a refusal


@dataclass(frozen=True)
class Outcome:
    entry: Entry
    status: ReleaseStatus  # the daemon's final status of the release
    gguf: Path | None  # the runnable file, if the flow went that far


def choose_quant(flag: str | None, config_default: str | None, manifest: Manifest) -> Preset:
    """The user's flag, then their config, then the publisher's recommendation, then Q4_K_M."""
    return preset(flag or config_default or manifest.recommended_quant or FALLBACK_QUANT)


def step_key(step: str, **parts: Any) -> str:
    """SHA-256 over a step's inputs and parameters and the tool version: equal keys, equal output."""
    doc = {"step": step, "version": __version__, **parts}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def convert_key(manifest: Manifest, base: Manifest | None, outtype: str) -> str:
    files = sorted((f.path, f.sha256) for f in manifest.files)
    base_files = sorted((f.path, f.sha256) for f in base.files) if base else None
    return step_key("convert", files=files, base=base_files, outtype=outtype)


def is_checkpoint(files: Collection[str]) -> bool:
    """Whether ``convert`` can know the layout (Hugging Face or Meta) of a release's ``files``."""
    return "config.json" in files or "params.json" in files


def fetch_release(
    home: Home, manifest: Manifest, opts: FetchOptions, build: BuildOptions, log: StepLog, source: Path | None = None
) -> Outcome:
    """Fetch ``manifest`` into the store (files in ``source`` if given), then build its GGUF."""
    _check_trust(home, manifest, build, log)
    store = Store(home.models_dir)
    _check_license(home, store, manifest, build, build.manifest_where, log)
    new = store.holding(manifest) is None
    entry = store.add(manifest, source)
    with store.lock(entry):
        base = _base(home, store, manifest, opts, build, log)
        try:
            status = _download(home, manifest, replace(opts, directory=entry.source_dir, key=entry.key), log, "")
        except DaemonError:
            # The daemon refused the release (a file in the way, another release of that name):
            # nothing was fetched for it, so the store forgets the entry this call made. In a
            # folder of the user's (--dir), files are left alone: one that already had the
            # release's bytes was theirs, not written by this fetch.
            if new:
                store.remove(entry, keep_source=not entry.owns_source)
            raise
        if build.hf_cache:
            _install_hf(manifest, entry.source_dir, log)
        if not build.convert:
            return Outcome(entry, status, None)
        chosen = choose_quant(build.quant, home.config().default_quant, manifest)
        try:
            verified = [path for path, state in status.files.items() if state is FileStatus.VERIFIED]
            return Outcome(entry, status, build_gguf(entry, base, chosen, log, build.threads, verified))
        except Exception:
            log.note("the files are verified and the daemon keeps seeding them; building the GGUF failed (below)")
            raise


def hf_snapshot_dir(manifest: Manifest) -> Path:
    """Where ``fetch --hf-cache`` puts a release: the snapshot folder of the Hugging Face repo
    and commit its manifest names, in the cache huggingface_hub would use."""
    if manifest.origin is None:
        raise StoreError(
            f"{manifest.name} does not say which Hugging Face repo it is (no [origin] in its manifest); "
            "fetch it without --hf-cache"
        )
    return repo_folder(hub_cache(), manifest.origin.huggingface) / "snapshots" / manifest.origin.revision


def _install_hf(manifest: Manifest, snapshot: Path, log: StepLog) -> None:
    assert manifest.origin is not None  # hf_snapshot_dir checked it
    done = install(manifest, snapshot)
    o = manifest.origin
    log.note(
        f"in the Hugging Face cache as {o.huggingface} at {o.revision[:12]}"
        + (f" ({o.ref})" if o.ref else "")
        + f": {len(done.linked)} files linked to their blobs in {snapshot.parent.parent}"
    )
    if done.kept:
        log.note(f"left {len(done.kept)} file(s) as plain files: the cache's blob of that name holds other bytes")
    if done.ref_note:
        log.note(done.ref_note)


def _check_license(home: Home, store: Store, manifest: Manifest, build: BuildOptions, where: str, log: StepLog) -> None:
    """Before anything is written: the config's [policy] licenses, and custom terms accepted once."""
    lic = check_license(
        manifest, home.config().licenses, Acceptances(store.root), build.accept_license, build.ask_license, where
    )
    if lic.spdx is None:
        log.note(f"{manifest.name}: custom license terms {lic.first_line!r}, accepted")


def _check_trust(home: Home, manifest: Manifest, build: BuildOptions, log: StepLog) -> None:
    """Before anything is written: a release the config or --key pins must carry that signature."""
    pins = {"*": build.key} if build.key else home.config().publishers  # --key: exactly this publisher
    signer = check_publisher(manifest, pins)
    if signer:
        log.note(f"{manifest.name}: signature ok, signed by ed25519:{signer}")


def _download(home: Home, manifest: Manifest, opts: FetchOptions, log: StepLog, what: str) -> ReleaseStatus:
    title = (
        f"fetch {what}{manifest.name} {manifest.version} ({human_size(manifest.total_size)}, license "
        f"{manifest.license_line}) over BitTorrent into {opts.directory}"
    )
    with log.step(title), log.follow(manifest.name) as view:
        status = fetch(home, manifest, opts, view.update)
    log.note(
        f"{status.verified} of {status.selected} files verified against the manifest (BLAKE3, size); "
        f"the daemon is {status.state}"
    )
    if status.reused:
        log.note(
            f"{human_size(status.reused)} of {human_size(status.size)} was already on disk (files the store's "
            f"other releases hold are linked, not downloaded); downloaded {human_size(status.downloaded)}"
        )
    return status


def _base(
    home: Home, store: Store, manifest: Manifest, opts: FetchOptions, build: BuildOptions, log: StepLog
) -> Entry | None:
    """For a delta: the base release, found in the store or fetched from ``--base``'s manifest."""
    if manifest.kind != "delta" or manifest.base is None:
        return None
    ref = manifest.base
    entry = store.find_base(ref.name, ref.manifest_sha256)
    if entry is None:
        if build.base_manifest is None:
            raise StoreError(
                f"{manifest.name} is a delta on {ref.name}, which is not in the store; "
                f"give the base's manifest with --base {ref.name}.toml"
            )
        base_manifest = load_manifest(build.base_manifest)
        if manifest_id(base_manifest) != ref.manifest_sha256:
            raise StoreError(
                f"{build.base_manifest} is not the base {manifest.name} was made from "
                f"(its manifest SHA-256 is {manifest_id(base_manifest)[:16]}…, the delta names "
                f"{ref.manifest_sha256[:16]}…)"
            )
        _check_trust(home, base_manifest, build, log)
        _check_license(home, store, base_manifest, build, str(build.base_manifest), log)
        entry = store.add(base_manifest)
    _download(
        home, entry.manifest(), replace(opts, directory=entry.source_dir, include=(), key=entry.key), log, "the base "
    )
    return entry


def build_gguf(
    entry: Entry,
    base: Entry | None,
    chosen: Preset,
    log: StepLog,
    threads: int | None = None,
    verified: Collection[str] | None = None,
) -> Path | None:
    """Convert (adding the base for a delta) and quantize the verified files, skipping what is
    done; return the runnable GGUF (None for a release that is not a checkpoint).

    The converter sees exactly the release's verified files (``verified``, default every file
    of its manifest), through a folder of links to them: a file planted beside them, or one
    folder up, is never read into the model."""
    from llamashare.quant.convert import convert
    from llamashare.quant.quantize import quantize_file

    manifest, source = entry.manifest(), entry.source_dir
    files = list(verified) if verified is not None else [f.path for f in manifest.files]
    if not is_checkpoint(files):
        log.note(f"{manifest.name} has no verified config.json or params.json: not a checkpoint, nothing to convert")
        return None
    outtype = FLOAT_PRESETS.get(chosen.name, "f16")
    base_manifest = base.manifest() if base else None
    ckey = convert_key(manifest, base_manifest, outtype)
    what = f"apply the delta to {base.name} and convert" if base else "convert"

    def do_convert(out: Path, bar: Any) -> dict:
        base_files = [f.path for f in base_manifest.files] if base_manifest else []
        with (
            verified_view(entry.root, source, files) as view,
            verified_view(base.root, base.source_dir, base_files) if base else nullcontext() as base_view,
        ):
            r = convert(
                view,
                out,
                outtype,
                base_view,
                force=True,
                progress=bar.advance,
                on_tensor=lambda n: bar.describe(f"converting {n}"),
                on_total=bar.set_total,
            )
        p = r.params
        log.note(
            f"{r.tensors} tensors from the {r.layout} layout: {p.n_layer} layers, width {p.n_embd}, "
            f"{p.n_head}/{p.n_head_kv} heads, vocabulary {p.n_vocab}"
        )
        return {"outtype": outtype, "base": base.name if base else None}

    f16 = _run_step(
        entry,
        f"convert:{outtype}",
        ckey,
        f"{entry.name}.{outtype.upper()}.gguf",
        f"{what} {source} to GGUF ({outtype})",
        do_convert,
        log,
    )
    final = f16
    if chosen.name not in FLOAT_PRESETS:
        qkey = step_key("quantize", input=ckey, preset=chosen.name)

        def do_quantize(out: Path, bar: Any) -> dict:
            r = quantize_file(
                f16,
                out,
                chosen.name,
                force=True,
                threads=threads,
                progress=bar.advance,
                on_total=bar.set_total,
                on_tensor=lambda t: bar.describe(f"quantizing {t.name}"),
            )
            log.note(f"{human_size(r.bytes_in)} → {human_size(r.bytes_out)}, {r.bits_per_weight:.2f} bits/weight")
            return {"preset": chosen.name}

        final = _run_step(
            entry,
            f"quantize:{chosen.name}",
            qkey,
            f"{entry.name}.{chosen.name}.gguf",
            f"quantize to {chosen.name} ({chosen.note})",
            do_quantize,
            log,
        )
    entry.set_default(final)
    return final


def _run_step(
    entry: Entry, step_id: str, key: str, filename: str, title: str, work: Callable[[Path, Any], dict], log: StepLog
) -> Path:
    done = entry.is_current(step_id, key)
    if done is not None:
        log.skip(title, f"{done} is up to date")
        return done
    out = entry.gguf_dir / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with log.step(f"{title} → {out}"), log.bar(step_id) as bar:
            params = work(out, ActivityBar(bar, entry, step_id.split(":")[0], title))
        entry.finish_step(step_id, key, out, time.perf_counter() - start, params)
    finally:
        entry.clear_activity()
    return out


class ActivityBar:
    """A progress bar that also records the step's progress in the store (for the dashboard),
    at most twice a second so a fast step does not spend its time rewriting a file."""

    EVERY = 0.5

    def __init__(self, bar: Any, entry: Entry, step: str, title: str) -> None:
        self.bar, self.entry, self.step, self.title = bar, entry, step, title
        self.done, self.total, self.written = 0, 0, 0.0
        self._record(force=True)

    def _record(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.written >= self.EVERY:
            self.written = now
            self.entry.set_activity(self.step, self.title, self.done, self.total)

    def advance(self, nbytes: int) -> None:
        self.bar.advance(nbytes)
        self.done += nbytes
        self._record()

    def set_total(self, total: int) -> None:
        self.bar.set_total(total)
        self.total = total
        self._record(force=True)

    def describe(self, text: str) -> None:
        self.bar.describe(text)


@dataclass(frozen=True)
class Removed:
    name: str
    size_before: int  # bytes on disk before removal
    still_shared: int  # of those, source bytes other releases link: still on disk
    stopped_seeding: bool
    kept: list[Path]  # folders kept on request (--keep-source)
    foreign: list[Path]  # files in its folders that llamashare did not write: left alone


def remove_release(home: Home, name: str, keep_source: bool) -> Removed:
    """``rm``: stop seeding NAME (if this node's daemon runs it), then delete what the store
    wrote for it, under the release's lock so no fetch of it is running meanwhile."""
    store = Store(home.models_dir)
    entry = store.get(name, unique=True)
    with store.lock(entry):
        client = running_client(home)
        stopped = client is not None and client.status().release(entry.key) is not None
        if client is not None and stopped:
            client.call("DELETE", f"/releases/{quote(entry.key, safe='')}")
        size = entry.size_on_disk()
        removal = store.remove(entry, keep_source)
    return Removed(entry.key, size, removal.shared_bytes, stopped, removal.kept, removal.foreign)


@contextmanager
def verified_view(scratch: Path, folder: Path, paths: Collection[str]) -> Iterator[Path]:
    """A folder holding links to exactly ``paths`` of ``folder`` (and nothing else), named like
    ``folder`` (the converter records that name), inside ``scratch``; removed afterwards."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".view-") as tmp:
        view = Path(tmp) / folder.resolve().name
        view.mkdir()
        for rel in paths:
            link = safe_join(view, rel)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(safe_join(folder, rel).resolve())
        yield view
