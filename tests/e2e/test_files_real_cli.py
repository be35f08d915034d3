"""Uploaded files reach the upstream API through the real claude CLI."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import httpx
import pytest

from tests.support.fake_anthropic import FakeAnthropic, Text

pytestmark = pytest.mark.real_cli


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _user_blocks(body: Any) -> list[dict[str, Any]]:
    return [
        block
        for message in body.get("messages", [])
        if message.get("role") == "user"
        for block in (message.get("content") if isinstance(message.get("content"), list) else [])
    ]


def test_attached_image_reaches_upstream(fake: FakeAnthropic, client: httpx.Client) -> None:
    """An uploaded PNG attached to a run arrives upstream as a base64 image block."""
    png = _png_1x1()
    fake.reply(Text("A red pixel."))
    upload = client.post("/api/v1/files", files={"file": ("pixel.png", png, "image/png")})
    assert upload.status_code == 201, upload.text

    response = client.post(
        "/api/v1/run",
        json={"prompt": "What is in this image?", "files": [upload.json()["file_token"]]},
    )

    assert response.status_code == 200, response.text
    assert response.json()["result"] == "A red pixel."
    images = [
        b for r in fake.message_requests() for b in _user_blocks(r.body) if b.get("type") == "image"
    ]
    assert images, [_user_blocks(r.body) for r in fake.message_requests()]
    assert images[0]["source"]["media_type"] == "image/png"
    assert base64.b64decode(images[0]["source"]["data"]) == png


def test_attached_pdf_and_text_reach_upstream(fake: FakeAnthropic, client: httpx.Client) -> None:
    """A PDF arrives upstream as a document block and a text file inline in the user turn."""
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    tokens = [
        client.post("/api/v1/files", files={"file": (name, data)}).json()["file_token"]
        for name, data in (("report.pdf", pdf), ("notes.txt", b"launch on Tuesday"))
    ]

    response = client.post("/api/v1/run", json={"prompt": "Summarise.", "files": tokens})

    assert response.status_code == 200, response.text
    blocks = [b for r in fake.message_requests() for b in _user_blocks(r.body)]
    documents = [b for b in blocks if b.get("type") == "document"]
    assert documents and base64.b64decode(documents[0]["source"]["data"]) == pdf
    assert any("launch on Tuesday" in str(b.get("text")) for b in blocks)
