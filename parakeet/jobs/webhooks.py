"""Job webhooks (README "Jobs"): on succeeded/failed a POST of `{type, timestamp, data}`, signed per Standard
Webhooks (https://www.standardwebhooks.com/, the `standardwebhooks` package: `webhook-id`, `webhook-timestamp`,
`webhook-signature`) over PARAKEET_JOBS_WEBHOOK_SECRET, sent under the `audio_url` address rules without redirects,
retried on `Tuning.webhook_backoff_s` from any worker (a claim holds one attempt for a lease), every attempt
recorded on the job."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from parakeet.core import errors, metrics
from parakeet.jobs.store import Job, JobStore
from parakeet.pipeline.fetch import UrlPolicy, post_json

log = logging.getLogger("parakeet.jobs")


@dataclass(frozen=True)
class WebhookConfig:
    """signer: Standard Webhooks' `Webhook` over the secret (None: no webhooks); url_policy: the address rules
    (those of `audio_url`); backoff_s: the waits between attempts; lease_s: how long a claimed attempt is held;
    poll_s: how often an idle worker looks for due webhooks."""

    signer: Webhook | None
    url_policy: UrlPolicy | None
    backoff_s: tuple[float, ...]
    lease_s: float
    poll_s: float


def webhook_payload(job: Job, text: str | None) -> dict[str, Any]:
    """The body of a job's webhook (Standard Webhooks' `{type, timestamp, data}`): the job's id, status, metadata,
    times, error, the transcript's `text` when it succeeded, and where to fetch the full result."""
    return {
        "type": f"transcription_job.{job.status}",
        "timestamp": datetime.fromtimestamp(job.finished_at or time.time(), UTC).isoformat(),
        "data": {"id": job.id, "status": job.status, "metadata": job.metadata, "created_at": job.created_at,
                 "finished_at": job.finished_at, "duration_s": job.duration_s, "error": job.error,
                 "text": text, "result_url": f"/v1/jobs/{job.id}/result"},
    }  # fmt: skip


class WebhookSender:
    """Sends the webhooks that are due, one at a time, from this worker (`run` as a task until cancelled)."""

    def __init__(self, store: JobStore, config: WebhookConfig) -> None:
        self.store, self.config = store, config

    async def run(self) -> None:
        while True:
            try:
                job = await asyncio.to_thread(self.store.claim_webhook, now=time.time(), lease_s=self.config.lease_s)
                if job is None:
                    await asyncio.sleep(self.config.poll_s)
                    continue
                await self.deliver(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery failed")
                await asyncio.sleep(self.config.poll_s)

    async def deliver(self, job: Job) -> None:
        """One attempt at `job`'s webhook: signed, POSTed under the URL rules, recorded; then due again after the
        next backoff wait, or given up when the waits are spent."""
        text = None
        if job.status == "succeeded":
            text = (await asyncio.to_thread(self.store.result, job.id))["transcript"]["text"]
        body = json.dumps(webhook_payload(job, text)).encode()
        status, error = None, None
        c = self.config
        if c.signer is None or c.url_policy is None or job.webhook_url is None:
            error = "this server has no PARAKEET_JOBS_WEBHOOK_SECRET"
        else:
            msg_id, at = f"{job.id}.{job.status}", datetime.now(UTC)
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                       "webhook-signature": c.signer.sign(msg_id, at, body)}  # fmt: skip
            try:
                status = await post_json(job.webhook_url, c.url_policy, body, headers, "webhook_url")
            except errors.ParakeetError as exc:
                error = exc.message
        delivered = status is not None and 200 <= status < 300
        spent = delivered or job.webhook_attempts >= len(c.backoff_s)
        next_at = None if spent else time.time() + c.backoff_s[job.webhook_attempts]
        outcome = "delivered" if delivered else "retry" if next_at is not None else "gave_up"
        metrics.WEBHOOK_ATTEMPTS.labels(outcome=outcome).inc()
        why = error if error else None if delivered else f"HTTP {status}"
        await asyncio.to_thread(
            self.store.record_webhook_attempt, job.id, at=time.time(), status_code=status, error=why, next_at=next_at
        )
        log.info("job %s webhook attempt %d: %s", job.id, job.webhook_attempts + 1, outcome)
