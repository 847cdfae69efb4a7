"""`sha256` and `sha256_many` must agree with hashlib on every input, for every buffer kind."""

from __future__ import annotations

import hashlib
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import native


@given(st.binary(max_size=10_000))
def test_sha256_equals_hashlib(data: bytes) -> None:
    assert native.sha256(data) == hashlib.sha256(data).digest()


@pytest.mark.parametrize("size", [0, 1, 2047, 2048, 2049, 64 * 1024, 4 * 1024 * 1024 + 3])
def test_sha256_at_gil_release_boundary_and_large(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert native.sha256(data) == hashlib.sha256(data).digest()


def test_sha256_accepts_bytearray_and_contiguous_memoryview() -> None:
    data = bytearray(b"thumbnail" * 1000)
    expected = hashlib.sha256(data).digest()
    assert native.sha256(data) == expected
    assert native.sha256(memoryview(data)) == expected
    assert native.sha256(memoryview(bytes(data))[10:5000]) == hashlib.sha256(data[10:5000]).digest()


def test_sha256_rejects_non_contiguous_view_and_text() -> None:
    view = memoryview(b"abcdefgh")[::2]
    with pytest.raises(ValueError, match="not contiguous"):
        native.sha256(view)
    with pytest.raises(TypeError, match="encode text"):
        native.sha256("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes, bytearray"):
        native.sha256(12)  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=3000), max_size=40))
def test_sha256_many_equals_a_loop(items: list[bytes]) -> None:
    assert native.sha256_many(items) == [hashlib.sha256(b).digest() for b in items]


def test_sha256_many_parallel_path_keeps_order() -> None:
    items = [bytes([i]) * (300_000 + i) for i in range(16)]
    assert native.sha256_many(items) == [hashlib.sha256(b).digest() for b in items]
    mixed: list[bytes | bytearray | memoryview] = [
        items[0],
        bytearray(items[1]),
        memoryview(items[2]),
    ]
    assert native.sha256_many(mixed) == [hashlib.sha256(b).digest() for b in items[:3]]


def test_sha256_many_rejects_a_bad_item_by_type() -> None:
    with pytest.raises(TypeError):
        native.sha256_many([b"ok", "text"])  # type: ignore[list-item]


def test_large_hash_releases_the_gil() -> None:
    """While one thread hashes 64 MiB, another thread keeps running Python code."""
    data = b"\x00" * (64 * 1024 * 1024)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        start_ticks = ticks
        for _ in range(3):
            native.sha256(data)
        progressed = ticks - start_ticks
    finally:
        done.set()
        counter.join()
    # With the GIL held for the whole hash, the counter thread could only run in the gaps
    # between calls; released, it runs throughout.
    assert progressed > 10_000
