"""The words of an operation's progress, the same for a job's watchers and for a stream.

A GenerateThumbnail run reports each variation it starts and each image that is ready; both the
job worker (which records progress on the job row) and the streaming RPC (which sends it to the
caller) describe those events with `describe`.
"""

from __future__ import annotations

from gateway.operations.base import ProgressEvent, ProgressKind
from gateway.store.base import JobProgress

#: The stage every generation step reports.
GENERATING = "generating"


def describe(event: ProgressEvent, ready: int) -> JobProgress | None:
    """The progress after `event`, with `ready` images finished so far (this one included for
    an `IMAGE_READY`); None for streamed text, which is not progress worth reporting."""
    if event.kind is ProgressKind.TEXT:
        return None
    fraction = ready / max(event.total, 1)
    if event.kind is ProgressKind.IMAGE_READY:
        return JobProgress(fraction, GENERATING, f"{ready} of {event.total} images ready")
    return JobProgress(fraction, GENERATING, f"generating image {event.index + 1} of {event.total}")
