"""The browser page at `/` in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (both installed by scripts/test.sh; nothing is downloaded). The server is a real uvicorn on loopback
serving the digits model (in this process, sharing the session's engine: conftest.digits_server), so the texts
checked are real transcripts of espeak-ng speech.

The microphone is chromium's fake capture device playing a WAV file (`--use-fake-device-for-media-stream
--use-file-for-fake-audio-capture`): the page's AudioWorklet, the PCM16 over `/v1/realtime` and the server VAD
all run as they do for a user. Each state is saved as a screenshot (WEB_UI_SCREENSHOT_DIR, else a temp
folder; README's picture comes from here).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import speech

from helpers import LiveServer, Serve, ServerProcess, free_port, live_digits_server, run, wait_until, wav_of

pytestmark = pytest.mark.timeout(600)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TEXT = "four two seven one nine"
KEY = "k-browser"


# ------------------------------------------------------------------------------------------- fixtures


@dataclass
class Spoken:
    text: str
    wav: Path  # 16 kHz PCM16: 0.5 s silence, the utterance, 2 s silence (so that server VAD ends the turn)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Spoken:
    wav = tmp_path_factory.mktemp("speech") / "digits.wav"
    waveform = speech.speak(TEXT)
    silence = np.zeros(8000, np.float32)
    sf.write(wav, np.concatenate([silence, waveform, silence, silence, silence, silence]), 16000, subtype="PCM_16")
    return Spoken(TEXT, wav)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("WEB_UI_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


@dataclass
class Browser:
    driver: WebDriver
    downloads: Path
    shots: Path

    def open(self, url: str) -> None:
        self.driver.get(url)

    def el(self, element_id: str) -> Any:
        return self.driver.find_element(By.ID, element_id)

    def wait(self, condition: Callable[[WebDriver], Any], timeout_s: float = 60, what: str = "") -> Any:
        try:
            return WebDriverWait(self.driver, timeout_s, poll_frequency=0.1).until(condition)
        except TimeoutException:
            raise AssertionError(
                f"timed out waiting for {what}; page error: {self.error()!r}; state: {self.state()!r}; "
                f"console: {self.console()}"
            ) from None

    def error(self) -> str:
        el = self.el("error")
        return str(el.text) if el.is_displayed() else ""

    def state(self) -> str:
        return str(self.el("server-state").text)

    def console(self) -> list[str]:
        with contextlib.suppress(Exception):
            return [str(e["message"]) for e in self.driver.get_log("browser")][-10:]
        return []

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path

    def upload(self, path: Path) -> None:
        self.el("file-input").send_keys(str(path))

    def wait_file_done(self) -> None:
        self.wait(lambda d: self.el("file-result").is_displayed() or self.error(), what="the file's transcript")

    def downloaded(self, name: str, timeout_s: float = 30) -> str:
        path = self.downloads / name
        # chromium writes <name>.crdownload and renames it into place once the content is complete
        self.wait(lambda d: path.exists() and path.stat().st_size > 0, timeout_s, what=f"download {name}")
        return path.read_text()


def launch(tmp: Path, shots: Path, fake_audio: Path | None = None, size: tuple[int, int] = (1200, 1300)) -> Browser:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run ./scripts/test.sh, which installs chromium and chromium-driver")
    downloads = tmp / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As the machine's notes say: without the background-networking flags chromium tries Google's hosts.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", f"--user-data-dir={tmp / 'profile'}", f"--window-size={size[0]},{size[1]}",
                "--autoplay-policy=no-user-gesture-required"):  # fmt: skip
        options.add_argument(arg)
    if fake_audio is not None:
        options.add_argument("--use-fake-ui-for-media-stream")  # grant the microphone without a prompt
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_audio}")
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    return Browser(driver, downloads, shots)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, screenshots: Path) -> Iterator[Browser]:
    b = launch(tmp_path_factory.mktemp("chromium"), screenshots)
    try:
        yield b
    finally:
        b.driver.quit()


@pytest.fixture(scope="module")
def mic_browser(tmp_path_factory: pytest.TempPathFactory, screenshots: Path, spoken: Spoken) -> Iterator[Browser]:
    b = launch(tmp_path_factory.mktemp("chromium_mic"), screenshots, fake_audio=spoken.wav)
    try:
        yield b
    finally:
        b.driver.quit()


@pytest.fixture(scope="module")
def keyed_server(digits_engine: Any, silero_vad: Any, digits_model_path: Path) -> Iterator[LiveServer]:
    """The digits app behind API keys, on a loopback socket (the other tests use conftest.digits_server)."""
    with live_digits_server(digits_engine, silero_vad, digits_model_path, api_keys=KEY) as server:
        yield server


def ready_page(b: Browser, server: LiveServer | ServerProcess) -> None:
    b.open(f"{server.url}/")
    b.wait(lambda d: b.el("server-state").get_attribute("data-state") == "ready", what="the page to show Ready")


def record_partials(b: Browser) -> None:
    """Remember every text the live transcript shows greyed (partial) before the final replaces it, and the
    highest value the level meter showed."""
    b.driver.execute_script(
        """window.__partials = []; window.__level = 0;
        new MutationObserver(() => {
          for (const s of document.querySelectorAll('#mic-transcript .partial'))
            if (s.textContent) window.__partials.push(s.textContent);
        }).observe(document.getElementById('mic-transcript'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
        setInterval(() => {
          window.__level = Math.max(window.__level, Number(document.getElementById('mic-level').value));
        }, 20);"""
    )


def speak_into_mic(b: Browser) -> tuple[list[str], list[str]]:
    """Start the microphone, wait for the first final, stop; (finals, partials seen)."""
    record_partials(b)
    b.el("mic-toggle").click()
    b.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#mic-transcript .final"), 90, "a final from the microphone")
    finals = [str(e.text) for e in b.driver.find_elements(By.CSS_SELECTOR, "#mic-transcript .final")]
    partials = [str(p) for p in b.driver.execute_script("return window.__partials")]
    return finals, partials


def file_and_voice(b: Browser, spoken: Spoken) -> None:
    """Upload the WAV and check its transcript, then speak it into the microphone and check the final."""
    b.upload(spoken.wav)
    b.wait_file_done()
    assert b.error() == ""
    assert b.el("file-transcript").text == spoken.text
    b.el("mic-clear").click()
    try:
        finals, _ = speak_into_mic(b)
        assert finals[0] == spoken.text
    finally:
        stop_mic(b)


def stop_mic(b: Browser) -> None:
    if b.el("mic-toggle").get_attribute("aria-pressed") == "true":
        b.el("mic-toggle").click()
    b.wait(lambda d: b.el("mic-toggle").get_attribute("aria-pressed") == "false", 30, "the microphone to stop")


# ------------------------------------------------------------------------------------ without a browser


def test_a_websocket_may_carry_the_key_as_a_subprotocol(keyed_server: LiveServer) -> None:
    """Browsers cannot set headers on a WebSocket: the key rides in Sec-WebSocket-Protocol, and the server
    answers with the other protocol offered (never echoing the key)."""
    import websockets

    async def connect(protocols: list[str], url: str) -> tuple[str | None, dict[str, Any]]:
        async with websockets.connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
            return ws.subprotocol, json.loads(await ws.recv())

    url = keyed_server.url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    chosen, event = run(connect(["realtime", f"openai-insecure-api-key.{KEY}"], url))
    assert (chosen, event["type"]) == ("realtime", "session.created"), event
    for protocols in (["realtime", "openai-insecure-api-key.wrong"], ["realtime"]):
        with pytest.raises(websockets.InvalidStatus) as refused:
            run(connect(protocols, url))
        assert refused.value.response.status_code == 403


# ----------------------------------------------------------------------------------------- in chromium


def test_upload_shows_the_transcript_with_word_timestamps(
    browser: Browser, digits_server: LiveServer, spoken: Spoken
) -> None:
    expected = httpx.post(f"{digits_server.url}/transcribe", files={"file": spoken.wav.read_bytes()},
                          data={"timestamps": "true"}, timeout=60).json()  # fmt: skip
    ready_page(browser, digits_server)
    browser.shot("ready")
    browser.upload(spoken.wav)
    browser.wait_file_done()
    assert browser.error() == ""
    words = browser.driver.find_elements(By.CSS_SELECTOR, "#file-transcript .word")
    assert " ".join(w.text for w in words) == expected["text"] == spoken.text
    assert [float(w.get_attribute("data-start")) for w in words] == [w["start"] for w in expected["timestamps"]["word"]]
    assert browser.el("stat-duration").text == f"{expected['duration_sec']:.2f} s"
    assert browser.el("stat-rtfx").text.endswith("× real time")
    browser.shot("file")
    # A word is a button: selecting it (keyboard too) moves the player to the word's start.
    third = words[2]
    third.send_keys(Keys.ENTER)
    position = browser.wait(
        lambda d: d.execute_script("const p = document.getElementById('player'); return p.currentTime || null"),
        what="the player to seek",
    )
    assert abs(float(position) - float(third.get_attribute("data-start"))) < 0.3


RESAMPLE_SCRIPT = """
const [b64, rate, done] = arguments;
const pcm = Int16Array.from(new Int16Array(Uint8Array.from(atob(b64), c => c.charCodeAt(0)).buffer));
const ctx = new OfflineAudioContext(1, pcm.length, rate);
const buffer = ctx.createBuffer(1, pcm.length, rate);
buffer.getChannelData(0).set(Float32Array.from(pcm, v => v / 32768));
ctx.audioWorklet.addModule('ui/pcm-worklet.js').then(async () => {
  const node = new AudioWorkletNode(ctx, 'pcm-capture', {processorOptions: {targetRate: 24000, chunkMs: 100}});
  const chunks = [];
  node.port.onmessage = ({data}) => chunks.push(new Int16Array(data.pcm));
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(node).connect(ctx.destination);
  source.start();
  await ctx.startRendering();
  await new Promise(r => setTimeout(r, 300));
  node.port.postMessage('flush');
  await new Promise(r => setTimeout(r, 300));
  const out = new Int16Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  let s = '';
  const bytes = new Uint8Array(out.buffer);
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  done(btoa(s));
}).catch(e => done('error: ' + e));
"""


@pytest.mark.parametrize("rate", [48000, 44100])
def test_the_worklet_resamples_when_the_browser_cannot(
    browser: Browser, digits_server: LiveServer, spoken: Spoken, rate: int
) -> None:
    """Where the AudioContext cannot run at 24 kHz (Firefox with a microphone), the page's AudioWorklet resamples
    the device rate itself: its output must match soxr's (the server's resampler) closely and transcribe the same."""
    import soxr

    ready_page(browser, digits_server)
    x16, _ = sf.read(spoken.wav, dtype="float32")
    x = soxr.resample(x16, 16000, rate, quality="VHQ")
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    browser.driver.set_script_timeout(60)
    got = browser.driver.execute_async_script(RESAMPLE_SCRIPT, base64.b64encode(pcm.tobytes()).decode(), rate)
    assert not got.startswith("error"), got
    y = np.frombuffer(base64.b64decode(got), dtype="<i2").astype(np.float32) / 32768
    reference = soxr.resample(pcm.astype(np.float32) / 32768, rate, 24000, quality="VHQ")
    # The offline context renders whole 128-frame quanta: at most one quantum more than the input.
    assert 0 <= len(y) - len(reference) <= 128 * 24000 // rate + 1, (len(y), len(reference))
    n = min(len(y), len(reference))
    best = max(range(-3, 4), key=lambda k: float(np.dot(np.roll(y[:n], k), reference[:n])))  # filter delays differ
    error = np.roll(y[:n], best) - reference[:n]
    snr_db = 10 * np.log10(float(np.sum(reference[:n] ** 2)) / float(np.sum(error**2)))
    print(f"{rate} Hz -> 24 kHz: worklet vs soxr SNR {snr_db:.1f} dB (shift {best})")
    assert snr_db > 20, snr_db
    wav = io.BytesIO()
    sf.write(wav, y, 24000, format="WAV", subtype="PCM_16")
    text = httpx.post(f"{digits_server.url}/transcribe", files={"file": wav.getvalue()}, timeout=60).json()["text"]
    assert text == spoken.text


def test_a_dropped_file_is_transcribed(browser: Browser, digits_server: LiveServer, spoken: Spoken) -> None:
    """Drag-and-drop: a `drop` event carrying the WAV as a File (what the browser makes of a dragged file)."""
    ready_page(browser, digits_server)
    browser.driver.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], 'dropped.wav', {type: 'audio/wav'}));
        const zone = document.getElementById('drop-zone');
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));""",
        base64.b64encode(spoken.wav.read_bytes()).decode(),
    )
    browser.wait_file_done()
    assert browser.error() == ""
    assert browser.el("file-transcript").text == spoken.text
    assert browser.el("file-name").text.startswith("dropped.wav")


def test_downloads_come_from_the_api_formats(browser: Browser, digits_server: LiveServer, spoken: Spoken) -> None:
    ready_page(browser, digits_server)
    browser.upload(spoken.wav)
    browser.wait_file_done()

    def download(fmt: str) -> str:  # one click at a time, as a user would
        browser.driver.find_element(By.CSS_SELECTOR, f".downloads [data-format={fmt}]").click()
        return browser.downloaded(f"digits.{fmt}")

    cues = list(srt.parse(download("srt")))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == spoken.text
    assert cues[0].start.total_seconds() > 0.3  # after the half second of silence
    vtt = webvtt.from_string(download("vtt"))
    assert " ".join(c.text.replace("\n", " ") for c in vtt) == spoken.text
    assert download("txt") == spoken.text + "\n"
    body = json.loads(download("json"))
    assert body["text"] == spoken.text and [w["word"] for w in body["timestamps"]["word"]] == spoken.text.split()


def test_an_error_shows_the_servers_message(browser: Browser, digits_server: LiveServer, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not audio\n" * 20)
    direct = httpx.post(f"{digits_server.url}/transcribe", files={"file": ("notes.txt", notes.read_bytes())})
    assert direct.status_code == 415
    ready_page(browser, digits_server)
    browser.upload(notes)
    browser.wait(lambda d: browser.error(), what="an error message")
    assert browser.error() == f"Unsupported format: {direct.json()['error']['message']}"
    assert not browser.el("file-result").is_displayed()
    browser.shot("error")
    # Longer than the server's PARAKEET_MAX_AUDIO_DURATION_S (60 s on this server): 413 naming the limit.
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.zeros(16000 * 65, np.float32), 16000, subtype="PCM_16")
    direct = httpx.post(f"{digits_server.url}/transcribe", files={"file": ("long.wav", long_wav.read_bytes())})
    assert direct.status_code == 413
    browser.upload(long_wav)
    browser.wait(lambda d: browser.error().startswith("Too large or too long"), what="the 413 message")
    assert browser.error() == f"Too large or too long: {direct.json()['error']['message']}"


def test_microphone_streams_partials_and_the_final(
    mic_browser: Browser, digits_server: LiveServer, spoken: Spoken
) -> None:
    ready_page(mic_browser, digits_server)
    mic_browser.upload(spoken.wav)  # a file too, so that the screenshot (README's) shows both halves in use
    mic_browser.wait_file_done()
    try:
        finals, partials = speak_into_mic(mic_browser)
        assert finals[0] == spoken.text
        level = float(mic_browser.driver.execute_script("return window.__level"))
        mic_browser.shot("microphone")
    finally:
        stop_mic(mic_browser)
    # The meter moved with the speech: -60..0 dBFS maps to 0..1, and espeak's speech peaks near -20 dBFS RMS.
    assert level > 0.4, level
    # Partials (greyed) were shown while the words were spoken, and each was whole words of the final.
    assert partials, "no partial was shown before the final"
    assert all(spoken.text.startswith(p) or p in spoken.text for p in partials), partials
    assert not mic_browser.driver.find_elements(By.CSS_SELECTOR, "#mic-transcript .partial:not(.stale)")
    assert mic_browser.el("mic-state").text == "Off."


PREFIX_PROXY_CFG = """
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
frontend web
    bind 127.0.0.1:{port}
    http-request deny deny_status 404 unless {{ path_beg /stt/ }}
    http-request set-path %[path,regsub(^/stt/,/)]
    default_backend parakeet
backend parakeet
    server s1 {backend}
"""


def test_behind_a_reverse_proxy_under_a_path_prefix(
    mic_browser: Browser, digits_server: LiveServer, spoken: Spoken, tmp_path: Path
) -> None:
    """HAProxy serves the app under /stt/ only (anything else 404): the page, its files, its API calls and the
    microphone's WebSocket all go through the prefix, because every URL in the page is relative."""
    port = free_port()
    cfg = tmp_path / "prefix.cfg"
    cfg.write_text(PREFIX_PROXY_CFG.format(port=port, backend=digits_server.url.removeprefix("http://")))
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    with open(tmp_path / "haproxy.log", "wb") as log:
        proxy = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/stt"
        ServerProcess(url, proxy, tmp_path / "haproxy.log").wait_ready(timeout_s=30)  # the worker, via the proxy
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 404  # only under /stt/
        b = mic_browser
        b.open(f"{url}/")
        b.wait(lambda d: b.el("server-state").get_attribute("data-state") == "ready", what="Ready through the proxy")
        file_and_voice(b, spoken)
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_stopping_the_microphone_while_it_connects_is_quiet(mic_browser: Browser, digits_server: LiveServer) -> None:
    """Start then Stop at once (while the page asks for the microphone or opens the socket): back to Off, no error,
    and the next Start works."""
    b = mic_browser
    ready_page(b, digits_server)
    b.driver.execute_script("const t = document.getElementById('mic-toggle'); t.click(); t.click();")
    stop_mic(b)
    with pytest.raises(TimeoutException):  # polled for a second: a late getUserMedia or socket answer starts nothing
        WebDriverWait(b.driver, 1.0, poll_frequency=0.05).until(
            lambda d: b.el("mic-toggle").get_attribute("aria-pressed") == "true" or b.error()
        )
    assert b.el("mic-toggle").get_attribute("aria-pressed") == "false"
    assert b.error() == ""
    assert b.el("mic-state").text == "Off."
    b.el("mic-toggle").click()
    b.wait(lambda d: b.el("mic-state").text.startswith("Listening"), 30, "the microphone to start again")
    stop_mic(b)
    assert b.error() == ""


def test_phone_sized_screen_and_keyboard(tmp_path: Path, screenshots: Path, digits_server: LiveServer,
                                         spoken: Spoken) -> None:  # fmt: skip
    b = launch(tmp_path, screenshots, fake_audio=spoken.wav, size=(390, 844))
    try:
        ready_page(b, digits_server)
        overflow = b.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a 390 px screen"
        # Every control has a label (accessible name), and text meets WCAG AA contrast (4.5:1).
        unnamed = b.driver.execute_script(
            """return [...document.querySelectorAll('input, meter, progress, button')].filter(e =>
                 !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()
               ).map(e => e.outerHTML)"""
        )
        assert unnamed == []
        low = b.driver.execute_script(CONTRAST_SCRIPT)
        assert low == [], low
        # Keyboard: Tab reaches the file picker and the microphone; Space starts the microphone.
        # (Keys go to whatever has focus, as a user's keyboard does: a file input would take send_keys as a path.)
        reached = []
        for _ in range(30):
            ActionChains(b.driver).send_keys(Keys.TAB).perform()
            active = b.driver.switch_to.active_element
            reached.append(active.get_attribute("id") or active.text)
            if reached[-1] == "mic-toggle":
                break
        assert "file-input" in reached and reached[-1] == "mic-toggle", reached
        ActionChains(b.driver).send_keys(Keys.SPACE).perform()
        b.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#mic-transcript .final"), 90, "a final")
        b.shot("phone")
        ActionChains(b.driver).send_keys(Keys.SPACE).perform()  # stop
        b.wait(lambda d: b.el("mic-toggle").get_attribute("aria-pressed") == "false", 30, "the microphone to stop")
    finally:
        b.driver.quit()


# Text whose contrast with its background is below 4.5:1: relative luminance and contrast ratio as WCAG 2.2
# defines them (https://www.w3.org/TR/WCAG22/#dfn-contrast-ratio); the background is the nearest opaque one.
CONTRAST_SCRIPT = """
function rgb(c) {
  const m = c.match(/[\\d.]+/g).map(Number);
  return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1};
}
function lum(c) { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); }
function background(el) {
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.a > 0.5) return c;
  }
  return {r: 255, g: 255, b: 255, a: 1};
}
const low = [];
for (const el of document.querySelectorAll('body *')) {
  if (!el.offsetParent || ![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
  const s = getComputedStyle(el);
  if (s.opacity !== '1') continue;
  const a = lum(rgb(s.color)), b = lum(background(el));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) low.push(`${el.tagName}#${el.id}.${el.className}: ${ratio.toFixed(2)}`);
}
return low;
"""


# --------------------------------------------------------------------------- API keys, loading, busy


def test_with_api_keys_the_page_asks_for_one_and_then_works(
    mic_browser: Browser, keyed_server: LiveServer, spoken: Spoken
) -> None:
    b = mic_browser
    ready_page(b, keyed_server)
    b.driver.execute_script("localStorage.clear()")
    b.driver.refresh()
    b.wait(lambda d: b.el("key-section").is_displayed(), what="the API key field")
    b.upload(spoken.wav)
    b.wait(lambda d: b.error(), what="the 401 message")
    assert b.error().startswith("API key needed: missing or invalid API key")
    b.shot("api-key")
    b.el("api-key").send_keys(KEY + Keys.ENTER)
    file_and_voice(b, spoken)  # the microphone's WebSocket carries the key as a subprotocol
    b.driver.execute_script("localStorage.clear()")


LOADING_THEN_SLOW = Serve({"FAKE_LOAD_DELAY_S": "3", "FAKE_DELAY_S": "3", "PARAKEET_MAX_QUEUE_REQUESTS": "1"},
                          ready=False)  # fmt: skip


@pytest.mark.parametrize("server", [LOADING_THEN_SLOW], indirect=True)
def test_the_header_shows_loading_then_ready_and_busy_with_retry_after(
    browser: Browser, server: ServerProcess, tmp_path: Path
) -> None:
    server.wait_ready(timeout_s=60, path="/health/live")  # the event loop answers; the model still loads
    browser.open(f"{server.url}/")
    browser.wait(lambda d: browser.el("server-state").get_attribute("data-state") == "loading", what="Loading")
    assert browser.state().startswith("Loading the model…")
    browser.shot("loading")
    browser.wait(lambda d: browser.el("server-state").get_attribute("data-state") == "ready", 60, "Ready")
    # Fill the queue (its one place, held for 3 s), then the page's upload gets 429 + Retry-After.
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_of(5))
    results: list[int] = []
    holder = threading.Thread(target=lambda: results.append(
        httpx.post(f"{server.url}/transcribe", files={"file": wav_of(3)}, timeout=60).status_code))  # fmt: skip
    holder.start()
    wait_until(lambda: httpx.get(f"{server.url}/health", timeout=10).json()["queued_requests"] == 1,
               what="the queue's place to be taken")  # fmt: skip
    browser.upload(clip)
    browser.wait(lambda d: browser.error(), what="the 429 message")
    assert browser.error().startswith("The server is busy: ")
    assert "Try again in" in browser.error()
    assert browser.el("server-state").get_attribute("data-state") == "busy"
    assert browser.state().startswith("Busy: retry in")
    browser.shot("busy")
    holder.join(60)
    assert results == [200]
    # A long transcription can be cancelled: the page drops it quietly (the server sees the disconnect).
    browser.upload(clip)
    browser.wait(lambda d: "Transcribing clip.wav" in browser.el("file-phase").text, what="the transcribing phase")
    browser.el("file-cancel").click()
    browser.wait(lambda d: not browser.el("file-progress").is_displayed(), what="the progress to go")
    assert browser.el("file-status").text == "Cancelled clip.wav."
    assert browser.error() == "" and not browser.el("file-result").is_displayed()
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def diarizing_server(digits_model_path: Path, tiny_sortformer_path: Path, silero_vad: Any) -> Iterator[LiveServer]:
    """The digits app with the random tiny Sortformer beside it (PARAKEET_DIARIZATION_MODEL)."""
    import torch

    from inference import build_diarizer, build_engine

    from helpers import cpu_settings

    engine = build_engine(cpu_settings(digits_model_path), torch.device("cpu"))
    diarizer = build_diarizer(str(tiny_sortformer_path), torch.device("cpu"))
    with live_digits_server(engine, silero_vad, digits_model_path, diarizer,
                            diarization_model=str(tiny_sortformer_path)) as s:  # fmt: skip
        yield s


def test_speakers_are_offered_when_the_server_diarizes_and_shown_in_colour(
    browser: Browser, diarizing_server: LiveServer, digits_server: LiveServer, tmp_path: Path
) -> None:
    """Without a diarization model there is no speakers option; with one, checking it labels each turn and colours
    each word by the speaker `/transcribe` gives it for the same file."""
    ready_page(browser, digits_server)
    assert not browser.el("speakers-option").is_displayed()
    wav = tmp_path / "conversation.wav"
    sf.write(wav, speech.conversation(5, 2, speech.HELD_OUT_VOICES, max_overlap_s=0.0).waveform, 16000,
             subtype="FLOAT")  # fmt: skip
    expected = httpx.post(f"{diarizing_server.url}/transcribe", files={"file": wav.read_bytes()},
                          data={"diarize": "true"}, timeout=60).json()  # fmt: skip
    ready_page(browser, diarizing_server)
    browser.wait(lambda d: browser.el("speakers-option").is_displayed(), what="the speakers option")
    browser.el("speakers-toggle").click()
    browser.upload(wav)
    browser.wait_file_done()
    assert browser.error() == ""
    words = browser.driver.find_elements(By.CSS_SELECTOR, "#file-transcript .word")
    assert [w.get_attribute("data-speaker") for w in words] == [w["speaker"] for w in expected["timestamps"]["word"]]
    labels = browser.driver.find_elements(By.CSS_SELECTOR, "#file-transcript .speaker")
    assert [x.text for x in labels] == [f"{t['speaker']}:" for t in expected["speakers"]["turns"]]
    colour = {w.get_attribute("data-speaker"): w.value_of_css_property("color") for w in words}
    assert len(set(colour.values())) == len(colour) >= 2, colour  # one colour per speaker
    browser.shot("speakers")


def test_jobs_are_listed_with_their_status_and_their_result_downloads(
    browser: Browser, digits_server: LiveServer, spoken: Spoken
) -> None:
    """A job submitted over the API shows on the page (the server has jobs on: /health says so), reaches
    "succeeded", and its TXT and SRT buttons download the job's result."""
    job = httpx.post(f"{digits_server.url}/v1/jobs", files={"file": spoken.wav.read_bytes()}, timeout=30).json()
    ready_page(browser, digits_server)
    browser.wait(lambda d: browser.el("jobs-section").is_displayed(), what="the jobs section")
    row = f'#jobs-rows tr[data-job="{job["id"]}"]'

    def succeeded(d: Any) -> bool:
        cells = d.find_elements(By.CSS_SELECTOR, f"{row} td[data-status=succeeded]")
        return bool(cells)

    browser.wait(succeeded, what="the job to show as succeeded")
    browser.driver.find_element(By.CSS_SELECTOR, f"{row} [data-format=text]").click()
    assert browser.downloaded(f"{job['id']}.txt") == spoken.text + "\n"
    browser.driver.find_element(By.CSS_SELECTOR, f"{row} [data-format=srt]").click()
    cues = list(srt.parse(browser.downloaded(f"{job['id']}.srt")))
    assert " ".join(c.content.replace("\n", " ") for c in cues) == spoken.text
    browser.shot("jobs")
