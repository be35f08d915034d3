"""Uploaded files: checking and storing an upload, and attaching stored files to a run.

A file token (``ff_`` + 96 random bits) is usable only with the key that uploaded it, and
only until it expires. Attached files become content blocks after the prompt's text: text
files inline, images as image blocks, PDFs as document blocks. The routes are in
``api/doors/files.py`` (and the compat door's ``POST /files``).
"""

from __future__ import annotations

import asyncio
import base64
import html
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import Request
from pydantic import Field
from starlette.datastructures import UploadFile

from ccgate.api.deps import services_of
from ccgate.clock import utcnow
from ccgate.errors import ApiError
from ccgate.ids import new_id
from ccgate.store import KeyRecord
from ccgate.store.files import FileRecord
from ccgate.turns import Base64Source, ContentBlock

MAX_ATTACHMENTS = 20
FileToken = Annotated[str, Field(min_length=1, max_length=64)]
TTL_DEFAULT_SECS = 3600
TTL_MIN_SECS = 60
TTL_MAX_SECS = 86400

_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_PDF = "application/pdf"
_BINARY_TYPES = frozenset({*_IMAGE_TYPES, _PDF})
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", _PDF),
)
TEXT_EXTENSIONS = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".log": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".rst": "text/x-rst",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".xml": "application/xml",
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".toml": "application/toml",
    ".ini": "text/plain",
    ".cfg": "text/plain",
    ".sql": "application/sql",
    ".py": "text/x-python",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".ts": "text/x-typescript",
    ".tsx": "text/x-typescript",
    ".jsx": "text/javascript",
    ".java": "text/x-java",
    ".kt": "text/x-kotlin",
    ".go": "text/x-go",
    ".rs": "text/x-rust",
    ".rb": "text/x-ruby",
    ".php": "text/x-php",
    ".c": "text/x-c",
    ".h": "text/x-c",
    ".cpp": "text/x-c++",
    ".hpp": "text/x-c++",
    ".cs": "text/x-csharp",
    ".swift": "text/x-swift",
    ".sh": "text/x-shellscript",
    ".tex": "text/x-tex",
    ".srt": "text/plain",
}
# Declared types that are text even outside text/*.
_TEXT_APPLICATION_TYPES = {
    "application/json",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/toml",
    "application/sql",
    "application/javascript",
    "application/jsonl",
    "application/x-ndjson",
}
SUPPORTED_TYPES = (
    "text files (UTF-8, sent as text/* or named .txt, .md, .csv, .json, .xml, "
    ".html, .py and other source extensions), image/png, image/jpeg, "
    "image/gif, image/webp, application/pdf"
)
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")
# A declared type is kept only as a plain type/subtype that fits the files.media_type column.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
MAX_MEDIA_TYPE_CHARS = 100


def sniff_media_type(data: bytes, filename: str | None, declared: str | None) -> str | None:
    """The supported media type of ``data``, or None: magic numbers first, then text rules."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if b"\x00" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    extension = PurePosixPath(filename).suffix.lower() if filename else ""
    if extension in TEXT_EXTENSIONS:
        return TEXT_EXTENSIONS[extension]
    base = (declared or "").split(";", 1)[0].strip().lower()
    if len(base) > MAX_MEDIA_TYPE_CHARS or not _MEDIA_TYPE.fullmatch(base):
        return None
    if (
        base.startswith("text/")
        or base in _TEXT_APPLICATION_TYPES
        or base.endswith(("+json", "+xml"))
    ):
        return base
    return None


def content_block(record: FileRecord, content: bytes) -> ContentBlock:
    """The content block that carries one stored file into a prompt."""
    source: Base64Source = {
        "type": "base64",
        "media_type": record.media_type,
        "data": base64.b64encode(content).decode("ascii"),
    }
    if record.media_type == _PDF:
        return {"type": "document", "source": dict(source)}
    if record.media_type in _IMAGE_TYPES:
        return {"type": "image", "source": source}
    name = f' name="{html.escape(record.filename)}"' if record.filename else ""
    text = content.decode("utf-8-sig")
    return {
        "type": "text",
        "text": f'<file{name} media_type="{record.media_type}">\n{text}\n</file>',
    }


async def resolve_attachments(
    request: Request, key: KeyRecord, tokens: Sequence[str]
) -> list[ContentBlock]:
    """Content blocks for ``tokens``, in order; 404 names a token this key cannot use.

    Everything that can refuse the list (count, repeats, ownership, total size) is decided
    from the stored sizes before any bytes are loaded; loading and encoding then run off the
    event loop.
    """
    if not tokens:
        return []
    if len(tokens) > MAX_ATTACHMENTS:
        raise ApiError(
            "invalid_request", f"files: at most {MAX_ATTACHMENTS} files per run", param="files"
        )
    repeated = next((token for token, n in Counter(tokens).items() if n > 1), None)
    if repeated is not None:
        raise ApiError(
            "invalid_request",
            f"files: {repeated!r} is listed more than once; attach each file once",
            param="files",
        )
    store = services_of(request).store
    records: dict[str, FileRecord] = await store.files.records(tokens, key_id=key.id, now=utcnow())
    _check_owned(tokens, records)
    _check_sizes(request, [records[token] for token in tokens])
    found = await store.files.contents(tokens, key_id=key.id, now=utcnow())
    _check_owned(tokens, found)  # one may have expired or gone since its size was read
    pairs = [found[token] for token in tokens]
    return await asyncio.to_thread(lambda: [content_block(*pair) for pair in pairs])


def _check_owned(tokens: Sequence[str], found: Mapping[str, object]) -> None:
    """404 naming the first token this key cannot use (unknown, expired or another key's)."""
    missing = next((token for token in tokens if token not in found), None)
    if missing is not None:
        raise ApiError(
            "not_found",
            f"no file {missing!r} (unknown, expired or uploaded with another key)",
            param="files",
        )


def _check_sizes(request: Request, records: list[FileRecord]) -> None:
    """413 when the files would not fit in a request body, or their text in a prompt."""
    settings = services_of(request).settings
    total = sum(record.size for record in records)
    if total > settings.max_body_bytes:
        raise ApiError(
            "request_too_large",
            f"attached files total {total} bytes; the limit "
            f"is {settings.max_body_bytes} (CCGATE_MAX_BODY_BYTES)",
            param="files",
        )
    # Inlined text is at least its stored size less a byte order mark.
    text = sum(max(0, r.size - 3) for r in records if r.media_type not in _BINARY_TYPES)
    if text > settings.max_prompt_bytes:
        raise ApiError(
            "request_too_large",
            f"attached text files total {text} bytes; the "
            f"prompt limit is {settings.max_prompt_bytes} "
            "(CCGATE_MAX_PROMPT_BYTES)",
            param="files",
        )


def file_view(record: FileRecord) -> dict[str, Any]:
    """A file as the API shows it: its token and facts, never its bytes."""
    left = (record.expires_at - utcnow()).total_seconds()
    return {
        "file_token": record.id,
        "filename": record.filename,
        "media_type": record.media_type,
        "size": record.size,
        "ttl_secs": max(0, math.ceil(left)),
        "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
        "expires_at": record.expires_at.isoformat().replace("+00:00", "Z"),
    }


def _ttl(raw: object) -> int:
    if raw is None or raw == "":
        return TTL_DEFAULT_SECS
    ttl = int(raw) if isinstance(raw, str) and re.fullmatch(r"\s*[0-9]{1,9}\s*", raw) else None
    if ttl is None or not TTL_MIN_SECS <= ttl <= TTL_MAX_SECS:
        raise ApiError(
            "invalid_request",
            f"ttl_secs: must be a whole number of seconds from {TTL_MIN_SECS} to {TTL_MAX_SECS}",
            param="ttl_secs",
        )
    return ttl


def _clean_filename(name: str | None) -> str | None:
    if not name:
        return None
    base = _UNSAFE_NAME.sub("", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return base[:255] or None


async def store_upload(request: Request, key: KeyRecord) -> dict[str, Any]:
    """Read the multipart upload, check it and store it; the new file's view."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(
            "invalid_request",
            "send the file as multipart/form-data in the field 'file'",
            param="file",
        )
    limit: int = services_of(request).settings.files_max_bytes
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                "invalid_request",
                "file: missing; send the file as a multipart file part named 'file'",
                param="file",
            )
        ttl = _ttl(form.get("ttl_secs"))
        data = await upload.read(limit + 1)
        filename, declared = _clean_filename(upload.filename), upload.content_type
    if len(data) > limit:
        raise ApiError(
            "request_too_large",
            f"file exceeds {limit} bytes (CCGATE_FILES_MAX_BYTES)",
            param="file",
        )
    if not data:
        raise ApiError("invalid_request", "file: is empty", param="file")
    media_type = sniff_media_type(data, filename, declared)
    if media_type is None:
        raise ApiError(
            "invalid_request",
            f"file: unsupported type ({declared or 'unknown'}); supported: {SUPPORTED_TYPES}",
            param="file",
        )
    now = utcnow()
    record = await services_of(request).store.files.insert(
        file_id=new_id("ff"),
        key_id=key.id,
        filename=filename,
        media_type=media_type,
        content=data,
        now=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    return {**file_view(record), "ttl_secs": ttl}


async def owned_file(request: Request, key: KeyRecord, token: str) -> FileRecord:
    """The caller's unexpired file ``token``, or 404 (another key's file is none)."""
    record: FileRecord | None = await services_of(request).store.files.get(
        token, key_id=key.id, now=utcnow()
    )
    if record is None:
        raise ApiError(
            "not_found", f"no file {token!r} (unknown, expired or uploaded with another key)"
        )
    return record


UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "ttl_secs": {
                            "type": "integer",
                            "minimum": TTL_MIN_SECS,
                            "maximum": TTL_MAX_SECS,
                            "default": TTL_DEFAULT_SECS,
                        },
                    },
                }
            }
        },
    }
}
