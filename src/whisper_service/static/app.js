'use strict';

/*
 * Live microphone transcription and file upload for whisper-service.
 * Plain browser JS, no framework and no build step: everything is served by the app itself.
 *
 * Live flow: mic -> AudioContext (16 kHz) -> AudioWorklet "pcm-writer" (Int16 LE, 100 ms frames)
 *            -> WebSocket /v1/stream (config JSON, wait for "ready", binary frames, "end").
 * Where the browser records Opus (MediaRecorder, WebM or Ogg), the page sends that instead:
 * the recorder's 100 ms chunks, as they come, about a tenth of the PCM bytes. The worklet
 * then only drives the level meter. PCM stays the fallback and a choice ("Audio sent").
 *
 * With an API key, HTTP requests carry it in `Authorization: Bearer`, and each WebSocket opens
 * with a fresh single-use ticket from POST /v1/stream/ticket: the key never sits in a URL,
 * where proxies and access logs would keep it.
 */

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 1600;          // 100 ms at 16 kHz
const DONE_TIMEOUT_MS = 10000;       // how long to wait for "done" after "end"
const READY_TIMEOUT_MS = 60000;      // after Stop, how long to wait for a slow "ready" (model load)
const FLUSH_TIMEOUT_MS = 500;        // how long to wait for the worklet's last partial frame
const MAX_PENDING_FRAMES = 600;      // audio held back (60 s) while the server prepares the session
// Opus at 24 kb/s: the test clip transcribes as from PCM (tests/integration/test_opus.py);
// Chromium's default came to 160 kb/s in speech. Chunks of 100 ms, like the PCM frames.
const OPUS_BITRATE = 24000;
const OPUS_TIMESLICE_MS = 100;
const OPUS_TYPES = [               // MediaRecorder type -> the server's encoding
  ['audio/webm;codecs=opus', 'webm_opus'],   // Chrome, Edge, Firefox
  ['audio/ogg;codecs=opus', 'ogg_opus'],     // Firefox
];

const FALLBACK_MODELS = [
  { id: 'base', languages: 'multilingual' },
  { id: 'tiny.en', languages: 'English only' },
];
const FORMAT_TYPES = {
  srt: 'application/x-subrip', vtt: 'text/vtt', txt: 'text/plain', json: 'application/json',
};
const CLOSE_HINTS = {
  1000: 'closed by the server',
  1001: 'server going away',
  1006: 'connection lost',
  1007: 'audio the server could not decode',
  1008: 'not allowed (check the API key)',
  1009: 'message too large',
  1011: 'server error',
  1013: 'server busy, try again later',
};

const $ = (id) => document.getElementById(id);
const ui = {
  model: $('model'), language: $('language'), task: $('task'), prompt: $('prompt'),
  start: $('start'), stop: $('stop'), status: $('status'),
  transcript: $('transcript'), partial: $('partial'), timer: $('timer'), level: $('level'),
  encoding: $('encoding'), rate: $('rate'),
  fileForm: $('file-form'), file: $('file'), format: $('format'), upload: $('upload'),
  fileResult: $('file-result'), download: $('download'),
  apiKey: $('api-key'), apiKeyField: $('api-key-field'),
};

const KEY_STORAGE = 'whisper-service.api_key';   // sessionStorage: this tab only

let session = null;        // the live recording in progress (see newSession), or null
let downloadUrl = null;    // object URL of the last file result, revoked when replaced

/* ---------- small helpers ---------- */

function setStatus(message, kind = 'info') {
  ui.status.textContent = message;
  ui.status.dataset.kind = kind;   // style.css colours info / ok / warn / error
}

/** URL relative to the page, so the app also works behind a reverse-proxy path prefix. */
function apiUrl(path, protocol) {
  const url = new URL(path, location.href);
  url.search = '';
  url.hash = '';
  if (protocol) url.protocol = protocol;
  return url.toString();
}

/* ---------- API key ---------- */

function apiKey() {
  return ui.apiKey.value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage disabled: the key lives in the field until the page closes.
  }
}

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

/**
 * The key comes from `?api_key=` on the page URL (then removed from the address bar and the
 * history entry), else from this tab's sessionStorage, else from the key field.
 */
function initKey() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get('api_key');
  if (fromUrl !== null) {
    url.searchParams.delete('api_key');
    history.replaceState(history.state, '', url.toString());
    storeKey(fromUrl.trim());
  }
  ui.apiKey.value = storedKey();
  ui.apiKeyField.hidden = !ui.apiKey.value;
  ui.apiKey.addEventListener('change', () => {
    storeKey(apiKey());
    loadModels();
  });
}

/** The server refused the key (or wants one): show the field so one can be entered. */
function askForKey() {
  ui.apiKeyField.hidden = false;
  if (!apiKey()) ui.apiKey.focus();
}

/** The WebSocket URL: with a key, a fresh single-use ticket rides in it, never the key. */
async function streamUrl() {
  const url = new URL(apiUrl('v1/stream', location.protocol === 'https:' ? 'wss:' : 'ws:'));
  if (!apiKey()) return url.toString();
  let res;
  let text;
  try {
    res = await fetch(apiUrl('v1/stream/ticket'), { method: 'POST', headers: authHeaders() });
    text = await res.text();
  } catch (err) {
    throw new Error(`Could not reach the server (${err.message}).`);
  }
  if (!res.ok) {
    if (res.status === 401) askForKey();
    throw new Error(`Could not get a stream ticket: ${describeHttpError(res.status, res.statusText, text)}`);
  }
  url.searchParams.set('ticket', JSON.parse(text).ticket);
  return url.toString();
}

/** The server's `{"error": {"message", "code"}}` body (or FastAPI's `{"detail"}`) as one line. */
function describeHttpError(status, statusText, text) {
  let message = (text || '').trim().slice(0, 300) || statusText;
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') {
      message = body.error;
    } else if (body && body.error && body.error.message) {
      message = body.error.code ? `${body.error.message} (${body.error.code})` : body.error.message;
    } else if (body && body.detail) {
      message = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // Not JSON: keep the raw text.
  }
  return `HTTP ${status}: ${message}`;
}

function formatClock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/* ---------- models ---------- */

async function loadModels() {
  let models = FALLBACK_MODELS;
  try {
    const res = await fetch(apiUrl('v1/models'), { headers: authHeaders() });
    const text = await res.text();
    if (res.status === 401) askForKey();
    if (!res.ok) throw new Error(describeHttpError(res.status, res.statusText, text));
    const body = JSON.parse(text);
    if (Array.isArray(body.data) && body.data.length) models = body.data;
  } catch (err) {
    setStatus(`Could not list models (${err.message}); offering the defaults.`, 'warn');
  }
  fillModelSelect(models);
}

function fillModelSelect(models) {
  ui.model.replaceChildren(...models.map(modelOption));
  // Prefer a model that is already in memory: the first session starts without a load.
  const preferred = models.find((m) => m.loaded) || models.find((m) => m.id === 'base') || models[0];
  ui.model.value = preferred.id;
}

function modelOption(model) {
  const notes = [];
  if (model.languages) notes.push(model.languages);
  if (model.loaded === false) notes.push('loads on first use');
  const label = notes.length ? `${model.id} (${notes.join(', ')})` : model.id;
  return new Option(label, model.id);
}

/* ---------- transcript rendering ---------- */

function clearTranscript() {
  ui.partial.textContent = '';
  ui.transcript.replaceChildren(ui.partial);
  ui.transcript.classList.add('is-empty');
}

function hasFinals() {
  return ui.transcript.querySelector('.final, .utterance') !== null;
}

/** Run `change`, then keep the view pinned to the bottom if the reader was already there. */
function keepScrolled(change) {
  const box = ui.transcript;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
  change();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function showPartial(text) {
  const clean = (text || '').trim();
  keepScrolled(() => {
    // The leading space separates the partial from the finals before it (and survives copy).
    ui.partial.textContent = clean && hasFinals() ? ` ${clean}` : clean;
    if (clean) ui.transcript.classList.remove('is-empty');
  });
}

function appendFinal(msg) {
  const text = (msg.text || '').trim();
  keepScrolled(() => {
    ui.partial.textContent = '';     // the final supersedes whatever partial was showing
    if (!text) return;
    const span = document.createElement('span');
    span.className = 'final';
    span.textContent = text;
    if (typeof msg.start === 'number' && typeof msg.end === 'number') {
      span.dataset.start = msg.start;
      span.dataset.end = msg.end;
      span.title = `${msg.start.toFixed(1)}–${msg.end.toFixed(1)} s${msg.language ? ` · ${msg.language}` : ''}`;
    }
    if (hasFinals()) ui.transcript.insertBefore(document.createTextNode(' '), ui.partial);
    ui.transcript.insertBefore(span, ui.partial);
    ui.transcript.classList.remove('is-empty');
  });
}

/**
 * An utterance is its finals' span decoded again as a whole: one span takes their place
 * (docs/protocol.md, 5b). It briefly glows so the reader sees the text settle.
 */
function applyUtterance(msg) {
  const inside = (e) => Number(e.dataset.start) >= msg.start - 0.001
    && Number(e.dataset.end) <= msg.end + 0.001;
  const covered = [...ui.transcript.querySelectorAll('.final')].filter(inside);
  if (!covered.length) return;
  keepScrolled(() => {
    const span = document.createElement('span');
    span.className = 'utterance';
    span.dataset.start = msg.start;
    span.dataset.end = msg.end;
    span.textContent = (msg.text || '').trim() || covered.map((e) => e.textContent).join(' ');
    span.title = `${msg.start.toFixed(1)}–${msg.end.toFixed(1)} s · whole utterance`;
    covered[0].replaceWith(span);
    for (const e of covered.slice(1)) {
      const gap = e.previousSibling;
      if (gap && gap.nodeType === Node.TEXT_NODE) gap.remove();
      e.remove();
    }
  });
}

/* ---------- microphone and worklet ---------- */

/**
 * The microphone, its AudioContext and worklet and, with `opus` ([mimeType, encoding]), a
 * MediaRecorder whose chunks go to `onChunk`. The recorder starts first, so the time the
 * worklet takes to load costs it no audio.
 */
async function openMicrophone(onWorkletMessage, opus = null, onChunk = null) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  try {
    const recording = opus ? startRecorder(stream, opus, onChunk) : null;
    const { ctx, source } = createContextAndSource(stream);
    await ctx.audioWorklet.addModule('static/pcm-worklet.js');
    const node = new AudioWorkletNode(ctx, 'pcm-writer', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      channelCount: 1,                   // the graph downmixes a stereo mic to mono for us
      channelCountMode: 'explicit',
      channelInterpretation: 'speakers',
      processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES },
    });
    node.port.onmessage = (event) => onWorkletMessage(event.data);
    // A node must lead to the destination to be pulled reliably; the zero gain keeps the mic
    // from being played back (the worklet writes silence anyway).
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(node);
    node.connect(mute);
    mute.connect(ctx.destination);
    if (ctx.state === 'suspended') await ctx.resume();
    return { stream, ctx, node, source, recording };
  } catch (err) {
    stream.getTracks().forEach((track) => track.stop());
    throw err;
  }
}

/**
 * A 16 kHz context lets the browser resample the mic. Some browsers refuse the rate, or refuse
 * to connect a mic running at another rate (Firefox); then use the hardware rate and let the
 * worklet resample.
 */
function createContextAndSource(stream) {
  let ctx = null;
  try {
    ctx = new AudioContext({ sampleRate: TARGET_RATE });
    return { ctx, source: ctx.createMediaStreamSource(stream) };
  } catch (err) {
    console.warn('16 kHz AudioContext unavailable, resampling in the worklet:', err);
    if (ctx) ctx.close().catch(() => {});
  }
  ctx = new AudioContext();
  return { ctx, source: ctx.createMediaStreamSource(stream) };
}

/** Ask the worklet for its last partial frame; resolves once it has been delivered. */
function flushWorklet(node) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, FLUSH_TIMEOUT_MS);
    const forward = node.port.onmessage;
    node.port.onmessage = (event) => {
      if (forward) forward(event);
      if (event.data && event.data.type === 'flushed') {
        clearTimeout(timer);
        resolve();
      }
    };
    node.port.postMessage({ type: 'flush' });
  });
}

/** Idempotent: Stop and a socket closing at the same moment may both ask for it. */
function closeMicrophone(audio) {
  if (!audio) return Promise.resolve();
  if (!audio.closing) {
    audio.closing = (async () => {
      if (audio.recording) await stopRecorder(audio.recording);   // before the tracks end
      await flushWorklet(audio.node);
      audio.stream.getTracks().forEach((track) => track.stop());
      audio.source.disconnect();
      audio.node.port.onmessage = null;
      await audio.ctx.close().catch(() => {});
    })();
  }
  return audio.closing;
}

function micErrorMessage(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone permission was denied.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone found.';
    case 'NotReadableError':
      return 'The microphone is in use by another application.';
    default:
      return `Could not start audio: ${(err && err.message) || err}`;
  }
}

/** The first Opus type this browser records, as [mimeType, encoding], or null. */
function opusType() {
  if (typeof MediaRecorder === 'undefined' || !MediaRecorder.isTypeSupported) return null;
  return OPUS_TYPES.find(([type]) => MediaRecorder.isTypeSupported(type)) || null;
}

/** Offer Opus where the browser records it (and make it the default), PCM everywhere. */
function initEncoding() {
  const opus = ui.encoding.querySelector('option[value="opus"]');
  if (opusType()) {
    ui.encoding.value = 'opus';
  } else {
    opus.disabled = true;
    opus.textContent += ' (not supported by this browser)';
    ui.encoding.value = 'pcm';
  }
}

/**
 * Record Opus from the microphone's stream. Chunks are read in order (Blob.arrayBuffer is
 * asynchronous) and go out as they come: the first carries the header, so none may be lost.
 */
function startRecorder(stream, [mimeType], onChunk) {
  const recorder = new MediaRecorder(stream, { mimeType, audioBitsPerSecond: OPUS_BITRATE });
  const recording = { recorder, sent: Promise.resolve() };
  recorder.ondataavailable = (event) => {
    if (!event.data.size) return;
    recording.sent = recording.sent
      .then(() => event.data.arrayBuffer())
      .then(onChunk);
  };
  recorder.start(OPUS_TIMESLICE_MS);
  return recording;
}

/** Stop the recorder; resolves once its last chunk has been handed on. */
async function stopRecorder(recording) {
  const { recorder } = recording;
  if (recorder.state !== 'inactive') {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, FLUSH_TIMEOUT_MS);
      recorder.addEventListener('stop', () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
      recorder.stop();     // the last "dataavailable" comes before "stop"
    });
  }
  await recording.sent.catch(() => {});
}

/** Audio bytes per second of recording, shown small next to the timer. */
function showRate(s) {
  const seconds = ((s.stoppedAt || performance.now()) - s.startedAt) / 1000;
  if (seconds < 1) return;
  ui.rate.dataset.bytes = s.bytes;
  ui.rate.dataset.seconds = seconds.toFixed(2);
  const kind = s.encoding === 'pcm_s16le' ? 'PCM' : 'Opus';
  ui.rate.textContent = `${kind} · ${(s.bytes / seconds / 1000).toFixed(1)} kB/s`;
}

function showLevel(peak) {
  // Square root so that normal speech (peaks around 0.1-0.3) moves the bar visibly.
  ui.level.style.width = `${Math.min(100, Math.sqrt(peak || 0) * 100).toFixed(0)}%`;
}

/* ---------- live session ---------- */

function newSession() {
  return {
    audio: null,          // {stream, ctx, node, source, recording} from openMicrophone
    encoding: 'pcm_s16le',  // or webm_opus / ogg_opus: what the binary frames carry
    opus: null,           // [mimeType, encoding] when recording Opus
    bytes: 0,             // audio bytes produced so far (sent or waiting for "ready")
    stoppedAt: 0,         // when Stop was pressed (performance.now()), for the byte rate
    ws: null,
    ready: false,         // the server sent "ready": audio may flow
    stopping: false,      // Stop pressed
    audioClosed: false,   // mic and AudioContext shut, last frame delivered
    endSent: false,
    pending: [],          // audio frames captured before "ready"
    dropped: 0,
    lastError: null,      // text of the last {"type":"error"} message
    timeout: 0,
    clock: 0,
    startedAt: 0,
  };
}

function updateControls() {
  const s = session;
  ui.start.disabled = s !== null;
  ui.stop.disabled = !s || !s.audio || s.stopping;
  for (const el of [ui.model, ui.language, ui.task, ui.prompt, ui.apiKey, ui.encoding]) {
    el.disabled = s !== null;
  }
  document.body.classList.toggle('recording', Boolean(s && s.audio && !s.stopping));
}

async function startRecording() {
  if (session) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus('The microphone needs a secure page: open it over https:// or on http://localhost.', 'error');
    return;
  }
  if (typeof AudioWorkletNode === 'undefined') {
    setStatus('This browser does not support AudioWorklet; use a current Chrome, Edge, Firefox or Safari.', 'error');
    return;
  }
  const s = newSession();
  s.opus = ui.encoding.value === 'opus' ? opusType() : null;
  if (s.opus) s.encoding = s.opus[1];
  session = s;
  clearTranscript();
  ui.rate.textContent = '';
  updateControls();
  setStatus('Waiting for microphone permission…');

  // Mic first, socket second: a slow permission prompt must not run into the server's idle timeout.
  try {
    s.audio = await openMicrophone((msg) => onWorkletMessage(s, msg), s.opus,
      (buffer) => sendAudio(s, buffer));
  } catch (err) {
    finishSession(s, micErrorMessage(err), 'error');
    return;
  }
  if (s !== session) {             // the page is going away
    closeMicrophone(s.audio);
    return;
  }
  s.startedAt = performance.now();
  s.clock = setInterval(() => {
    ui.timer.textContent = formatClock((performance.now() - s.startedAt) / 1000);
    showRate(s);
  }, 250);
  ui.timer.textContent = '0:00';
  setStatus('Connecting…');
  updateControls();
  let url;
  try {
    url = await streamUrl();
  } catch (err) {
    finishSession(s, err.message, 'error');
    return;
  }
  if (s !== session) return;       // finished (or the page left) while the ticket was coming
  s.ws = openSocket(s, url);
}

function streamConfig(s) {
  const config = {
    type: 'config',
    model: ui.model.value,
    language: ui.language.value,
    task: ui.task.value,
    encoding: s.encoding,
    static_prompt: ui.prompt.value.trim(),
    word_timestamps: false,
  };
  if (s.encoding === 'pcm_s16le') config.sample_rate = TARGET_RATE;  // Opus states its own
  return config;
}

function openSocket(s, url) {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    ws.send(JSON.stringify(streamConfig(s)));
    if (s === session) setStatus('Connected; preparing the model…');
  };
  ws.onmessage = (event) => {
    if (typeof event.data === 'string') onServerMessage(s, event.data);
  };
  ws.onclose = (event) => onSocketClose(s, event);
  return ws;
}

function onWorkletMessage(s, msg) {
  if (!msg || msg.type !== 'audio') return;
  if (!s.opus) sendAudio(s, msg.buffer);   // with Opus, the worklet only measures the level
  if (!s.stopping) showLevel(msg.peak);
}

function sendAudio(s, buffer) {
  if (s.endSent) return;           // after "end" the server takes no more audio
  s.bytes += buffer.byteLength;
  if (s.ready && s.ws && s.ws.readyState === WebSocket.OPEN) {
    s.ws.send(buffer);
    return;
  }
  // Not ready yet: hold the audio so the first words are not lost. PCM frames are dropped
  // past a bound; Opus chunks never are (a gap breaks the stream), at ~3 kB/s they are small.
  s.pending.push(buffer);
  if (!s.opus && s.pending.length > MAX_PENDING_FRAMES) {
    s.pending.shift();
    s.dropped += 1;
  }
}

function flushPending(s) {
  const frames = s.pending;
  s.pending = [];
  for (const buffer of frames) s.ws.send(buffer);
}

function onServerMessage(s, data) {
  if (s !== session) return;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    console.warn('Ignoring a non-JSON message from the server:', data);
    return;
  }
  switch (msg.type) {
    case 'ready':
      onReady(s, msg);
      break;
    case 'partial':
      showPartial(msg.text);
      break;
    case 'final':
      appendFinal(msg);
      break;
    case 'utterance':
      applyUtterance(msg);
      break;
    case 'error':
      s.lastError = `Error: ${msg.message || 'unknown error'}${msg.code ? ` (${msg.code})` : ''}`;
      setStatus(s.lastError, 'error');
      if (msg.code === 'unauthorized') askForKey();
      break;
    case 'done':
      onDone(s, msg);
      break;
    default:
      console.debug('Ignoring message', msg);
  }
}

function onReady(s, msg) {
  s.ready = true;
  const cfg = msg.config || {};
  const what = [cfg.model || ui.model.value, cfg.language || ui.language.value, cfg.task || ui.task.value];
  const dropped = s.dropped ? ` (dropped ${(s.dropped / 10).toFixed(1)} s of early audio)` : '';
  setStatus(s.stopping ? 'Finishing…' : `Listening: ${what.join(', ')}${dropped}`, 'ok');
  flushPending(s);
  maybeSendEnd(s);
}

async function stopRecording() {
  const s = session;
  if (!s || s.stopping) return;
  s.stopping = true;
  s.stoppedAt = performance.now();
  updateControls();
  setStatus('Finishing…');
  clearInterval(s.clock);
  showLevel(0);
  await closeMicrophone(s.audio);
  s.audioClosed = true;
  if (s !== session) return;       // the socket closed meanwhile
  if (!s.ready) armTimeout(s, READY_TIMEOUT_MS, 'The server never became ready; connection closed.');
  maybeSendEnd(s);
}

/** "end" goes out once all audio is sent, which needs both the mic closed and "ready". */
function maybeSendEnd(s) {
  if (s !== session || !s.stopping || !s.audioClosed || !s.ready || s.endSent) return;
  if (s.ws.readyState !== WebSocket.OPEN) return;
  flushPending(s);
  s.ws.send(JSON.stringify({ type: 'end' }));
  s.endSent = true;
  armTimeout(s, DONE_TIMEOUT_MS, 'No "done" from the server within 10 s; connection closed.');
}

function armTimeout(s, ms, message) {
  clearTimeout(s.timeout);
  s.timeout = setTimeout(() => finishSession(s, message, 'warn'), ms);
}

function onDone(s, msg) {
  ui.partial.textContent = '';
  showRate(s);                     // the whole recording's figure, last chunk included
  const seconds = Number(msg.audio_seconds || 0).toFixed(1);
  const segments = msg.segments ?? 0;
  finishSession(s, `Done: ${seconds} s of audio, ${segments} segment${segments === 1 ? '' : 's'}.`, 'ok');
}

function onSocketClose(s, event) {
  if (s !== session) return;
  finishSession(s, closeMessage(s, event), 'error');
}

function closeMessage(s, event) {
  const { code, reason } = event;
  if (code === 1006 && !s.ready && !s.lastError) {
    return 'Could not connect to the streaming endpoint (is the server running?).';
  }
  const detail = reason || CLOSE_HINTS[code] || '';
  const closed = `Disconnected (${code}${detail ? `: ${detail}` : ''})`;
  return s.lastError ? `${s.lastError}. ${closed}` : `${closed}.`;
}

/** Tear everything down exactly once; `message` becomes the status line. */
function finishSession(s, message, kind) {
  if (s !== session) return;
  session = null;
  clearTimeout(s.timeout);
  clearInterval(s.clock);
  closeMicrophone(s.audio);        // no-op if Stop already closed it
  // CONNECTING or OPEN: close politely; the close event is ignored since the session is over.
  if (s.ws && s.ws.readyState <= WebSocket.OPEN) s.ws.close(1000);
  showLevel(0);
  if (message) setStatus(message, kind);
  updateControls();
}

/* ---------- file transcription ---------- */

function buildUploadForm(file) {
  const form = new FormData();
  form.append('file', file, file.name);
  form.append('model', ui.model.value);
  if (ui.language.value !== 'auto') form.append('language', ui.language.value);
  form.append('response_format', ui.format.value);
  const prompt = ui.prompt.value.trim();
  if (prompt) form.append('prompt', prompt);   // OpenAI's field name; unknown fields are harmless
  return form;
}

async function uploadFile(event) {
  event.preventDefault();
  const file = ui.file.files[0];
  if (!file) {
    setStatus('Choose an audio or video file first.', 'error');
    ui.file.focus();
    return;
  }
  const format = ui.format.value;
  const translate = ui.task.value === 'translate';
  const endpoint = translate ? 'v1/audio/translations' : 'v1/audio/transcriptions';
  const started = performance.now();
  ui.upload.disabled = true;
  setStatus(`${translate ? 'Translating' : 'Transcribing'} ${file.name}… (long files take a while)`);
  try {
    const res = await fetch(apiUrl(endpoint), {
      method: 'POST', body: buildUploadForm(file), headers: authHeaders(),
    });
    const text = await res.text();
    if (!res.ok) {
      setStatus(`${file.name}: ${describeHttpError(res.status, res.statusText, text)}`, 'error');
      return;
    }
    showFileResult(text, format, file.name, res.headers.get('content-type'));
    const took = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`${file.name}: done in ${took} s.`, 'ok');
  } catch (err) {
    setStatus(`${file.name}: request failed (${err.message}).`, 'error');
  } finally {
    ui.upload.disabled = false;
  }
}

function showFileResult(text, format, fileName, contentType) {
  ui.fileResult.textContent = format === 'json' ? prettyJson(text) : text;
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  const type = contentType || `${FORMAT_TYPES[format] || 'text/plain'};charset=utf-8`;
  downloadUrl = URL.createObjectURL(new Blob([text], { type }));
  const name = `${baseName(fileName)}.${format}`;
  ui.download.href = downloadUrl;
  ui.download.download = name;
  ui.download.textContent = `Download ${name}`;
  ui.download.hidden = false;
}

function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function baseName(fileName) {
  const dot = fileName.lastIndexOf('.');
  return dot > 0 ? fileName.slice(0, dot) : fileName;
}

/* ---------- start-up ---------- */

function init() {
  ui.start.addEventListener('click', startRecording);
  ui.stop.addEventListener('click', stopRecording);
  ui.fileForm.addEventListener('submit', uploadFile);
  // Leaving the page: release the mic and tell the server we are gone.
  window.addEventListener('pagehide', () => {
    if (session) finishSession(session, '', 'info');
  });
  initKey();
  initEncoding();
  updateControls();
  loadModels();
}

init();
