"""Builds the fused CPU kernels (csrc/*.cc) into a shared library in the user's cache directory, once per source,
compiler, flags and CPU; later processes load the cached library after checking its digest.

The library is compiled to a temporary file, checked by loading it, then renamed into place atomically, under a
lock file, so concurrent processes and msrun ranks never load a half-written library and build it only once.
A library whose digest does not match (truncated, overwritten) is rebuilt, never trusted."""

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Optional

SOURCE_DIR = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-pthread", "-Wno-psabi")
ABI_VERSION = 1  # bump with any change of a kernel's inputs or outputs; the Python wrappers check it


class BuildError(RuntimeError):
    """The kernels could not be compiled or loaded; `log` names the file with the compiler's output."""

    def __init__(self, message: str, log: Optional[Path] = None):
        super().__init__(message)
        self.log = log


def cache_root() -> Path:
    """$MINDONE_CACHE, else $XDG_CACHE_HOME/mindone, else ~/.cache/mindone."""
    if os.environ.get("MINDONE_CACHE"):
        return Path(os.environ["MINDONE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mindone"


def compiler() -> Optional[str]:
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _sources() -> list:
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".cc", ".h"))


def _cpu_identity() -> str:
    """-march=native compiles for this CPU: a cache shared across machines must not hand out another CPU's build."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _key(cxx: str) -> str:
    digest = hashlib.sha256()
    for source in _sources():
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    for part in (cxx, version, " ".join(FLAGS), _cpu_identity(), str(ABI_VERSION)):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:24]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _loads(path: Path) -> bool:
    try:
        return ctypes.CDLL(str(path)).MindoneKernelsAbi() == ABI_VERSION
    except (OSError, AttributeError):
        return False


def _valid(library: Path, digest_file: Path) -> bool:
    try:
        return digest_file.read_text().strip() == _file_digest(library)
    except OSError:
        return False


def _compile(cxx: str, target: Path, log: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    command = [cxx, *FLAGS, "-o", str(tmp), *(str(s) for s in _sources() if s.suffix == ".cc")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    log.write_text(" ".join(command) + "\n" + result.stdout + result.stderr)
    try:
        if result.returncode != 0:
            raise BuildError(f"{Path(cxx).name} failed with exit code {result.returncode}", log)
        if not _loads(tmp):
            raise BuildError("the compiled library does not load or reports another ABI version", log)
        digest = _file_digest(tmp)
        os.replace(tmp, target)
        digest_tmp = target.with_name(f".{target.name}.{os.getpid()}.sha256")
        digest_tmp.write_text(digest + "\n")
        os.replace(digest_tmp, target.with_suffix(".sha256"))
    finally:
        tmp.unlink(missing_ok=True)


def build() -> Path:
    """The path of a valid compiled library, building it if needed; raises BuildError."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (looked for $CXX, g++, c++, clang++)")
    directory = cache_root() / "kernels"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BuildError(f"cannot create the kernel cache directory {directory}: {err.strerror}") from None
    key = _key(cxx)
    library, digest_file, log = directory / f"libmindone_kernels-{key}.so", directory / f"libmindone_kernels-{key}.sha256", directory / f"build-{key}.log"
    if _valid(library, digest_file):
        return library
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library: wait for it
        if not _valid(library, digest_file):
            _compile(cxx, library, log)
    return library
