"""Benchmark data sets: random objects keyed by their real SHA-256, loaded into S3.

Each object's bytes come from a generator seeded with the set name and the
object's index, so a set has the same content on every run and machine.
"""

from __future__ import annotations

import base64
import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from herbsync.testing.seaweed import image_key


KB = 1000
MB = 1000 * KB

# Upload threads. SeaweedFS used about 1.4 cores at full upload speed on a
# 2-core machine, so more threads only queue there.
UPLOAD_THREADS = 8


@dataclass(frozen=True)
class DataSet:
    """A named group of equally sized random objects."""

    name: str
    count: int
    size: int
    description: str

    @property
    def bucket(self) -> str:
        """The bucket that holds only this set, so a recursive copy equals the list."""
        return f"herbsync-bench-{self.name}"

    @property
    def total_bytes(self) -> int:
        """The size of all objects of the set together, in bytes."""
        return self.count * self.size


FULL_SETS = (
    DataSet("thumbnails", 2000, 200 * KB, "2,000 objects of 200 KB"),
    DataSet("web", 500, 2 * MB, "500 objects of 2 MB"),
    DataSet("scans", 20, 50 * MB, "20 objects of 50 MB"),
)

QUICK_SETS = (
    DataSet("thumbnails", 6, 20 * KB, "6 objects of 20 KB"),
    DataSet("web", 4, 200 * KB, "4 objects of 200 KB"),
    DataSet("scans", 2, 1 * MB, "2 objects of 1 MB"),
)


def select_sets(names: list[str] | None, quick: bool) -> list[DataSet]:
    """Return the data sets named in ``names`` (all when None), in their usual order."""
    available = QUICK_SETS if quick else FULL_SETS
    if not names:
        return list(available)

    known = {data_set.name: data_set for data_set in available}
    unknown = [name for name in names if name not in known]
    if unknown:
        msg = f"unknown data set {unknown[0]!r}; choose from {', '.join(known)}"
        raise ValueError(msg)
    return [data_set for data_set in available if data_set.name in names]


def object_bytes(data_set: DataSet, index: int) -> bytes:
    """Return the content of object ``index`` of a set, the same on every call."""
    generator = random.Random(f"{data_set.name}-{data_set.size}-{index}")
    return generator.randbytes(data_set.size)


def _upload_one(client: Any, data_set: DataSet, index: int) -> str:
    body = object_bytes(data_set, index)
    digest = hashlib.sha256(body)

    # Sending the checksum we already computed makes the server verify the
    # bytes without boto3 hashing them a second time.
    client.put_object(
        Bucket=data_set.bucket,
        Key=image_key(digest.hexdigest()),
        Body=body,
        ContentType="image/jpeg",
        ChecksumSHA256=base64.b64encode(digest.digest()).decode("ascii"),
    )
    return digest.hexdigest()


def upload_set(client: Any, data_set: DataSet, threads: int = UPLOAD_THREADS) -> list[str]:
    """Put every object of a set into its bucket; return the digests, sorted.

    ``client`` is one boto3 S3 client shared by all threads, built with a
    connection pool at least ``threads`` large.
    """
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload") as pool:
        futures = [pool.submit(_upload_one, client, data_set, index) for index in range(data_set.count)]
        digests = [future.result() for future in futures]
    return sorted(digests)
