// AudioWorklet processor: microphone samples (float32, the AudioContext's rate) -> 16-bit PCM mono at
// `targetRate` (OpenAI Realtime's audio/pcm is 24 kHz, little-endian int16), posted to the page in chunks of
// `chunkMs` with the chunk's RMS level. https://developer.mozilla.org/en-US/docs/Web/API/AudioWorkletProcessor
//
// The page asks for an AudioContext at targetRate, so the browser resamples and this code only converts. Where
// the browser refuses (Firefox cannot connect a microphone to a context at another rate), the context runs at
// the device rate and this code resamples: each output sample is the mean of the input samples in its period
// (a box low-pass against aliasing) at linearly interpolated positions. Speech keeps its band (< 8 kHz).

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.targetRate = opts.targetRate || 24000;
    this.step = sampleRate / this.targetRate; // input samples per output sample (global `sampleRate`)
    this.chunk = new Int16Array(Math.round(this.targetRate * (opts.chunkMs || 100) / 1000));
    this.filled = 0;
    this.sumSquares = 0;
    this.pos = 0; // position of the next output sample, in input samples from the start of `pending`
    this.pending = new Float32Array(0);
    this.port.onmessage = (e) => { if (e.data === "flush") this.flush(); };
  }

  push(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.sumSquares += v * v;
    this.chunk[this.filled++] = v < 0 ? v * 0x8000 : v * 0x7fff;
    if (this.filled === this.chunk.length) this.flush();
  }

  flush() {
    if (this.filled === 0) return;
    const pcm = this.chunk.slice(0, this.filled);
    const rms = Math.sqrt(this.sumSquares / this.filled);
    this.port.postMessage({ pcm: pcm.buffer, rms }, [pcm.buffer]);
    this.filled = 0;
    this.sumSquares = 0;
  }

  resample(input) {
    const data = new Float32Array(this.pending.length + input.length);
    data.set(this.pending);
    data.set(input, this.pending.length);
    const half = this.step / 2;
    while (this.pos + half < data.length) {
      const lo = Math.max(0, Math.ceil(this.pos - half));
      const hi = Math.min(data.length - 1, Math.floor(this.pos + half));
      let sum = 0;
      for (let i = lo; i <= hi; i++) sum += data[i];
      this.push(hi >= lo ? sum / (hi - lo + 1) : data[Math.min(data.length - 1, Math.round(this.pos))]);
      this.pos += this.step;
    }
    const keep = Math.max(0, Math.floor(this.pos - half) - 1);
    this.pending = data.slice(keep);
    this.pos -= keep;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      let mono = channels[0];
      if (channels.length > 1) {
        mono = new Float32Array(channels[0].length);
        for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
      }
      if (Math.abs(this.step - 1) < 1e-9) for (let i = 0; i < mono.length; i++) this.push(mono[i]);
      else this.resample(mono);
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
