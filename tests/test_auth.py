"""Who may open the page: a shared token off loopback, none on loopback, open only on purpose.

The server tests run a real Voilà server (``drivendata serve``) on a real SQLite store and visit
it with urllib, a kernel WebSocket and headless Chromium.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import click
import pytest

from drivendata import stream
from drivendata.database import Source, source_from
from drivendata.server import access_token, voila_config
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FIRST_PAINT_TIMEOUT,
    SIX_PLOTS_DRAWN,
    get,
    voila_server,
)

TOKEN = "shared-" + uuid.uuid4().hex


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("DRIVENDATA_TOKEN", raising=False)
    monkeypatch.delenv("DRIVENDATA_OPEN_ACCESS", raising=False)
    return monkeypatch


def test_loopback_needs_no_token(clean_env: pytest.MonkeyPatch) -> None:
    assert access_token("127.0.0.1") == (None, False)
    assert access_token("localhost") == (None, False)


def test_any_other_address_gets_a_random_token(clean_env: pytest.MonkeyPatch) -> None:
    first, generated = access_token("0.0.0.0")
    second, _ = access_token("0.0.0.0")
    assert generated and first and second and first != second and len(first) >= 24


def test_the_token_setting_wins_everywhere(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DRIVENDATA_TOKEN", TOKEN)
    assert access_token("0.0.0.0") == (TOKEN, False)
    assert access_token("127.0.0.1") == (TOKEN, False)
    config = voila_config("0.0.0.0", 8866, max_kernels=2, preheat=0, drop_timeout=15, token=TOKEN)
    assert config.Voila.token == TOKEN


def test_open_access_only_on_purpose(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DRIVENDATA_OPEN_ACCESS", "1")
    assert access_token("0.0.0.0") == (None, False)
    clean_env.setenv("DRIVENDATA_TOKEN", TOKEN)
    with pytest.raises(click.ClickException, match="unset one of them"):
        access_token("0.0.0.0")


# ---------------------------------------------------------------- a real server with a token


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Source:
    source = source_from(f"sqlite:///{tmp_path_factory.mktemp('store') / 'drivendata.db'}")
    stream.seed(source, rows=5_000, days=7, seed=3)
    return source


@pytest.fixture(scope="module")
def server(store: Source, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with voila_server(
        tmp_path_factory.mktemp("auth"), str(store.url), preheat="0", token=TOKEN
    ) as url:
        yield url


def viewers(url: str) -> int:
    return int(json.loads(get(url + "healthz")[1])["viewers"])


def websocket_status(url: str, kernel_id: str, headers: dict[str, str]) -> int:
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    async def connect() -> int:
        ws_url = url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
        try:
            conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
        except HTTPClientError as exc:
            return exc.code
        conn.close()
        return 101

    return asyncio.run(connect())


@pytest.mark.browser
def test_without_the_token_no_page_and_no_kernel(server: str) -> None:
    for path in ("", "?token=wrong", "voila/render/dashboard.ipynb"):
        status, body = get(server + path)
        # urllib follows the redirect to the login form
        assert status == 200 and 'name="password"' in body, path
        assert "js-plotly-plot" not in body and "kernelId" not in body
    assert viewers(server) == 0
    status, body = get(server + "api/kernels")
    assert status == 403 or 'name="password"' in body
    assert websocket_status(server, str(uuid.uuid4()), {}) == 403


@pytest.mark.browser
def test_with_the_token_the_dashboard(server: str) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server, wait_until="load")
            assert page.locator("#password_input").count() == 1
            assert page.locator("#new_password_input").count() == 0  # no password changes
            assert viewers(server) == 0
            # The shared link carries the token once; the login cookie carries the WebSocket.
            page.goto(f"{server}?token={TOKEN}", wait_until="commit")
            page.wait_for_function(SIX_PLOTS_DRAWN, timeout=FIRST_PAINT_TIMEOUT)
            assert page.locator(".js-plotly-plot").count() == 6
            assert viewers(server) == 1
            # Typed into the login form, the token works too.
            other = browser.new_page()
            other.goto(server, wait_until="load")
            other.fill("#password_input", TOKEN)
            other.click("#login_submit")
            other.wait_for_function(SIX_PLOTS_DRAWN, timeout=FIRST_PAINT_TIMEOUT)
        finally:
            browser.close()
