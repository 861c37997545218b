"""Durable transcription jobs (README "Jobs"): their rows and audio (`store`, over the two `databases`), the runner
that transcribes them on a worker below live requests through the pipeline's one request lifecycle (`runner`), and
their signed webhooks (`webhooks`). A layer of its own: above the pipeline, below the API."""
