// Parakeet browser page: transcribe a file (POST transcribe, downloads through the API's own formats) or the
// microphone (WebSocket v1/realtime, OpenAI Realtime transcription events). Plain script, no build step; every
// URL is relative to the page, so it works behind a reverse proxy with a path prefix. README "Browser page".
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "parakeet.apiKey";
  const MIC_RATE_HZ = 24000; // OpenAI Realtime audio/pcm rate (the server also takes 16000)
  const MODEL_ALIAS = "whisper-1"; // accepted by /v1/audio/transcriptions for the served model
  const HEALTH_POLL_MS = 5000;
  const JOBS_POLL_MS = 3000;
  const STOP_WAIT_MS = 15000; // after Stop: wait this long at most for the last item's final text

  const page = {
    file: null, // the File being shown
    fileUrl: null, // its object URL (audio player)
    result: null, // the POST transcribe response for it
    downloads: new Map(), // format -> Blob, fetched once per file
    words: [], // {start, el} in time order, for the player highlight
    xhr: null, // the transcription request in flight (Cancel aborts it)
    busyUntil: 0, // Date.now() until which the header shows "busy" (a 429's Retry-After)
    diarization: false, // the server has a diarization model (GET health: diarization_model)
    jobs: false, // the server takes jobs (GET health: jobs): the jobs list is shown and polled
    mic: null,
  };

  // ---------------------------------------------------------------------------------------------- helpers

  function apiKey() {
    try { return localStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function showKeyBox(reason) {
    $("key-section").hidden = false;
    if (reason) $("api-key").focus();
  }

  function seconds(value) {
    if (!Number.isFinite(value)) return "–";
    if (value < 60) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
    const m = Math.floor(value / 60), s = Math.round(value - 60 * m);
    if (m < 60) return `${m} min ${String(s).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  function bytes(n) {
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function parseBody(text) {
    try { return JSON.parse(text); } catch { return text; }
  }

  // One sentence for any error the API answers: the server's own message (it names the limit and the value),
  // prefixed by what it means for the user, and when to retry. The error shape: {"error": {"message", "code"}}.
  function explain(status, body, retryAfter) {
    const err = body && typeof body === "object" ? body.error || {} : {};
    let message = err.message || (typeof body === "string" && body.trim()) || `HTTP ${status}`;
    const retry = retryAfter ? ` Try again in ${retryAfter} s.` : "";
    if ((retry || status === 401) && !/[.!?]$/.test(message)) message += "."; // a sentence follows
    switch (status) {
      case 401:
        showKeyBox(true);
        return `API key needed: ${message} Enter the server's key below.`;
      case 408: return `The upload was too slow: ${message}`;
      case 413: return `Too large or too long: ${message}`;
      case 415: return `Unsupported format: ${message}`;
      case 400: case 422: return `The server could not use this input: ${message}`;
      case 429:
        page.busyUntil = Date.now() + 1000 * (Number(retryAfter) || 5);
        renderBusy();
        return `The server is busy: ${message}${retry}`;
      case 503: return `The server is not ready: ${message}${retry}`;
      case 507: return `The server is out of disk space: ${message}`;
      default: return `Error ${status}${err.code ? ` (${err.code})` : ""}: ${message}${retry}`;
    }
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function baseName(file) {
    return (file.name || "audio").replace(/\.[^.]+$/, "") || "audio";
  }

  // ---------------------------------------------------------------------------------------- server state

  function setState(kind, text) {
    const el = $("server-state");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function renderBusy() {
    const left = Math.ceil((page.busyUntil - Date.now()) / 1000);
    if (left > 0) setState("busy", `Busy: retry in ${left} s`);
  }

  async function pollHealth() {
    let delay = HEALTH_POLL_MS;
    if (!document.hidden) {
      try {
        const r = await fetch("health", { cache: "no-store" });
        const h = await r.json();
        page.diarization = Boolean(h.diarization_model);
        $("speakers-option").hidden = !page.diarization;
        if (h.jobs && !page.jobs) {
          page.jobs = true;
          $("jobs-section").hidden = false;
          pollJobs();
        }
        const device = h.device && h.device.name ? h.device.name : (h.gpu_id === null ? "CPU" : `GPU ${h.gpu_id}`);
        if (page.busyUntil > Date.now()) {
          renderBusy();
          delay = 1000;
        } else if (r.ok) {
          const queued = h.queued_requests || 0;
          if (queued > 0) setState("busy", `Ready · ${queued} queued · ${device}`);
          else setState("ready", `Ready · ${device}`);
        } else {
          const retry = Number(r.headers.get("Retry-After")) || 10;
          const what = { loading: "Loading the model…", shutting_down: "Shutting down", failed: "Failed" }[h.status];
          setState(h.status === "loading" ? "loading" : "down",
                   `${what || h.status}${h.detail ? `: ${h.detail}` : ""} (checking again in ${retry} s)`);
          delay = Math.min(Math.max(retry, 2), 10) * 1000;
        }
      } catch {
        setState("down", "Server unreachable");
      }
    }
    setTimeout(pollHealth, delay);
  }

  // Is an API key needed (and is the stored one good)? GET v1/models needs one when keys are on.
  async function checkKey() {
    try {
      const r = await fetch("v1/models", { headers: authHeaders(), cache: "no-store" });
      if (r.status === 401) {
        showKeyBox(false);
        return false;
      }
    } catch { /* the health poll reports an unreachable server */ }
    return true;
  }

  // ------------------------------------------------------------------------------------------------ jobs

  // The 10 newest jobs (GET v1/jobs), refreshed every few seconds while the page is visible.
  async function pollJobs() {
    if (!document.hidden) {
      try {
        const r = await fetch("v1/jobs?limit=10", { headers: authHeaders(), cache: "no-store" });
        if (r.ok) renderJobs((await r.json()).data);
      } catch { /* the health poll reports an unreachable server */ }
    }
    setTimeout(pollJobs, JOBS_POLL_MS);
  }

  function renderJobs(jobs) {
    $("jobs-empty").hidden = jobs.length > 0;
    $("jobs-rows").replaceChildren(...jobs.map((job) => {
      const row = document.createElement("tr");
      row.dataset.job = job.id;
      const cell = (text) => {
        const td = document.createElement("td");
        td.textContent = text;
        row.append(td);
        return td;
      };
      cell(job.id.slice(0, 12)).title = job.id;
      const status = cell(job.status);
      status.dataset.status = job.status;
      if (job.error) status.title = job.error.message;
      const progress = cell("");
      if (job.status === "running" && job.duration_s) {
        const bar = document.createElement("progress");
        bar.max = job.duration_s;
        bar.value = job.progress.audio_s_done;
        progress.append(bar);
      }
      progress.append(` ${job.progress.chunks_done} chunk${job.progress.chunks_done === 1 ? "" : "s"}`);
      cell(new Date(job.created_at * 1000).toLocaleTimeString());
      const result = cell("");
      if (job.status === "succeeded") {
        for (const format of ["text", "srt", "vtt"]) {
          const b = document.createElement("button");
          b.type = "button";
          b.textContent = format.toUpperCase();
          b.dataset.format = format;
          b.addEventListener("click", () => downloadJob(job.id, format));
          result.append(b, " ");
        }
      }
      return row;
    }));
  }

  async function downloadJob(id, format) {
    showError("");
    try {
      const r = await fetch(`v1/jobs/${encodeURIComponent(id)}/result?format=${format}`, { headers: authHeaders() });
      if (!r.ok) return showError(explain(r.status, parseBody(await r.text()), r.headers.get("Retry-After")));
      saveBlob(new Blob([await r.text()], { type: "text/plain" }), `${id}.${format === "text" ? "txt" : format}`);
    } catch {
      showError("The download failed: the server could not be reached.");
    }
  }

  // ------------------------------------------------------------------------------------------------ file

  function setFileBusy(busy) {
    $("file-input").disabled = busy;
    $("drop-zone").setAttribute("aria-busy", String(busy));
  }

  function transcribeFile(file) {
    showError("");
    page.file = file;
    page.result = null;
    page.downloads.clear();
    if (page.fileUrl) URL.revokeObjectURL(page.fileUrl);
    page.fileUrl = URL.createObjectURL(file);
    $("file-result").hidden = true;
    const bar = $("upload-progress");
    bar.value = 0;
    $("file-phase").textContent = `Uploading ${file.name} (${bytes(file.size)})…`;
    $("file-progress").hidden = false;
    setFileBusy(true);

    const form = new FormData();
    form.append("file", file, file.name || "audio");
    form.append("timestamps", "true");
    if (wantSpeakers()) form.append("diarize", "true");
    const xhr = new XMLHttpRequest(); // fetch() reports no upload progress
    page.xhr = xhr;
    let timer = null;
    const done = () => {
      clearInterval(timer);
      page.xhr = null;
      $("file-progress").hidden = true;
      setFileBusy(false);
    };
    xhr.open("POST", "transcribe");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
    };
    xhr.upload.onload = () => {
      bar.removeAttribute("value"); // indeterminate while the server works: it reports no progress
      const started = Date.now();
      const audio = Number.isFinite($("player").duration) ? ` (${seconds($("player").duration)} of audio)` : "";
      const tick = () => {
        const elapsed = Math.round((Date.now() - started) / 1000);
        $("file-phase").textContent = `Transcribing ${file.name}${audio}… ${elapsed} s`;
      };
      tick();
      timer = setInterval(tick, 1000);
    };
    xhr.onload = () => {
      done();
      const body = parseBody(xhr.responseText);
      if (xhr.status === 200 && body && typeof body === "object") showResult(body);
      else showError(explain(xhr.status, body, xhr.getResponseHeader("Retry-After")));
    };
    xhr.onerror = () => {
      done();
      showError("The upload failed: the server could not be reached or closed the connection.");
    };
    xhr.onabort = () => {
      done(); // the server notices the closed connection and drops the request's work
      $("file-status").textContent = `Cancelled ${file.name}.`;
    };
    $("file-status").textContent = "";
    $("player").src = page.fileUrl; // its metadata gives the duration shown while transcribing
    xhr.send(form);
  }

  function wantSpeakers() {
    return page.diarization && $("speakers-toggle").checked;
  }

  function showResult(result) {
    page.result = result;
    $("file-name").textContent = `${page.file.name || "audio"} · ${bytes(page.file.size)}`;
    const processingS = result.processing_time_ms / 1000;
    $("stat-duration").textContent = seconds(result.duration_sec);
    $("stat-processing").textContent = seconds(processingS);
    $("stat-processing").title = `decode ${result.decode_ms} ms · queue ${result.queue_ms} ms · compute ${result.compute_ms} ms`;
    $("stat-rtfx").textContent = processingS > 0 ? `${Math.round(result.duration_sec / processingS)}× real time` : "–";

    const box = $("file-transcript");
    box.replaceChildren();
    page.words = [];
    const words = (result.timestamps && result.timestamps.word) || [];
    if (!result.text) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = "No speech was found in this file.";
      box.append(p);
    } else if (words.length === 0) {
      box.textContent = result.text;
    }
    let speaker = null;
    for (const w of words) {
      if (w.speaker && w.speaker !== speaker) { // a new turn: its speaker's label, then the words in its colour
        speaker = w.speaker;
        const label = document.createElement("span");
        label.className = "speaker";
        label.dataset.speaker = speaker;
        label.textContent = `${speaker}:`;
        if (box.childElementCount) box.append(document.createElement("br"));
        box.append(label, " ");
      }
      const b = document.createElement("button");
      b.type = "button";
      b.className = "word";
      if (w.speaker) b.dataset.speaker = w.speaker;
      b.textContent = w.word;
      b.dataset.start = String(w.start);
      b.title = `${seconds(w.start)} – ${seconds(w.end)}`;
      box.append(b, " ");
      page.words.push({ start: w.start, end: w.end, el: b });
    }
    $("file-result").hidden = false;
  }

  function seekTo(start) {
    const player = $("player");
    player.currentTime = start;
    player.play().catch(() => { /* autoplay refused: the position is set */ });
  }

  let currentWord = null;
  function highlight() {
    const t = $("player").currentTime;
    let lo = 0, hi = page.words.length - 1, found = null;
    while (lo <= hi) { // last word that starts at or before t
      const mid = (lo + hi) >> 1;
      if (page.words[mid].start <= t) { found = page.words[mid]; lo = mid + 1; } else hi = mid - 1;
    }
    const el = found && t <= found.end + 0.3 ? found.el : null;
    if (el === currentWord) return;
    if (currentWord) currentWord.classList.remove("current");
    if (el) el.classList.add("current");
    currentWord = el;
  }

  async function download(format, button) {
    if (!page.result || !page.file) return;
    showError("");
    const name = `${baseName(page.file)}.${format}`;
    if (format === "txt") return saveBlob(new Blob([`${page.result.text}\n`], { type: "text/plain" }), name);
    if (format === "json") {
      return saveBlob(new Blob([JSON.stringify(page.result, null, 2)], { type: "application/json" }), name);
    }
    // SRT and VTT come from the OpenAI route's own formatter (cue lengths, line breaks): the file is sent again.
    let blob = page.downloads.get(format);
    if (!blob) {
      const label = button.textContent;
      button.disabled = true;
      button.textContent = `Preparing ${format.toUpperCase()}…`;
      try {
        const form = new FormData();
        form.append("file", page.file, page.file.name || "audio");
        form.append("model", MODEL_ALIAS);
        form.append("response_format", format);
        if (page.result.speakers) form.append("diarize", "true"); // the same speakers as on the page
        const r = await fetch("v1/audio/transcriptions", { method: "POST", body: form, headers: authHeaders() });
        if (!r.ok) {
          showError(explain(r.status, parseBody(await r.text()), r.headers.get("Retry-After")));
          return;
        }
        blob = new Blob([await r.text()], { type: format === "srt" ? "application/x-subrip" : "text/vtt" });
        page.downloads.set(format, blob);
      } catch {
        showError("The download failed: the server could not be reached.");
        return;
      } finally {
        button.disabled = false;
        button.textContent = label;
      }
    }
    saveBlob(blob, name);
  }

  async function copyText(button) {
    if (!page.result) return;
    try {
      await navigator.clipboard.writeText(page.result.text);
      button.textContent = "Copied";
    } catch {
      const range = document.createRange(); // no clipboard access (plain http): select the text instead
      range.selectNodeContents($("file-transcript"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy text"; }, 2000);
  }

  // ------------------------------------------------------------------------------------------ microphone

  function wsUrl(path) {
    const u = new URL(path, location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.href;
  }

  function base64(buffer) {
    const b = new Uint8Array(buffer);
    let s = "";
    for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function setMicUi(running, text) {
    const btn = $("mic-toggle");
    btn.setAttribute("aria-pressed", String(running));
    btn.textContent = running ? "Stop microphone" : "Start microphone";
    if (text) $("mic-state").textContent = text;
  }

  function itemSpan(mic, itemId) {
    let span = mic.items.get(itemId);
    if (!span) {
      span = document.createElement("span");
      span.className = "partial";
      span.dataset.item = itemId;
      $("mic-transcript").append(span, " ");
      mic.items.set(itemId, span);
    }
    return span;
  }

  function scrollLive() {
    const box = $("mic-transcript");
    box.scrollTop = box.scrollHeight;
  }

  function onMicEvent(mic, event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        if (!mic.stopping) $("mic-state").textContent = "Listening: speech…";
        break;
      case "input_audio_buffer.speech_stopped":
        if (!mic.stopping) $("mic-state").textContent = "Listening: pause";
        break;
      case "input_audio_buffer.committed":
        mic.pending.add(event.item_id);
        if (mic.commitSent) mic.commitDone = true; // the answer to Stop's commit (audio ended before it)
        break;
      case "conversation.item.input_audio_transcription.delta": {
        const span = itemSpan(mic, event.item_id);
        span.dataset.text = (span.dataset.text || "") + event.delta;
        span.textContent = span.dataset.text;
        scrollLive();
        break;
      }
      case "conversation.item.input_audio_transcription.completed": {
        const span = itemSpan(mic, event.item_id);
        span.className = "final";
        span.textContent = event.transcript;
        if (!event.transcript) { span.nextSibling && span.nextSibling.remove(); span.remove(); }
        mic.pending.delete(event.item_id);
        scrollLive();
        break;
      }
      case "conversation.item.input_audio_transcription.failed":
        mic.pending.delete(event.item_id);
        showError(`A sentence could not be transcribed: ${event.error && event.error.message}`);
        break;
      case "error":
        if (mic.stopping && event.error && event.error.code === "input_audio_buffer_commit_empty") {
          mic.commitEmpty = true; // nothing left to commit at Stop
        } else {
          showError(`Live transcription: ${event.error ? event.error.message : "error"}`);
        }
        break;
      default:
        break;
    }
    if (mic.stopping && (mic.commitSent && mic.pending.size === 0 && (mic.commitEmpty || mic.commitDone))) {
      finishMic(mic);
    }
  }

  function closeMessage(code, reason) {
    switch (code) {
      case 1001: case 1012: return "The server is restarting; start the microphone again in a moment.";
      case 1013: return `The server cannot take another live stream now${reason ? ` (${reason})` : ""}. Try again shortly.`;
      case 1008: return `The server closed the live stream${reason ? `: ${reason}` : ""}.`;
      case 1009: return "A message was too large for the server.";
      default: return `The live connection closed (code ${code}${reason ? `: ${reason}` : ""}).`;
    }
  }

  function stopAudio(mic) {
    if (mic.stream) for (const t of mic.stream.getTracks()) t.stop();
    if (mic.ctx && mic.ctx.state !== "closed") mic.ctx.close().catch(() => {});
    $("mic-level").value = 0;
  }

  function finishMic(mic) {
    if (mic.finished) return;
    mic.finished = true;
    clearTimeout(mic.stopTimer);
    stopAudio(mic);
    if (mic.ws && mic.ws.readyState <= WebSocket.OPEN) mic.ws.close(1000, "done");
    for (const span of mic.items.values()) if (span.className === "partial") span.className = "partial stale";
    if (page.mic === mic) page.mic = null;
    setMicUi(false, "Off.");
  }

  function openSocket(mic) {
    return new Promise((resolve, reject) => {
      const protocols = ["realtime"];
      if (apiKey()) protocols.push(`openai-insecure-api-key.${apiKey()}`); // browsers cannot send headers
      const ws = new WebSocket(wsUrl("v1/realtime?intent=transcription"), protocols);
      mic.ws = ws;
      ws.onopen = () => {
        mic.opened = true;
        ws.send(JSON.stringify({
          type: "session.update",
          session: {
            type: "transcription",
            audio: { input: { format: { type: "audio/pcm", rate: MIC_RATE_HZ },
                              turn_detection: { type: "server_vad", silence_duration_ms: 500 } } },
          },
        }));
        resolve(ws);
      };
      ws.onmessage = (e) => {
        let event;
        try { event = JSON.parse(e.data); } catch { return; }
        onMicEvent(mic, event);
      };
      ws.onclose = async (e) => {
        if (!mic.opened && mic.stopping) return reject(new Error("stopped")); // Stop pressed while connecting
        if (!mic.opened) {
          const keyOk = await checkKey();
          reject(new Error(keyOk ? `The server refused the live connection (code ${e.code}). Is it running?`
                                 : "API key needed for the microphone: enter the server's key below."));
          return;
        }
        if (!mic.stopping && !mic.finished) showError(closeMessage(e.code, e.reason));
        finishMic(mic);
      };
    });
  }

  async function startMic() {
    showError("");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
      showError("This browser gives this page no microphone: open it over https:// or on localhost " +
                "(browsers allow the microphone only in a secure context).");
      return;
    }
    const mic = { items: new Map(), pending: new Set(), stopping: false, finished: false, opened: false };
    page.mic = mic;
    setMicUi(true, "Asking for the microphone…");
    try {
      mic.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    } catch (e) {
      page.mic = null;
      setMicUi(false, "Off.");
      showError(e && e.name === "NotAllowedError"
        ? "Microphone access was refused: allow it in the browser's address bar and try again."
        : `No microphone could be opened (${e && e.name}: ${e && e.message}).`);
      return;
    }
    if (mic.stopping) { // Stop pressed while the browser asked for the microphone
      for (const t of mic.stream.getTracks()) t.stop();
      return;
    }
    try {
      $("mic-state").textContent = "Connecting…";
      await openSocket(mic);
      if (mic.stopping) return; // Stop pressed while connecting: stopMic finishes
      try {
        mic.ctx = new AudioContext({ sampleRate: MIC_RATE_HZ });
        mic.source = mic.ctx.createMediaStreamSource(mic.stream);
      } catch {
        if (mic.ctx) mic.ctx.close().catch(() => {});
        mic.ctx = new AudioContext(); // the device's rate; the worklet resamples
        mic.source = mic.ctx.createMediaStreamSource(mic.stream);
      }
      await mic.ctx.audioWorklet.addModule("ui/pcm-worklet.js");
      mic.node = new AudioWorkletNode(mic.ctx, "pcm-capture",
                                      { processorOptions: { targetRate: MIC_RATE_HZ, chunkMs: 100 } });
      mic.node.port.onmessage = ({ data }) => {
        const dbfs = 20 * Math.log10(Math.max(data.rms, 1e-5)); // meter: -60 dBFS .. 0 dBFS
        $("mic-level").value = Math.min(1, Math.max(0, (dbfs + 60) / 60));
        if (mic.ws.readyState === WebSocket.OPEN && !mic.audioDone) {
          mic.ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(data.pcm) }));
        }
      };
      const mute = mic.ctx.createGain(); // keeps the graph pulling the worklet, silently
      mute.gain.value = 0;
      mic.source.connect(mic.node).connect(mute).connect(mic.ctx.destination);
      if (!mic.stopping) $("mic-state").textContent = "Listening…";
    } catch (e) {
      stopAudio(mic);
      if (mic.ws && mic.ws.readyState <= WebSocket.OPEN) mic.ws.close(1000);
      if (page.mic === mic) page.mic = null;
      setMicUi(false, "Off.");
      if (!mic.stopping) showError(e && e.message ? e.message : String(e));
    }
  }

  // Stop: no more audio; commit what is left and wait for its final text, then close.
  function stopMic() {
    const mic = page.mic;
    if (!mic || mic.stopping) return;
    mic.stopping = true;
    $("mic-toggle").disabled = true;
    $("mic-state").textContent = "Finishing the last sentence…";
    if (mic.node) mic.node.port.postMessage("flush");
    setTimeout(() => { // let the worklet's last chunk arrive first
      mic.audioDone = true;
      stopAudio(mic);
      $("mic-toggle").disabled = false;
      if (!mic.ws || mic.ws.readyState !== WebSocket.OPEN) return finishMic(mic);
      mic.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
      mic.commitSent = true;
      mic.stopTimer = setTimeout(() => finishMic(mic), STOP_WAIT_MS);
    }, 150);
  }

  // ------------------------------------------------------------------------------------------------ wiring

  function wire() {
    const input = $("file-input");
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) transcribeFile(input.files[0]);
      input.value = ""; // the same file again is a new pick
    });
    const zone = $("drop-zone");
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
    }
    for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file && !input.disabled) transcribeFile(file);
    });
    // A file dropped outside the zone must not replace the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());

    $("file-transcript").addEventListener("click", (e) => {
      const word = e.target.closest(".word");
      if (word) seekTo(Number(word.dataset.start));
    });
    $("player").addEventListener("timeupdate", highlight);
    for (const b of document.querySelectorAll(".downloads [data-format]")) {
      b.addEventListener("click", () => download(b.dataset.format, b));
    }
    $("copy-text").addEventListener("click", (e) => copyText(e.currentTarget));
    $("file-cancel").addEventListener("click", () => page.xhr && page.xhr.abort());

    $("mic-toggle").addEventListener("click", () => (page.mic ? stopMic() : startMic()));
    $("mic-clear").addEventListener("click", () => {
      const box = $("mic-transcript");
      box.replaceChildren();
      if (page.mic) page.mic.items.clear();
    });

    $("api-key").value = apiKey();
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      try { localStorage.setItem(KEY_STORAGE, $("api-key").value.trim()); } catch { /* private mode */ }
      showError("");
      checkKey().then((ok) => {
        if (!ok) showError("The server did not accept this API key.");
        else $("mic-state").textContent = "Key saved.";
      });
    });
    $("key-forget").addEventListener("click", () => {
      try { localStorage.removeItem(KEY_STORAGE); } catch { /* private mode */ }
      $("api-key").value = "";
    });
  }

  wire();
  pollHealth();
  checkKey();
})();
