"""Writes seed corpora for the fuzz targets into `corpus/<target>/` (git-ignored).

Seeds let libFuzzer start from well-formed files instead of discovering each signature and
chunk layout by chance. Run from anywhere: `python native/fuzz/make_seeds.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

CORPUS = Path(__file__).resolve().parent / "corpus"

# (Pillow format, mode, size, save options): one per structure the sniffer walks.
IMAGES: list[tuple[str, str, tuple[int, int], dict[str, Any]]] = [
    ("PNG", "RGB", (5, 3), {}),
    ("PNG", "P", (4, 4), {}),
    ("PNG", "RGBA", (3, 2), {"save_all": True, "append_images": [Image.new("RGBA", (3, 2))]}),
    ("JPEG", "RGB", (9, 7), {"quality": 80}),
    ("JPEG", "L", (8, 8), {"progressive": True}),
    ("JPEG", "RGB", (17, 9), {"restart_marker_blocks": 1}),
    ("JPEG", "RGB", (4, 4), {"exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"}),
    ("WEBP", "RGB", (6, 5), {"quality": 50}),
    ("WEBP", "RGB", (6, 5), {"lossless": True}),
    ("WEBP", "RGBA", (6, 5), {}),
    ("WEBP", "RGB", (4, 4), {"save_all": True, "append_images": [Image.new("RGB", (4, 4))]}),
    ("GIF", "P", (5, 5), {}),
    ("GIF", "RGB", (4, 3), {"save_all": True, "append_images": [Image.new("RGB", (4, 3))]}),
]

JSON_DOCS: list[Any] = [
    {"b": [1, 2.5, -0.0, 1e21, 1e-7], "a": {"z": None, "y": True, "x": "é\u2028\n"}},
    [0.1, 123456789012345678901234567890, -5e-324, 1.7976931348623157e308],
    {"\U0001f600": "emoji key", "": "", "\u0000": "nul"},
    "plain string",
]


def write(directory: Path, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main() -> None:
    """Encodes every seed and writes it under its target's corpus directory."""
    for pillow_format, mode, size, options in IMAGES:
        out = io.BytesIO()
        Image.linear_gradient("L").convert(mode).resize(size).save(out, pillow_format, **options)
        write(CORPUS / "inspect_image", out.getvalue())
    for doc in JSON_DOCS:
        write(CORPUS / "canonical_json", json.dumps(doc, ensure_ascii=False).encode())
        write(CORPUS / "canonical_json", json.dumps(doc, indent=2).encode())


if __name__ == "__main__":
    main()
