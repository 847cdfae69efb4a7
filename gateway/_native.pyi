"""Type stubs for the Rust extension `gateway._native` (checked by `mypy.stubtest`)."""

from collections.abc import Iterable
from typing import Final, final

from typing_extensions import Buffer

__all__ = [
    "DEFAULT_MAX_IMAGE_SIDE",
    "MAX_JSON_DEPTH",
    "Decision",
    "GcraLimiter",
    "ImageError",
    "ImageInfo",
    "canonical_json",
    "canonical_json_sha256",
    "inspect_image",
    "monotonic_ns",
    "sha256",
    "sha256_many",
]

MAX_JSON_DEPTH: Final[int]
DEFAULT_MAX_IMAGE_SIDE: Final[int]

class ImageError(ValueError):
    """Data that is not a supported image (unknown, truncated or corrupt), or one too large."""

def sha256(data: Buffer) -> bytes:
    """SHA-256 digest of a bytes-like object; the GIL is released from 2 KiB up.

    A `bytearray` or writable `memoryview` must not be mutated by another thread meanwhile.
    """

def sha256_many(items: Iterable[Buffer]) -> list[bytes]:
    """Digests of many bytes-like objects, in order, hashed in parallel with the GIL released."""

@final
class ImageInfo:
    """Format, dimensions and SHA-256 of an image."""

    @property
    def format(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def sha256(self) -> bytes: ...

# The default is DEFAULT_MAX_IMAGE_SIDE (stubs take literals; stubtest checks it at runtime).
def inspect_image(data: Buffer, max_side: int = 16384) -> ImageInfo:
    """Sniffs PNG, JPEG, WebP or GIF from headers and hashes the whole file.

    Raises `ImageError` for unknown, truncated or corrupt data and sides above `max_side`.
    """

def canonical_json(data: str | Buffer) -> str:
    """RFC 8785 canonical form of JSON text. Raises `ValueError` for input it rejects."""

def canonical_json_sha256(data: str | Buffer) -> bytes:
    """SHA-256 of `canonical_json(data)`."""

def monotonic_ns() -> int:
    """The clock `GcraLimiter` reads when `now_ns` is omitted (same as `time.monotonic_ns()`)."""

@final
class Decision:
    """One rate-limit decision."""

    @property
    def allowed(self) -> bool: ...
    @property
    def remaining(self) -> int: ...
    @property
    def retry_after_s(self) -> float: ...
    @property
    def reset_after_s(self) -> float: ...

@final
class GcraLimiter:
    """In-process keyed GCRA limiter: thread-safe, sharded, bounded memory."""

    def __new__(cls) -> GcraLimiter: ...
    def check(
        self,
        key: str,
        rate: float,
        period_s: float,
        burst: int,
        cost: int = 1,
        now_ns: int | None = None,
    ) -> Decision: ...
    def check_all(
        self,
        limits: list[tuple[str, float, float, int]],
        cost: int = 1,
        now_ns: int | None = None,
    ) -> list[Decision]: ...
    def peek_all(
        self,
        limits: list[tuple[str, float, float, int]],
        cost: int = 1,
        now_ns: int | None = None,
    ) -> list[Decision]:
        """What `check_all` would answer, changing nothing (the read side of a deny cache)."""
    def raise_tat(self, key: str, tat_ns: int, now_ns: int | None = None) -> None:
        """Records that `key`'s TAT is at least `tat_ns` (learned from an authoritative store)."""
    def sweep(self, now_ns: int | None = None) -> None: ...
    def __len__(self) -> int: ...
