"""The words of GenerateThumbnail's progress (`gateway.jobs.progress`), which a job's watchers
and the streaming RPC both show."""

from __future__ import annotations

from gateway.jobs.progress import describe
from gateway.operations.base import ProgressEvent, ProgressKind
from gateway.store.base import JobProgress


def test_a_started_variation_names_its_place_and_the_share_already_ready() -> None:
    event = ProgressEvent(ProgressKind.STARTED, index=2, total=4)
    assert describe(event, ready=1) == JobProgress(0.25, "generating", "generating image 3 of 4")


def test_a_ready_image_counts_the_images_ready_so_far() -> None:
    event = ProgressEvent(ProgressKind.IMAGE_READY, index=0, total=2)
    assert describe(event, ready=2) == JobProgress(1.0, "generating", "2 of 2 images ready")


def test_streamed_text_is_not_progress() -> None:
    assert describe(ProgressEvent(ProgressKind.TEXT, text="chunk"), ready=0) is None


def test_an_operation_of_no_units_reports_no_fraction_rather_than_failing() -> None:
    event = ProgressEvent(ProgressKind.STARTED, index=0, total=0)
    progress = describe(event, ready=0)
    assert progress is not None and progress.fraction == 0.0
