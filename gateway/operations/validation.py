"""Request validation helpers shared by the operation specs.

A spec's `validate` runs every check and reports every bad field at once (one `FieldViolation`
each, naming the field's path and the bound), so a caller can fix a request in one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from gateway.config import InputBounds
from gateway.errors import FieldViolation, InvalidArgument
from gateway.operations.images import ImageInput, image_too_large, sniff_input

T = TypeVar("T")

_VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{11}")


class Violations:
    """Collects field violations while a request is checked, then raises them together."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        """Records one bad field."""
        self._items.append(FieldViolation(field, description))

    def attempt(self, check: Callable[[], T]) -> T | None:
        """Runs a check that raises `InvalidArgument`; records its violations and returns None."""
        try:
            return check()
        except InvalidArgument as exc:
            self._items.extend(exc.violations)
            return None

    def raise_if_any(self) -> None:
        """Raises `InvalidArgument` with everything recorded, if anything was."""
        if self._items:
            raise InvalidArgument(list(self._items))

    def text(self, field: str, value: str, *, max_chars: int, required: bool) -> str:
        """Checks free text and returns it stripped of surrounding whitespace."""
        stripped = value.strip()
        if required and not stripped:
            self.add(field, "must not be empty")
        elif len(stripped) > max_chars:
            self.add(field, f"is {len(stripped)} characters; the limit is {max_chars}")
        elif "\x00" in stripped:
            self.add(field, "must not contain NUL characters")
        return stripped

    def video_id(self, field: str, value: str, *, required: bool = True) -> str:
        """Checks a YouTube video id: exactly 11 characters of `A-Z a-z 0-9 _ -`."""
        if not value and not required:
            return value
        if not _VIDEO_ID.fullmatch(value):
            self.add(
                field, "must be a YouTube video id: 11 characters of A-Z, a-z, 0-9, '_' or '-'"
            )
        return value

    def count(self, field: str, items: Sequence[object], *, minimum: int, maximum: int) -> None:
        """Checks how many items a repeated field holds."""
        if not minimum <= len(items) <= maximum:
            if minimum == 0:
                bound = f"at most {maximum}"
            elif minimum == maximum:
                bound = f"exactly {minimum}"
            else:
                bound = f"between {minimum} and {maximum}"
            self.add(field, f"has {len(items)} items; send {bound}")

    def _total_within(self, items: Sequence[tuple[str, ImageInput]], bounds: InputBounds) -> bool:
        """Checks the images' total size; records the image that crosses the bound."""
        running = 0
        for field, item in items:
            running += len(item.data)
            if running > bounds.max_total_image_bytes:
                self.add(
                    f"{field}.data",
                    "the images of this request add up to more than "
                    f"{bounds.max_total_image_bytes} bytes, the limit",
                )
                return False
        return True

    def image_sizes(self, items: Sequence[tuple[str, ImageInput]], bounds: InputBounds) -> None:
        """Checks the byte size of every image of a request (field path, image) and their total,
        without reading their contents."""
        if self._total_within(items, bounds):
            for field, item in items:
                if len(item.data) > bounds.max_image_bytes:
                    self.add(
                        f"{field}.data", image_too_large(len(item.data), bounds.max_image_bytes)
                    )

    def images(
        self, items: Sequence[tuple[str, ImageInput]], bounds: InputBounds
    ) -> list[ImageInput]:
        """Sniffs every image of a request (field path, image) and checks their total size.

        Returns the images with `sniffed` filled, in order; a bad one comes back unchanged (its
        violation is recorded, and `raise_if_any` will refuse the request).
        """
        if not self._total_within(items, bounds):
            # Checked before sniffing: hashing an oversized request is wasted work.
            return [item for _, item in items]
        checked: list[ImageInput] = []
        for field, item in items:
            try:
                checked.append(
                    sniff_input(
                        item,
                        field,
                        max_bytes=bounds.max_image_bytes,
                        max_side=bounds.max_image_side,
                    )
                )
            except InvalidArgument as exc:
                self._items.extend(exc.violations)
                checked.append(item)
        return checked
