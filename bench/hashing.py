"""Native hashing and image sniffing against hashlib (the anchor), in one run.

Run: python bench/hashing.py
Targets: sha256 >= 1.0x hashlib from 256 KiB up; sha256_many over 16 x 1 MiB >= 1.7x a hashlib
loop on a 2-core machine; inspect_image >= 0.9x plain sha256 on a 1 MiB PNG.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import best_rate, report

from gateway import native

MIB = 1024 * 1024


def png_of_about(size: int) -> bytes:
    """A valid PNG of roughly `size` bytes (incompressible pixels, stored in one IDAT)."""
    width = 512
    height = max(1, size // (width * 3))
    raw = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 0))
        + chunk(b"IEND", b"")
    )


def main() -> int:
    ok = True
    print(f"cores: {os.cpu_count()}")
    for label, size, target in [
        ("4 KiB", 4096, None),
        ("256 KiB", 256 * 1024, 1.0),
        ("4 MiB", 4 * MIB, 1.0),
    ]:
        data = os.urandom(size)
        ours = best_rate(lambda d=data: native.sha256(d), size / MIB)
        anchor = best_rate(lambda d=data: hashlib.sha256(d).digest(), size / MIB)
        ok &= report(f"sha256 {label}", ours, anchor, "MB/s", "hashlib", target)

    items = [os.urandom(MIB) for _ in range(16)]
    ours = best_rate(lambda: native.sha256_many(items), 16, seconds=2.0)
    anchor = best_rate(lambda: [hashlib.sha256(b).digest() for b in items], 16, seconds=2.0)
    ok &= report("sha256_many 16 x 1 MiB", ours, anchor, "MB/s", "hashlib loop", 1.7)

    png = png_of_about(MIB)
    assert native.inspect_image(png).format == "png"
    ours = best_rate(lambda: native.inspect_image(png), len(png) / MIB)
    anchor = best_rate(lambda: native.sha256(png), len(png) / MIB)
    ok &= report(
        f"inspect_image PNG {len(png) / MIB:.2f} MiB", ours, anchor, "MB/s", "native sha256", 0.9
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
