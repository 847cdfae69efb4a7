"""A real S3-compatible server for the tests and benchmarks: `s3s-fs` from crates.io.

`s3s-fs` (the `s3s` project's file-system backed S3 server) is built once with cargo into a
cache directory (`$XDG_CACHE_HOME/viewbait-tools`, else `~/.cache/viewbait-tools`) and started
per test session on a free loopback port, with its data in a directory of its own. Buckets are
directories under that root. `python tests/s3s_fs.py --build` builds it (the Makefile's
`install` does, so `make test` on a fresh machine has it); a build that fails is an error,
never a skipped test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.14.1"
ACCESS_KEY = "viewbait-test-access"
SECRET_KEY = "viewbait-test-secret-key"


def install_root() -> Path:
    """Where cargo installs the pinned version."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "viewbait-tools" / f"s3s-fs-{VERSION}"


def binary() -> Path:
    """The server's executable (built or not)."""
    return install_root() / "bin" / "s3s-fs"


def ensure_built() -> Path:
    """The executable, built first if missing (`cargo install --locked`, a few minutes)."""
    path = binary()
    if path.is_file():
        return path
    command = [
        "cargo", "install", "--locked", "--quiet", "--root", str(install_root()),
        "s3s-fs", "--version", VERSION, "--features", "binary",
    ]  # fmt: skip
    result = subprocess.run(command, check=False)
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(f"could not build s3s-fs {VERSION}: {' '.join(command)} failed")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running s3s-fs on loopback."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """Its URL (path-style requests)."""
        return f"http://127.0.0.1:{self.port}"

    def new_bucket(self) -> str:
        """A fresh, empty bucket of its own."""
        name = f"blobs-{uuid.uuid4().hex[:12]}"
        (self.root / name).mkdir()
        return name

    def object_path(self, bucket: str, key: str) -> Path:
        """The file holding an object (to age or corrupt it behind the server's back)."""
        return self.root / bucket / key

    def stop(self) -> None:
        """Stops the server."""
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(root: Path) -> S3Server:
    """Starts s3s-fs over `root` (created) on a free loopback port, once it accepts."""
    executable = ensure_built()
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = _free_port()
        command = [
            str(executable), "--host", "127.0.0.1", "--port", str(port),
            "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, str(root),
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
                continue
            return S3Server(root, port, process)
        process.kill()
        process.wait()
    raise RuntimeError("s3s-fs did not start listening on loopback")


if __name__ == "__main__":
    if sys.argv[1:] == ["--build"]:
        print(ensure_built())
    else:
        sys.exit("usage: python tests/s3s_fs.py --build")
