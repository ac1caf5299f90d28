"""Uploading images to S3 under their SHA-256: the inbox folder and ``herbsync put``."""

from herbsync.upload.inbox import Inbox, InboxEvents, UploadOutcome
from herbsync.upload.put import put_files
from herbsync.upload.report import read_report
from herbsync.upload.settings import (
    UploadSettings,
    build_upload_target,
    parse_size,
    upload_settings_from_dict,
)


__all__ = [
    "Inbox",
    "InboxEvents",
    "UploadOutcome",
    "UploadSettings",
    "build_upload_target",
    "parse_size",
    "put_files",
    "read_report",
    "upload_settings_from_dict",
]
