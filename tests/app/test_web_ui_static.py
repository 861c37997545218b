"""The browser page's files, in-process (no browser): served with relative URLs only (so the page works behind a
proxy's path prefix), a strict Content-Security-Policy, turned off by PARAKEET_WEB_UI=false, open without an API key
while the API it calls is not (and the open prefix is no way around the key). The page in chromium: tests/browser."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from fakes import FakeEngine
from helpers import app_client, run, wav_of

KEY = "k-browser"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.urls.append(value)


def test_page_and_its_files_are_served_with_relative_urls_only() -> None:
    async def main() -> None:
        async with app_client(FakeEngine()) as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            links = _Links()
            links.feed(page.text)
            # Relative only (works under a proxy's path prefix), and each one is served.
            assert links.urls and all(not u.startswith(("/", "http:", "https:", "//")) for u in links.urls), links.urls
            local = [u for u in links.urls if u.startswith("ui/")]
            assert {"ui/app.js", "ui/style.css"} <= set(local)
            for url in [*local, "ui/pcm-worklet.js"]:
                r = await client.get(f"/{url}")
                assert r.status_code == 200, url
                assert r.headers["cache-control"] == "no-cache"
            assert (
                (await client.get("/ui/app.js"))
                .headers["content-type"]
                .startswith(("text/javascript", "application/javascript"))
            )
            # The script's own requests are relative too: no string literal starts with "/" (or "//", "http").
            script = (await client.get("/ui/app.js")).text
            assert re.findall(r"""["'`](?:/|https?://)""", script) == []
            assert {"transcribe", "health", "v1/models", "v1/realtime?intent=transcription"} <= set(
                re.findall(r"""["'`]([a-z0-9/]+(?:\?intent=transcription)?)["'`]""", script)
            )
            assert (await client.get("/ui/nothing.js")).status_code == 404
            assert (await client.get("/ui/../server.py")).status_code == 404

    run(main())


def test_web_ui_can_be_turned_off() -> None:
    async def main() -> None:
        async with app_client(FakeEngine(), web_ui=False) as client:
            for path in ("/", "/ui/app.js"):
                r = await client.get(path)
                assert r.status_code == 404, path
                assert r.json()["error"]["code"] == "not_found"
            assert (await client.get("/health")).status_code == 200

    run(main())


def test_with_api_keys_the_page_is_open_and_the_api_is_not() -> None:
    async def main() -> None:
        async with app_client(FakeEngine(), api_keys=KEY) as client:
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/ui/app.js")).status_code == 200
            assert (await client.get("/v1/models")).status_code == 401
            assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
            # The open prefix is not a way around the key: dot segments under /ui/ stay in the static mount.
            for path in ("/ui/%2E%2E/transcribe", "/ui/..%2Ftranscribe"):
                r = await client.post(path, files={"file": ("a.wav", wav_of(3))})
                assert r.status_code == 405, (path, r.status_code)
            assert (await client.get("/ui/%2E%2E/v1/models")).status_code == 404
        async with app_client(FakeEngine(), api_keys=KEY, web_ui=False) as client:
            assert (await client.get("/ui/app.js")).status_code == 401  # no open prefix when the page is off

    run(main())
