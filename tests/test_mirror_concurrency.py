"""How many downloads the engine runs at once, from the sizes it has seen."""

from __future__ import annotations

from herbsync.mirror import SMALL_IMAGE_WORKERS, Mirror
from herbsync.sources.local import LocalImageSource
from herbsync.state import State
from herbsync.store import Store


def _mirror(tmp_path, workers=16):
    return Mirror(Store(tmp_path / "store"), LocalImageSource(tmp_path / "cache"), State(tmp_path / "state"), workers)


def test_all_workers_before_any_size(tmp_path):
    """With no image fetched yet, every worker may download."""
    mirror = _mirror(tmp_path)

    assert mirror.concurrency() == 16
    mirror.close()


def test_small_images_use_few_workers(tmp_path):
    """After small images, downloads are limited to the small-image count."""
    mirror = _mirror(tmp_path)

    for _ in range(20):
        mirror._note_size(200_000)

    assert mirror.concurrency() == SMALL_IMAGE_WORKERS
    mirror.close()


def test_large_images_use_all_workers(tmp_path):
    """Once large images dominate the average, every worker downloads again."""
    mirror = _mirror(tmp_path)
    for _ in range(20):
        mirror._note_size(200_000)

    for _ in range(40):
        mirror._note_size(50_000_000)

    assert mirror.concurrency() == 16
    mirror.close()


def test_small_limit_never_exceeds_workers(tmp_path):
    """A configured worker count below the small-image count is kept."""
    mirror = _mirror(tmp_path, workers=2)
    mirror._note_size(1000)

    assert mirror.concurrency() == 2
    mirror.close()
