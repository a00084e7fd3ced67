// FlowAct live viewer: one session's VideoChunks, played on the WebAudio clock.
//
// Every chunk carries its frames and exactly the audio they cover. Chunks' PCM is scheduled back
// to back on an AudioContext; frame i of a chunk is drawn when the audio being heard reaches the
// chunk's start + i / fps, so the picture follows the sound and never the other way round. A
// small jitter buffer (`jitter_chunks`, from /api/config) is filled before playback starts and
// again after the stream ran dry (the renderer stopped or restarted), so playback recovers by
// itself. `window.flowact` exposes both clocks and counters for tests and curious people.
"use strict";

const LEAD_S = 0.05; // headroom between scheduling a chunk and its first sample
const RETRY_MAX_MS = 2000;
const LOG_LINES = 100;

// -- the wire format (flowact/viewer/wire.py) ---------------------------------------------------

function parseChunk(buffer) {
  const headLength = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headLength)));
  let offset = 4 + headLength;
  const frames = header.frames.map((length) => {
    const frame = new Uint8Array(buffer, offset, length);
    offset += length;
    return frame;
  });
  // slice() copies, so the samples are aligned for an Int16Array whatever the frames' lengths.
  const pcm = new Int16Array(buffer.slice(offset, offset + header.samples * 2));
  return { header, frames, pcm };
}

function rawToBitmap(rgb, width, height) {
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let p = 0, q = 0; p < rgb.length; p += 3, q += 4) {
    rgba[q] = rgb[p];
    rgba[q + 1] = rgb[p + 1];
    rgba[q + 2] = rgb[p + 2];
    rgba[q + 3] = 255;
  }
  return createImageBitmap(new ImageData(rgba, width, height));
}

function decodeFrames(header, frames) {
  if (header.codec === "jpeg") {
    return Promise.all(frames.map((f) => createImageBitmap(new Blob([f], { type: "image/jpeg" }))));
  }
  return Promise.all(frames.map((f) => rawToBitmap(f, header.width, header.height)));
}

// -- the player ---------------------------------------------------------------------------------

class Player {
  constructor(canvas, jitterChunks, sampleRate) {
    this.canvas = canvas;
    this.g = canvas.getContext("2d");
    this.jitter = jitterChunks;
    this.audio = Player.audioContext(sampleRate);
    this.gain = this.audio.createGain();
    this.gain.connect(this.audio.destination);
    this.waiting = []; // decoded, not scheduled yet
    this.playing = []; // scheduled: {header, bitmaps, start, run}, oldest first
    this.running = false; // chunks are being scheduled back to back
    this.run = 0; // counts (re)starts of back-to-back playback
    this.nextStart = 0; // audio-context time where the next chunk's first sample goes
    this.shown = null; // the frame on the canvas: {chunk, frame, media}
    this.lastIndex = null;
    this.decoding = Promise.resolve();
    this.stats = { received: 0, scheduled: 0, dropped: 0, underruns: 0, framesDrawn: 0,
                   maxDriftMs: 0, runs: 0 };
  }

  static audioContext(sampleRate) {
    // At the chunks' own rate every chunk lands on whole samples; not every browser allows it.
    try {
      return new AudioContext({ sampleRate, latencyHint: "interactive" });
    } catch (err) {
      return new AudioContext({ latencyHint: "interactive" });
    }
  }

  // Take one chunk message; returns its header.
  push(buffer) {
    const { header, frames, pcm } = parseChunk(buffer);
    if (header.index === this.lastIndex) return header; // a repeat
    this.lastIndex = header.index;
    this.stats.received += 1;
    // Decode one chunk after the other so that chunks stay in their order.
    this.decoding = this.decoding
      .then(() => decodeFrames(header, frames))
      .then((bitmaps) => {
        this.waiting.push({ header, pcm, bitmaps });
        this.schedule();
      })
      .catch((err) => console.error("flowact: chunk", header.index, "not decoded:", err));
    return header;
  }

  // The audio-context time of the sample leaving the speakers now (output latency included).
  heardNow() {
    const ts = this.audio.getOutputTimestamp ? this.audio.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0) {
      return ts.contextTime + (performance.now() - ts.performanceTime) / 1000;
    }
    return this.audio.currentTime - (this.audio.outputLatency || 0) - (this.audio.baseLatency || 0);
  }

  schedule() {
    const now = this.audio.currentTime;
    if (this.running && this.nextStart < now) this.stall();
    if (!this.running) {
      if (this.waiting.length < this.jitter) return;
      this.running = true;
      this.run += 1;
      this.stats.runs = this.run;
      this.nextStart = now + LEAD_S;
    }
    const maxAhead = (this.jitter + 2) * this.chunkSeconds(this.waiting[0]);
    while (this.waiting.length) {
      const chunk = this.waiting.shift();
      if (this.nextStart - now > maxAhead) {
        // The stream runs faster than real time; dropping keeps the delay bounded.
        this.stats.dropped += 1;
        chunk.bitmaps.forEach((b) => b.close());
        continue;
      }
      this.play(chunk);
    }
  }

  play(chunk) {
    const { header, pcm } = chunk;
    const buffer = this.audio.createBuffer(1, pcm.length, header.audio_rate);
    const data = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i += 1) data[i] = pcm[i] / 32768;
    const source = this.audio.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    source.start(this.nextStart);
    chunk.start = this.nextStart;
    chunk.run = this.run;
    this.nextStart += this.chunkSeconds(chunk);
    this.playing.push(chunk);
    this.stats.scheduled += 1;
  }

  chunkSeconds(chunk) {
    return chunk.header.samples / chunk.header.audio_rate;
  }

  stall() {
    this.running = false;
    this.stats.underruns += 1;
  }

  // The chunk whose audio is heard at context time `now`, or null.
  chunkAt(now) {
    for (const chunk of this.playing) {
      if (chunk.start <= now && now < chunk.start + this.chunkSeconds(chunk)) return chunk;
    }
    return null;
  }

  // Called every animation frame: put up the frame that belongs to the sound heard now.
  tick() {
    const now = this.heardNow();
    if (this.running && this.nextStart < this.audio.currentTime) this.stall();
    this.measureDrift(now);
    while (this.playing.length > 1 && this.playing[1].start <= now) {
      const done = this.playing.shift();
      done.bitmaps.forEach((b) => b.close()); // the canvas keeps its own pixels
    }
    const chunk = this.chunkAt(now);
    if (!chunk) return; // before the first chunk, or the stream ran dry: hold the last frame
    const { fps } = chunk.header;
    const frame = Math.min(chunk.bitmaps.length - 1, Math.floor((now - chunk.start) * fps));
    if (this.shown && this.shown.chunk === chunk && this.shown.frame === frame) return;
    if (this.canvas.width !== chunk.header.width || this.canvas.height !== chunk.header.height) {
      this.canvas.width = chunk.header.width;
      this.canvas.height = chunk.header.height;
    }
    this.g.drawImage(chunk.bitmaps[frame], 0, 0);
    this.shown = { chunk, frame, media: (chunk.header.first_frame + frame) / fps };
    this.stats.framesDrawn += 1;
  }

  // How far the picture lagged the sound just before this animation frame, within one run.
  measureDrift(now) {
    const chunk = this.chunkAt(now);
    if (!chunk || !this.shown || this.shown.chunk.run !== chunk.run) return;
    const shownAt = this.shown.chunk.start + this.shown.frame / chunk.header.fps;
    const lagMs = (now - shownAt) * 1000 - 1000 / chunk.header.fps; // a frame lasts 1/fps
    this.stats.maxDriftMs = Math.max(this.stats.maxDriftMs, lagMs);
  }

  // Session media time (seconds) of the sound heard now; null when nothing plays.
  audioClock() {
    const now = this.heardNow();
    const chunk = this.chunkAt(now);
    return chunk ? chunk.header.first_frame / chunk.header.fps + (now - chunk.start) : null;
  }

  // Session media time (seconds) of the frame on the canvas; null before the first one.
  videoClock() {
    return this.shown ? this.shown.media : null;
  }

  // "playing" once sound and picture of the current run are both out: after a restart the
  // canvas holds the old run's last frame until the next animation frame draws a new one.
  status() {
    const drawn = this.shown !== null && this.shown.chunk.run === this.run;
    if (this.running && drawn && this.chunkAt(this.heardNow())) return "playing";
    return this.lastIndex === null ? "waiting for video" : "buffering";
  }
}

// -- the page -----------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function logLine(text, kind) {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  const log = $("log");
  log.prepend(item);
  while (log.children.length > LOG_LINES) log.lastChild.remove();
}

function onEvent(event) {
  if (event.type === "state") {
    const target = { agent: "agent-state", renderer: "renderer-state" }[event.actor];
    if (target) $(target).textContent = event.state;
  } else if (event.type === "transcript") {
    logLine(`${event.speaker}: ${event.text}`, event.speaker);
  } else if (event.type === "utterance") {
    logLine(`utterance ${event.utterance} ${event.phase}`);
  } else if (event.type === "error") {
    logLine(`error${event.field ? ` in ${event.field}` : ""}: ${event.reason}`, "error");
  }
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) logLine(`rejected: ${answer.field || ""} ${answer.error}`, "error");
  return answer;
}

function connect(session, player, connection) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/${encodeURIComponent(session)}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    connection.retryMs = 250;
    connection.open = true;
  };
  ws.onmessage = (message) => {
    if (typeof message.data === "string") {
      onEvent(JSON.parse(message.data));
    } else {
      const { index, state } = player.push(message.data);
      $("chunk").textContent = index;
      if (state) $("avatar-state").textContent = state;
    }
  };
  ws.onclose = () => {
    connection.open = false;
    connection.reconnects += 1;
    setTimeout(() => connect(session, player, connection), connection.retryMs);
    connection.retryMs = Math.min(2 * connection.retryMs, RETRY_MAX_MS);
  };
}

function setUp(config) {
  const session = new URLSearchParams(location.search).get("session") || config.session;
  $("session").textContent = session;
  const player = new Player($("video"), config.jitter_chunks, config.timebase.sample_rate);
  const connection = { open: false, retryMs: 250, reconnects: 0 };
  const api = `/api/sessions/${encodeURIComponent(session)}`;

  for (const behavior of config.behaviors) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = behavior.text;
    button.title = `${behavior.channel}, ${behavior.duration_frames / config.timebase.fps} s`;
    button.dataset.behavior = behavior.text;
    button.onclick = () => post(`${api}/behavior`, behavior);
    $("behaviors").append(button);
  }
  $("say").onsubmit = async (submit) => {
    submit.preventDefault();
    const text = $("say-text").value.trim();
    if (!text) return;
    $("say-text").value = "";
    await post(`${api}/transcript`, { text });
  };
  // Browsers start audio only after a gesture; until then the audio clock stands still.
  $("unmute").onclick = () => player.audio.resume();

  const frame = () => {
    player.tick();
    $("unmute").style.display = player.audio.state === "suspended" ? "block" : "none";
    $("status").textContent = connection.open ? player.status() : "reconnecting";
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  connect(session, player, connection);

  window.flowact = {
    session,
    player,
    connection,
    get audioClock() { return player.audioClock(); },
    get videoClock() { return player.videoClock(); },
    get stats() { return { ...player.stats, reconnects: connection.reconnects }; },
    get status() { return connection.open ? player.status() : "reconnecting"; },
  };
}

fetch("/api/config")
  .then((response) => response.json())
  .then(setUp)
  .catch((err) => logLine(`viewer failed to start: ${err}`, "error"));
