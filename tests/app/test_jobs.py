"""Transcription jobs through the app (`/v1/jobs`, in-process, the digits model, SQLite under a temporary
PARAKEET_DATA_DIR): submit -> poll -> the result equals the synchronous APIs on the same audio in every format; an
Idempotency-Key gives the same job; a job left `running` by a worker that died (its lease expired) is finished by
the next start; and the bad-input answers: unknown id 404, result before success 409, bad fields 400."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from parakeet.jobs.databases import SqliteDatabase
from parakeet.jobs.store import JobStore
from tests.support import speech

from helpers import DIGITS_APP_TUNING, digits_app, wait_until


def wav_of(seed: int) -> tuple[bytes, str]:
    u = speech.random_utterance(seed, speech.HELD_OUT_VOICES)
    buf = io.BytesIO()
    sf.write(buf, u.waveform, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue(), u.text


def finished(client: Any, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_until(done, timeout_s=120, what=f"job {job_id} to end")
    return result


def test_a_job_gives_what_the_synchronous_apis_give_in_every_format(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    wav, said = wav_of(4242)
    with digits_app(digits_engine, silero_vad, digits_model_path, data_dir=tmp_path) as client:
        r = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, data={"timestamps": "true",
                                                                       "metadata": '{"episode": 7}'})  # fmt: skip
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["metadata"] == {"episode": 7}
        done = finished(client, job["id"])
        assert done["status"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
        assert abs(done["duration_s"] - len(sf.read(io.BytesIO(wav))[0]) / 16000) < 0.01
        body = client.get(f"/v1/jobs/{job['id']}/result").json()
        sync = client.post("/transcribe", files={"file": ("a.wav", wav)}, data={"timestamps": "true"}).json()
        assert body["text"] == sync["text"] == said
        assert body["timestamps"] == sync["timestamps"]
        for fmt in ("text", "srt", "vtt", "verbose_json"):
            ours = client.get(f"/v1/jobs/{job['id']}/result", params={"format": fmt})
            assert ours.status_code == 200, ours.text
            data = {"model": "whisper-1", "response_format": fmt}
            if fmt == "verbose_json":
                data["timestamp_granularities[]"] = ["word", "segment"]  # type: ignore[assignment]
            openai = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=data)
            assert openai.status_code == 200, openai.text
            if fmt == "verbose_json":
                assert json.loads(ours.text) == openai.json()
            else:
                assert ours.text == openai.text, fmt
        assert ours.headers["content-type"].startswith("application/json")
        listed = client.get("/v1/jobs", params={"status": "succeeded"}).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]


def test_idempotency_key_and_the_bad_input_answers(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    wav, _ = wav_of(4343)
    with digits_app(digits_engine, silero_vad, digits_model_path, data_dir=tmp_path) as client:
        first = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, headers={"Idempotency-Key": "order-17"})
        again = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, headers={"Idempotency-Key": "order-17"})
        assert first.status_code == 202 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert len(list((tmp_path / "audio").glob("*.audio"))) == 1  # the retry stored nothing
        missing = client.get("/v1/jobs/job_nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
        assert client.get("/v1/jobs/job_nope/result").status_code == 404
        assert client.delete("/v1/jobs/job_nope").status_code == 404
        cases = [
            ({"metadata": "[1]"}, "metadata"),
            ({"metadata": "{"}, "metadata"),
            ({"webhook_url": "http://127.0.0.1:9/"}, "webhook_url"),
            ({"diarize": "true"}, "diarize"),
        ]
        for data, param in cases:
            bad = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, data=data)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
        big = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, data={"metadata": json.dumps({"x": "y" * 5000})})
        assert big.status_code == 400 and "over the limit of 4096" in big.json()["error"]["message"]
        assert client.get("/v1/jobs", params={"status": "done"}).status_code == 400
        assert client.get("/v1/jobs", params={"limit": 0}).status_code == 400
        done = finished(client, first.json()["id"])
        assert client.get(f"/v1/jobs/{done['id']}/result", params={"format": "docx"}).status_code == 400
        no_speakers = client.get(f"/v1/jobs/{done['id']}/result", params={"format": "diarized_json"})
        assert no_speakers.status_code == 400
        ended = client.delete(f"/v1/jobs/{done['id']}")
        assert ended.status_code == 409 and ended.json()["error"]["code"] == "job_not_finished"
        # a job that cannot succeed: its audio is not audio
        broken = client.post("/v1/jobs", files={"file": ("a.wav", b"not audio at all" * 10)})
        failed = finished(client, broken.json()["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "unsupported_audio"
        early = client.get(f"/v1/jobs/{failed['id']}/result")
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"


def test_a_job_left_running_by_a_dead_worker_is_finished_by_the_next_start(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    """A worker claimed the job and died (SIGKILL: no hand-back); once its lease has expired, the next server on
    the same data directory claims it again and finishes it (attempts 2)."""
    wav, said = wav_of(4444)
    (tmp_path / "audio").mkdir(parents=True)
    (tmp_path / "audio" / "job_dead.audio").write_bytes(wav)
    store = JobStore(SqliteDatabase(tmp_path / "jobs.sqlite3"))
    store.submit("job_dead", options={"timestamps": False}, metadata=None, idempotency_key=None,
                 audio_path=str(tmp_path / "audio" / "job_dead.audio"), audio_bytes=len(wav), now=time.time(),
                 max_queued=10, max_stored_bytes=10**9)  # fmt: skip
    claimed = store.claim("dead-worker", now=time.time(), lease_s=-1.0)  # its lease already over
    assert claimed is not None and claimed.status == "running"
    store.close()
    with digits_app(digits_engine, silero_vad, digits_model_path, data_dir=tmp_path) as client:
        done = finished(client, "job_dead")
        assert done["status"] == "succeeded" and done["attempts"] == 2
        assert client.get("/v1/jobs/job_dead/result", params={"format": "text"}).text == said + "\n"


class Receiver:
    """A webhook receiver on 127.0.0.1 (http.server in a thread) that answers 500 to its first `failures` posts,
    then 204; records every request's headers and body."""

    def __init__(self, failures: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.failures, self.calls = failures, []  # type: ignore[var-annotated]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.calls.append((dict(self.headers), body))
                self.send_response(500 if len(outer.calls) <= outer.failures else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two byte").decode()


def test_a_signed_webhook_is_retried_until_the_receiver_takes_it(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    """The receiver fails twice and takes the third attempt; each attempt is recorded on the job; the signature
    verifies with standardwebhooks' own `Webhook.verify`, and the body names the job, its metadata and text."""
    from standardwebhooks.webhooks import Webhook

    wav, said = wav_of(4545)
    receiver = Receiver(failures=2)
    tuning = replace(DIGITS_APP_TUNING, webhook_backoff_s=(0.1, 0.1, 0.1))
    try:
        with digits_app(digits_engine, silero_vad, digits_model_path, tuning, data_dir=tmp_path,
                        jobs_webhook_secret=SECRET, url_allowed_networks="127.0.0.0/8") as client:  # fmt: skip
            r = client.post("/v1/jobs", files={"file": ("a.wav", wav)},
                            data={"webhook_url": receiver.url, "metadata": '{"order": 5}'})  # fmt: skip
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            def delivered() -> dict[str, Any] | None:
                view = client.get(f"/v1/jobs/{job_id}").json()
                return view if view.get("webhook", {}).get("state") == "delivered" else None

            view = wait_until(delivered, timeout_s=120, what="the webhook to be delivered")
    finally:
        receiver.close()
    attempts = view["webhook"]["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 500, 204] and [a["attempt"] for a in attempts] == [1, 2, 3]
    assert attempts[0]["error"] == "HTTP 500" and attempts[2]["error"] is None
    assert len(receiver.calls) == 3
    headers, body = receiver.calls[-1]
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "transcription_job.succeeded"
    assert payload["data"]["id"] == job_id and payload["data"]["metadata"] == {"order": 5}
    assert payload["data"]["text"] == said
    assert {h["webhook-id"] for h, _ in receiver.calls} == {f"{job_id}.succeeded"}  # one message, retried
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"another secret, thirty-two bytes").decode()).verify(body, headers)


def test_webhook_urls_follow_the_url_rules_and_need_a_secret(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    """Without PARAKEET_JOBS_WEBHOOK_SECRET a webhook_url is a 400 naming it; with one, a non-http URL is refused at
    submit, and a loopback receiver (not on PARAKEET_URL_ALLOWED_NETWORKS) is refused at each attempt, which the
    job records until it gives up."""
    wav, _ = wav_of(4646)
    with digits_app(digits_engine, silero_vad, digits_model_path, data_dir=tmp_path / "a") as client:
        r = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, data={"webhook_url": "https://example.com/h"})
        assert r.status_code == 400 and "PARAKEET_JOBS_WEBHOOK_SECRET" in r.json()["error"]["message"]
    tuning = replace(DIGITS_APP_TUNING, webhook_backoff_s=(0.05,))
    with digits_app(digits_engine, silero_vad, digits_model_path, tuning, data_dir=tmp_path / "b",
                    jobs_webhook_secret=SECRET) as client:  # fmt: skip
        bad = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, data={"webhook_url": "ftp://example.com/h"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "url_refused"
        assert bad.json()["error"]["param"] == "webhook_url"
        r = client.post("/v1/jobs", files={"file": ("a.wav", wav)}, data={"webhook_url": "http://127.0.0.1:9/h"})
        job_id = r.json()["id"]

        def gave_up() -> dict[str, Any] | None:
            view = client.get(f"/v1/jobs/{job_id}").json()
            return view if view.get("webhook", {}).get("state") == "failed" else None

        view = wait_until(gave_up, timeout_s=120, what="the webhook to be given up")
    attempts = view["webhook"]["attempts"]
    assert len(attempts) == 2 and all(a["status_code"] is None for a in attempts)
    assert "resolves to 127.0.0.1, inside a private, loopback" in attempts[0]["error"]


def test_a_long_job_goes_chunk_by_chunk_with_its_progress_and_equals_the_synchronous_transcript(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    """Past the long-audio threshold the job runs in chunks (as POST /transcribe does); its progress counts them
    and the audio they covered, and the result is the synchronous transcript."""
    import numpy as np

    waves = [speech.random_utterance(4700 + i, speech.HELD_OUT_VOICES) for i in range(6)]
    pause = np.zeros(8000, np.float32)
    audio = np.concatenate([x for u in waves for x in (u.waveform, pause)])
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    wav = buf.getvalue()
    tuning = replace(DIGITS_APP_TUNING, long_audio_chunk_s=6.0, long_audio_search_s=2.0)
    with digits_app(digits_engine, silero_vad, digits_model_path, tuning, data_dir=tmp_path,
                    long_audio_threshold_s=10.0) as client:  # fmt: skip
        job = client.post("/v1/jobs", files={"file": ("long.wav", wav)}).json()
        done = finished(client, job["id"])
        sync = client.post("/transcribe", files={"file": ("long.wav", wav)}).json()
        result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert done["status"] == "succeeded" and result["text"] == sync["text"]
    assert sync["chunks"] >= 3 and done["progress"]["chunks_done"] == sync["chunks"] == result["chunks"]
    assert 0 < done["progress"]["audio_s_done"] <= done["duration_s"]


def test_an_ended_job_and_its_audio_are_removed_after_the_retention(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    wav, _ = wav_of(4848)
    with digits_app(digits_engine, silero_vad, digits_model_path, data_dir=tmp_path, jobs_retention_s=1.0) as client:
        job_id = client.post("/v1/jobs", files={"file": ("a.wav", wav)}).json()["id"]
        assert len(list((tmp_path / "audio").glob("*.audio"))) == 1
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").status_code == 404, timeout_s=60, what="the removal")
        assert list((tmp_path / "audio").glob("*.audio")) == []


def test_the_job_limits_are_a_429_and_a_507_naming_them(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    wav, _ = wav_of(4949)
    full = replace(DIGITS_APP_TUNING, jobs_max_queued=0)
    with digits_app(digits_engine, silero_vad, digits_model_path, full, data_dir=tmp_path / "a") as client:
        r = client.post("/v1/jobs", files={"file": ("a.wav", wav)})
        assert r.status_code == 429 and r.json()["error"]["code"] == "jobs_full" and "Retry-After" in r.headers
        assert "0 jobs are queued, the limit is 0" in r.json()["error"]["message"]
    small = replace(DIGITS_APP_TUNING, jobs_max_stored_bytes=1000)
    with digits_app(digits_engine, silero_vad, digits_model_path, small, data_dir=tmp_path / "b") as client:
        r = client.post("/v1/jobs", files={"file": ("a.wav", wav)})
        assert r.status_code == 507 and r.json()["error"]["code"] == "job_storage_full"
        assert f"this file ({len(wav)} bytes) would pass the limit of 1000 bytes" in r.json()["error"]["message"]
        assert list((tmp_path / "b" / "audio").glob("*")) == []  # a refused job leaves no audio behind


def test_with_jobs_off_there_are_no_job_routes(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path, tmp_path: Path
) -> None:
    with digits_app(digits_engine, silero_vad, digits_model_path, data_dir=tmp_path, jobs=False) as client:
        assert client.get("/health").json()["jobs"] is False
        r = client.post("/v1/jobs", files={"file": ("a.wav", wav_of(5050)[0])})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert client.get("/v1/jobs").status_code == 404
    assert not (tmp_path / "jobs.sqlite3").exists()  # no database opened either
