"""``/api/v1/files``: upload, attach to runs and jobs, key scope, expiry, limits, and
attachment checks made before any file bytes are loaded."""

from __future__ import annotations

import asyncio
import base64
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest

from ccgate.api import attachments as files_api
from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.policy import KeyPolicy
from ccgate.store import Database, Store
from ccgate.store.files import FileTable
from ccgate.turns import ContentBlock
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(40))
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"


async def _upload(
    gw: Gateway, name: str, data: bytes, content_type: str = "", key: str | None = None, **form: str
) -> httpx.Response:
    part = (name, data, content_type) if content_type else (name, data)
    return await gw.client.post(
        "/api/v1/files", files={"file": part}, data=form, headers=gw.auth(key)
    )


async def _token(gw: Gateway, name: str, data: bytes, content_type: str = "") -> str:
    response = await _upload(gw, name, data, content_type)
    assert response.status_code == 201, response.text
    return str(response.json()["file_token"])


async def _key_id(gw: Gateway) -> str:
    record = await app_services(gw.app).store.keys.by_name("app")
    assert record is not None
    return str(record.id)


async def test_upload_returns_unguessable_token_and_facts(gateway: Gateway) -> None:
    """An upload answers 201 with an ``ff_`` token, size, sniffed type, name and expiry."""
    response = await _upload(gateway, "shot.png", PNG, "application/octet-stream", ttl_secs="120")
    assert response.status_code == 201
    body = response.json()
    assert body["file_token"].startswith("ff_") and len(body["file_token"]) >= 27
    assert (body["size"], body["media_type"]) == (len(PNG), "image/png")
    assert (body["filename"], body["ttl_secs"]) == ("shot.png", 120)
    assert body["expires_at"].endswith("Z")
    other = await _upload(gateway, "shot.png", PNG)
    assert other.json()["file_token"] != body["file_token"]


async def test_run_appends_image_block_after_prompt(gateway_factory: Any) -> None:
    """An attached PNG reaches the runner as a base64 image block after the prompt text."""
    runner = FakeRunner()
    gw = await gateway_factory(runner)
    token = await _token(gw, "shot.png", PNG)
    response = await gw.run({"prompt": "what is this?", "files": [token]})
    assert response.status_code == 200, response.text
    [request] = runner.started
    assert request.content[0] == {"type": "text", "text": "what is this?"}
    assert request.content[1] == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(PNG).decode(),
        },
    }


async def test_run_attaches_pdf_as_document_block(gateway_factory: Any) -> None:
    """An attached PDF reaches the runner as a base64 document block."""
    runner = FakeRunner()
    gw = await gateway_factory(runner)
    token = await _token(gw, "report.bin", PDF)
    await gw.run({"prompt": "summarise", "files": [token]})
    block = runner.started[0].content[1]
    assert block["type"] == "document"
    assert block["source"]["media_type"] == "application/pdf"
    assert base64.b64decode(block["source"]["data"]) == PDF


async def test_run_inlines_text_file_in_a_file_tag(gateway_factory: Any) -> None:
    """A text file is inlined as a text block wrapped in ``<file name=...>``."""
    runner = FakeRunner()
    gw = await gateway_factory(runner)
    token = await _token(gw, "notes.md", "# Plan\n- ship ✓\n".encode())
    response = await gw.run({"prompt": "read this", "files": [token]})
    block = runner.started[0].content[1]
    assert block == {
        "type": "text",
        "text": '<file name="notes.md" media_type="text/markdown">\n# Plan\n- ship ✓\n\n</file>',
    }
    assert "- ship ✓" in response.json()["result"]


async def test_async_job_attaches_files(gateway_factory: Any) -> None:
    """``POST /api/v1/jobs`` takes ``files`` too; the runner gets the blocks in order."""
    runner = FakeRunner()
    gw = await gateway_factory(runner)
    tokens = [await _token(gw, "a.pdf", PDF), await _token(gw, "b.png", PNG)]
    response = await gw.client.post(
        "/api/v1/jobs", json={"prompt": "x", "files": tokens}, headers=gw.auth()
    )
    assert response.status_code == 202, response.text
    await app_services(gw.app).jobs.wait(response.json()["job_id"])
    kinds = [block["type"] for block in runner.started[0].content]
    assert kinds == ["text", "document", "image"]


async def test_file_of_another_key_is_404(gateway: Gateway) -> None:
    """Another key can neither attach, read nor delete a file; the 404 names the token."""
    token = await _token(gateway, "shot.png", PNG)
    other = (await app_services(gateway.app).keyring.create("other")).secret
    response = await gateway.client.post(
        "/api/v1/run", headers=gateway.auth(other), json={"prompt": "x", "files": [token]}
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert token in response.json()["error"]["message"]
    for method in ("GET", "DELETE"):
        answer = await gateway.client.request(
            method, f"/api/v1/files/{token}", headers=gateway.auth(other)
        )
        assert answer.status_code == 404


async def test_expired_file_is_gone_before_cleanup(gateway: Gateway) -> None:
    """A file past its expiry is 404 on attach and on GET even while its row remains."""
    now = utcnow()
    record = await app_services(gateway.app).store.files.insert(
        file_id="ff_expired0000000000000000",
        key_id=await _key_id(gateway),
        filename="old.txt",
        media_type="text/plain",
        content=b"old",
        now=now - timedelta(hours=2),
        expires_at=now - timedelta(seconds=1),
    )
    run = await gateway.run({"prompt": "x", "files": [record.id]})
    assert run.status_code == 404 and record.id in run.json()["error"]["message"]
    meta = await gateway.client.get(f"/api/v1/files/{record.id}", headers=gateway.auth())
    assert meta.status_code == 404


async def test_cleanup_loop_deletes_expired_files(gateway_factory: Any) -> None:
    """The cleanup loop removes expired files' rows; live files stay."""
    gw = await gateway_factory(CCGATE_CLEANUP_INTERVAL_SECS=1)
    store: Store = app_services(gw.app).store
    live = await _token(gw, "keep.txt", b"keep")
    now, key_id = utcnow(), await _key_id(gw)
    await store.files.insert(
        file_id="ff_stale00000000000000000000",
        key_id=key_id,
        filename=None,
        media_type="text/plain",
        content=b"stale",
        now=now - timedelta(hours=1),
        expires_at=now,
    )
    earlier = now - timedelta(minutes=30)
    for _ in range(50):
        if (
            await store.files.get("ff_stale00000000000000000000", key_id=key_id, now=earlier)
            is None
        ):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the expired file was not deleted")
    assert await store.files.get(live, key_id=key_id, now=utcnow()) is not None


async def test_upload_over_limit_is_413(gateway_factory: Any) -> None:
    """A file over CCGATE_FILES_MAX_BYTES is refused with 413 request_too_large."""
    gw = await gateway_factory(CCGATE_FILES_MAX_BYTES=1024)
    response = await _upload(gw, "big.txt", b"a" * 1025)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert (await _upload(gw, "fits.txt", b"a" * 1024)).status_code == 201


async def test_upload_unsupported_type_lists_supported(gateway: Gateway) -> None:
    """A zip (or a UTF-8 file with no text name or type) is 400 naming what is supported."""
    for name, data, content_type in (
        ("a.zip", b"PK\x03\x04\x14\x00" + bytes(30), "application/zip"),
        ("blob", b"plain words", "application/octet-stream"),
    ):
        response = await _upload(gateway, name, data, content_type)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request", "file")
        for supported in (
            "image/png",
            "image/jpeg",
            "image/gif",
            "image/webp",
            "application/pdf",
            ".md",
        ):
            assert supported in error["message"]


@pytest.mark.parametrize(
    ("name", "data", "content_type", "expected"),
    [
        ("pic", b"\xff\xd8\xff\xe0" + bytes(20), "", "image/jpeg"),
        ("anim.dat", b"GIF89a" + bytes(20), "", "image/gif"),
        ("x.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(20), "", "image/webp"),
        ("data.csv", b"a,b\n1,2\n", "application/octet-stream", "text/csv"),
        ("readme", "héllo".encode(), "text/plain; charset=utf-8", "text/plain"),
        ("fake.png", b"just text, not a png", "image/png", None),
    ],
)
async def test_upload_sniffs_media_type_from_bytes(
    gateway: Gateway, name: str, data: bytes, content_type: str, expected: str | None
) -> None:
    """The type comes from the bytes first, then the name or declared text type."""
    response = await _upload(gateway, name, data, content_type)
    if expected is None:
        assert response.status_code == 400
    else:
        assert response.status_code == 201, response.text
        assert response.json()["media_type"] == expected


async def test_upload_bad_requests_are_400(gateway: Gateway) -> None:
    """A missing file field, an empty file or a TTL out of 60..86400 is 400 naming it."""
    missing = await gateway.client.post(
        "/api/v1/files",
        data={"ttl_secs": "60"},
        files={"other": ("a.txt", b"x")},
        headers=gateway.auth(),
    )
    empty = await _upload(gateway, "a.txt", b"")
    short = await _upload(gateway, "a.txt", b"x", ttl_secs="59")
    long = await _upload(gateway, "a.txt", b"x", ttl_secs="86401")
    word = await _upload(gateway, "a.txt", b"x", ttl_secs="soon")
    json_body = await gateway.client.post(
        "/api/v1/files", json={"file": "x"}, headers=gateway.auth()
    )
    params = [
        (r.status_code, r.json()["error"]["param"])
        for r in (missing, empty, short, long, word, json_body)
    ]
    assert params == [
        (400, "file"),
        (400, "file"),
        (400, "ttl_secs"),
        (400, "ttl_secs"),
        (400, "ttl_secs"),
        (400, "file"),
    ]


async def test_upload_requires_a_key(gateway: Gateway) -> None:
    """Without a key the upload is 401 and nothing is stored."""
    response = await gateway.client.post("/api/v1/files", files={"file": ("a.txt", b"x")})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_get_shows_metadata_and_delete_removes(gateway: Gateway) -> None:
    """GET shows the file's facts without its bytes; DELETE makes it unattachable."""
    token = await _token(gateway, "notes.txt", b"secret words")
    meta = await gateway.client.get(f"/api/v1/files/{token}", headers=gateway.auth())
    assert meta.status_code == 200
    assert set(meta.json()) == {
        "file_token",
        "filename",
        "media_type",
        "size",
        "ttl_secs",
        "created_at",
        "expires_at",
    }
    assert "secret words" not in meta.text and 3590 <= meta.json()["ttl_secs"] <= 3600
    gone = await gateway.client.delete(f"/api/v1/files/{token}", headers=gateway.auth())
    assert gone.status_code == 204
    run = await gateway.run({"prompt": "x", "files": [token]})
    assert run.status_code == 404


async def test_run_refuses_more_than_twenty_files(gateway: Gateway) -> None:
    """``files`` holds at most 20 tokens; more is 400 naming the field."""
    response = await gateway.run({"prompt": "x", "files": ["ff_x"] * 21})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "files"


async def test_text_files_count_against_prompt_limit(gateway_factory: Any) -> None:
    """Inlined text counts toward CCGATE_MAX_PROMPT_BYTES; images do not."""
    gw = await gateway_factory(CCGATE_MAX_PROMPT_BYTES=100)
    text = await _token(gw, "long.txt", b"a" * 200)
    image = await _token(gw, "shot.png", PNG + bytes(200))
    assert (await gw.run({"prompt": "x", "files": [text]})).status_code == 413
    assert (await gw.run({"prompt": "x", "files": [image]})).status_code == 200


async def test_file_table_keeps_bytes_per_key_until_expiry(store: Store) -> None:
    """On every backend: bytes round-trip, other keys see nothing, expired rows go."""
    now = utcnow()
    for key_id in ("k1", "k2"):
        await store.keys.insert(
            key_id=key_id, name=key_id, prefix="ccg_x", secret_hash=key_id * 32, now=now
        )
    blob = bytes(range(256))
    await store.files.insert(
        file_id="ff_a",
        key_id="k1",
        filename="a.bin",
        media_type="image/png",
        content=blob,
        now=now,
        expires_at=now + timedelta(minutes=1),
    )
    found = await store.files.contents(["ff_a", "ff_missing"], key_id="k1", now=now)
    assert list(found) == ["ff_a"] and found["ff_a"][1] == blob
    assert await store.files.get("ff_a", key_id="k2", now=now) is None
    later = now + timedelta(minutes=2)
    assert await store.files.get("ff_a", key_id="k1", now=later) is None
    assert await store.files.delete_expired(later) == 1
    assert await store.files.get("ff_a", key_id="k1", now=now) is None


@pytest.fixture
def byte_loads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every FileTable.contents call (the one query that loads file bytes), by its tokens."""
    calls: list[list[str]] = []
    real_contents = FileTable.contents

    async def recording(self: FileTable, file_ids: Any, **kwargs: Any) -> Any:
        calls.append(list(file_ids))
        return await real_contents(self, file_ids, **kwargs)

    monkeypatch.setattr(FileTable, "contents", recording)
    return calls


async def test_run_refuses_a_file_listed_twice_before_loading_it(
    gateway: Gateway, byte_loads: list[list[str]]
) -> None:
    """The same token twice (or twenty times) is 400 naming ``files``; no bytes are read."""
    token = await _token(gateway, "big.pdf", PDF + bytes(4096))
    for copies in (2, 20):
        response = await gateway.run({"prompt": "x", "files": [token] * copies})
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request", "files")
        assert token in error["message"] and "more than once" in error["message"]
    assert byte_loads == []


async def test_run_refuses_files_over_the_body_limit_from_their_stored_sizes(
    gateway_factory: Any, byte_loads: list[list[str]]
) -> None:
    """Attachments summing past CCGATE_MAX_BODY_BYTES are 413 before any bytes are loaded."""
    gw = await gateway_factory(CCGATE_MAX_BODY_BYTES=4096)
    tokens = [await _token(gw, f"{n}.png", PNG + bytes(3000)) for n in range(2)]
    response = await gw.run({"prompt": "x", "files": tokens})
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "files"
    assert "CCGATE_MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert byte_loads == []
    assert (await gw.run({"prompt": "x", "files": tokens[:1]})).status_code == 200
    assert byte_loads == [tokens[:1]]


async def test_refused_attachment_requests_spend_no_rate_limit(gateway: Gateway) -> None:
    """Requests refused for their files (repeats, unknown, too large) leave the rpm untouched."""
    secret = (await app_services(gateway.app).keyring.create("one", KeyPolicy(rpm=1))).secret
    upload = await gateway.client.post(
        "/api/v1/files", files={"file": ("a.png", PNG)}, headers=gateway.auth(secret)
    )
    token = upload.json()["file_token"]
    for files in ([token, token], ["ff_unknown"], [token] * 21):
        refused = await gateway.client.post(
            "/api/v1/run", headers=gateway.auth(secret), json={"prompt": "x", "files": files}
        )
        assert refused.status_code in (400, 404)
    ok = await gateway.client.post(
        "/api/v1/run", headers=gateway.auth(secret), json={"prompt": "x", "files": [token]}
    )
    assert ok.status_code == 200
    again = await gateway.client.post(
        "/api/v1/run", headers=gateway.auth(secret), json={"prompt": "x"}
    )
    assert again.status_code == 429


async def test_attachments_are_read_and_encoded_off_the_event_loop(
    gateway_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File bytes are read and base64-encoded in worker threads, not on the loop's thread."""
    threads: dict[str, int] = {}
    real_block, real_read = files_api.content_block, Database._read_on_own_connection

    def block(record: Any, content: bytes) -> ContentBlock:
        threads["encode"] = threading.get_ident()
        return real_block(record, content)

    def read(self: Database, operation: Any) -> Any:
        threads["read"] = threading.get_ident()
        return real_read(self, operation)

    monkeypatch.setattr(files_api, "content_block", block)
    monkeypatch.setattr(Database, "_read_on_own_connection", read)
    runner = FakeRunner()
    gw = await gateway_factory(runner)
    response = await gw.run({"prompt": "x", "files": [await _token(gw, "a.png", PNG)]})
    assert response.status_code == 200
    assert runner.started[0].content[1]["type"] == "image"
    assert set(threads) == {"encode", "read"}
    assert threading.get_ident() not in threads.values()


async def test_file_table_records_give_sizes_without_bytes(store: Store) -> None:
    """On every backend: records() answers owned, unexpired files' sizes and nothing else."""
    now = utcnow()
    await store.keys.insert(key_id="k1", name="k1", prefix="ccg_x", secret_hash="k1" * 32, now=now)
    for file_id, expires in (("ff_live", now + timedelta(minutes=1)), ("ff_old", now)):
        await store.files.insert(
            file_id=file_id,
            key_id="k1",
            filename=None,
            media_type="text/plain",
            content=b"12345",
            now=now,
            expires_at=expires,
        )
    found = await store.files.records(["ff_live", "ff_old", "ff_none"], key_id="k1", now=now)
    assert list(found) == ["ff_live"] and found["ff_live"].size == 5
    assert not hasattr(found["ff_live"], "content")
    assert await store.files.records(["ff_live"], key_id="k2", now=now) == {}
