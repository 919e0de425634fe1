// facerec live page: webcam -> JPEG frames over the /stream WebSocket -> boxes and names.
// No build step, no dependencies. The server drops stale frames (latest wins); this page
// also keeps at most MAX_IN_FLIGHT frames unanswered and sends at most MAX_FPS frames a
// second (each frame is charged to the API key's rate budget), so it never floods the
// socket. The API key travels as a WebSocket subprotocol, never in the URL.
"use strict";

const MAX_IN_FLIGHT = 2;
const MAX_FPS = 15;
const PROTOCOL = "facerec.v1";
const KEY_PROTOCOL_PREFIX = "facerec.key.";
const FRAME_MAX_WIDTH = 640; // frames are sent at most this wide (the server's sweet spot)
const JPEG_QUALITY = 0.8;
const FPS_WINDOW_MS = 2000;

const $ = (id) => document.getElementById(id);
const video = $("video");
const overlay = $("overlay");
const capture = document.createElement("canvas");

const state = {
  media: null,
  socket: null,
  sent: 0, // frames sent on the current socket (the next frame's index)
  lastAnswered: -1, // index of the newest answered frame
  encoding: false,
  sentAt: new Map(), // frame index -> performance.now() when sent
  lastSentAt: 0,
  answerTimes: [],
  dropped: 0,
  unknowns: new Map(), // unknown_id -> its <li> in #unknowns
  enrolled: new Set(), // unknown ids enrolled from this page (named once re-identified)
};

function collection() {
  return $("collection").value.trim() || "default";
}

function camera() {
  return $("camera").value.trim();
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(element, text, kind) {
  element.textContent = text;
  element.dataset.state = kind;
}

// --- camera and stream -------------------------------------------------------------------

async function start() {
  $("start").disabled = true;
  try {
    state.media = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } },
      audio: false,
    });
  } catch (error) {
    setStatus($("stream-status"), `camera unavailable: ${error.message || error}`, "error");
    $("start").disabled = false;
    return;
  }
  video.srcObject = state.media;
  await video.play().catch(() => {});
  $("stop").disabled = false;
  openSocket();
  requestAnimationFrame(pump);
}

function stop() {
  if (state.socket) state.socket.close(1000, "stopped");
  state.socket = null;
  if (state.media) state.media.getTracks().forEach((track) => track.stop());
  state.media = null;
  video.srcObject = null;
  clearOverlay();
  renderLabels([]);
  $("start").disabled = false;
  $("stop").disabled = true;
  setStatus($("stream-status"), "camera off", "idle");
}

function openSocket() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ collection: collection() });
  if (camera()) params.set("camera", camera());
  const key = $("api-key").value.trim();
  const protocols = key ? [PROTOCOL, KEY_PROTOCOL_PREFIX + key] : [PROTOCOL];
  const socket = new WebSocket(`${scheme}://${location.host}/stream?${params}`, protocols);
  socket.binaryType = "arraybuffer";
  Object.assign(state, { socket, sent: 0, lastAnswered: -1, dropped: 0, answerTimes: [] });
  state.sentAt.clear();
  socket.onopen = () => setStatus($("stream-status"), "streaming", "ok");
  socket.onmessage = (event) => onAnswer(JSON.parse(event.data));
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    const why = event.reason ? `: ${event.reason}` : "";
    setStatus($("stream-status"), `stream closed (${event.code})${why}`,
      event.code === 1000 ? "idle" : "error");
  };
}

function pump() {
  if (!state.media) return;
  const socket = state.socket;
  const inFlight = state.sent - (state.lastAnswered + 1);
  const now = performance.now();
  if (socket && socket.readyState === WebSocket.OPEN && video.videoWidth > 0 &&
      !state.encoding && inFlight < MAX_IN_FLIGHT && now - state.lastSentAt >= 1000 / MAX_FPS) {
    state.encoding = true;
    state.lastSentAt = now;
    snapshot().then((blob) => {
      state.encoding = false;
      if (blob && state.socket === socket && socket.readyState === WebSocket.OPEN) {
        state.sentAt.set(state.sent, performance.now());
        state.sent += 1;
        socket.send(blob);
      }
    });
  }
  requestAnimationFrame(pump);
}

// The current video frame as a JPEG blob, at most FRAME_MAX_WIDTH wide.
function snapshot() {
  const scale = Math.min(1, FRAME_MAX_WIDTH / video.videoWidth);
  capture.width = Math.round(video.videoWidth * scale);
  capture.height = Math.round(video.videoHeight * scale);
  capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
  return new Promise((resolve) => capture.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
}

// --- answers ------------------------------------------------------------------------------

function onAnswer(answer) {
  const now = performance.now();
  state.lastAnswered = answer.frame;
  state.dropped += answer.dropped_count;
  const sentAt = state.sentAt.get(answer.frame);
  for (const index of state.sentAt.keys()) if (index <= answer.frame) state.sentAt.delete(index);
  state.answerTimes.push(now);
  while (state.answerTimes.length && state.answerTimes[0] < now - FPS_WINDOW_MS) {
    state.answerTimes.shift();
  }
  $("fps").textContent = (state.answerTimes.length * 1000 / FPS_WINDOW_MS).toFixed(1);
  $("latency").textContent = answer.latency_ms.toFixed(0);
  if (sentAt !== undefined) $("rtt").textContent = (now - sentAt).toFixed(0);
  $("dropped").textContent = String(state.dropped);
  document.body.dataset.answers = String(Number(document.body.dataset.answers || 0) + 1);
  drawFaces(answer);
  renderLabels(answer.faces);
  renderUnknowns(answer.faces);
}

function shortId(unknownId) {
  return unknownId.slice(-6);
}

function labelOf(face) {
  if (face.subject) return face.subject;
  if (face.unknown_id) return `unknown ${shortId(face.unknown_id)}`;
  return face.similarity === null ? "…" : "unknown";
}

function clearOverlay() {
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
}

function drawFaces(answer) {
  overlay.width = video.videoWidth || answer.width;
  overlay.height = video.videoHeight || answer.height;
  const scale = overlay.width / answer.width;
  const context = overlay.getContext("2d");
  context.clearRect(0, 0, overlay.width, overlay.height);
  context.lineWidth = Math.max(2, overlay.width / 320);
  context.font = `${Math.max(14, Math.round(overlay.width / 32))}px system-ui, sans-serif`;
  context.textBaseline = "bottom";
  for (const face of answer.faces) {
    const [x1, y1, x2, y2] = face.bbox.map((value) => value * scale);
    const colour = face.subject ? "#2ecc71" : "#f1c40f";
    context.strokeStyle = colour;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = face.subject && face.similarity !== null
      ? `${face.subject} ${face.similarity.toFixed(2)}` : labelOf(face);
    const width = context.measureText(text).width + 8;
    const height = parseInt(context.font, 10) + 6;
    context.fillStyle = colour;
    context.fillRect(x1, Math.max(0, y1 - height), width, height);
    context.fillStyle = "#000";
    context.fillText(text, x1 + 4, Math.max(height, y1) - 3);
  }
}

// The names drawn on the video, as DOM (for people using screen readers, and for tests).
function renderLabels(faces) {
  const items = faces.map((face) => {
    const item = document.createElement("li");
    item.dataset.trackId = String(face.track_id);
    item.dataset.subject = face.subject || "";
    item.dataset.unknownId = face.unknown_id || "";
    const name = document.createElement("span");
    name.textContent = labelOf(face);
    const detail = document.createElement("span");
    detail.textContent = `#${face.track_id}` +
      (face.similarity === null ? "" : ` · ${face.similarity.toFixed(2)}`);
    item.append(name, detail);
    return item;
  });
  $("labels").replaceChildren(...items);
}

// Unknown faces stay listed (in view or not) until enrolled or the page reloads; their
// items are updated in place so that a name being typed survives the next answers.
function renderUnknowns(faces) {
  const inView = new Set(faces.filter((face) => face.unknown_id).map((face) => face.unknown_id));
  for (const unknownId of inView) {
    if (!state.unknowns.has(unknownId) && !state.enrolled.has(unknownId)) {
      const item = unknownItem(unknownId);
      state.unknowns.set(unknownId, item);
      $("unknowns").append(item);
    }
  }
  for (const [unknownId, item] of state.unknowns) {
    item.dataset.inView = String(inView.has(unknownId));
  }
}

function unknownItem(unknownId) {
  const item = document.createElement("li");
  item.dataset.unknownId = unknownId;
  const id = document.createElement("code");
  id.textContent = shortId(unknownId);
  id.title = unknownId;
  const form = document.createElement("form");
  const name = document.createElement("input");
  name.className = "enroll-unknown-name";
  name.placeholder = "name";
  name.maxLength = 128;
  name.required = true;
  const button = document.createElement("button");
  button.type = "submit";
  button.className = "enroll-unknown";
  button.textContent = "enroll";
  const status = document.createElement("span");
  status.className = "status";
  status.dataset.state = "idle";
  form.append(name, button);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    enrollUnknown(unknownId, name.value.trim(), status);
  });
  item.append(id, form, status);
  return item;
}

async function enrollUnknown(unknownId, name, status) {
  if (!name) return;
  setStatus(status, "enrolling…", "busy");
  const form = new FormData();
  form.append("subject", name);
  form.append("unknown_id", unknownId);
  const url = `/enroll?${new URLSearchParams({ collection: collection() })}`;
  try {
    const response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      setStatus(status, `not enrolled: ${await errorText(response)}`, "error");
      return;
    }
    const result = await response.json();
    setStatus($("enroll-status"), `enrolled ${result.subject} from the stream`, "ok");
    state.enrolled.add(unknownId);
    state.unknowns.get(unknownId)?.remove();
    state.unknowns.delete(unknownId);
  } catch (error) {
    setStatus(status, `not enrolled: ${error.message || error}`, "error");
  }
  await refreshSubjects();
}

// --- enrollment and the gallery --------------------------------------------------------------

async function errorText(response) {
  try {
    const body = await response.json();
    return `${body.code || response.status}: ${body.message || response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function enroll(event) {
  event.preventDefault();
  const status = $("enroll-status");
  const name = $("enroll-name").value.trim();
  if (!state.media || video.videoWidth === 0) {
    setStatus(status, "start the camera first", "error");
    return;
  }
  if (!name) {
    setStatus(status, "type a name first", "error");
    return;
  }
  setStatus(status, "enrolling…", "busy");
  const blob = await snapshot();
  const form = new FormData();
  form.append("subject", name);
  form.append("face_policy", "largest");
  form.append("images", blob, "webcam.jpg");
  const url = `/enroll?${new URLSearchParams({ collection: collection() })}`;
  try {
    const response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      setStatus(status, `not enrolled: ${await errorText(response)}`, "error");
      return;
    }
    const result = await response.json();
    setStatus(status, `enrolled ${result.subject}`, "ok");
  } catch (error) {
    setStatus(status, `not enrolled: ${error.message || error}`, "error");
  }
  await refreshSubjects();
}

async function refreshSubjects() {
  const url = `/subjects?${new URLSearchParams({ collection: collection(), limit: "500" })}`;
  const list = $("subjects");
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) {
      list.replaceChildren(message(`cannot list: ${await errorText(response)}`));
      return;
    }
    const page = await response.json();
    list.replaceChildren(...page.items.map(subjectItem));
    if (!page.items.length) list.replaceChildren(message("nobody yet"));
  } catch (error) {
    list.replaceChildren(message(`cannot list: ${error.message || error}`));
  }
}

function message(text) {
  const item = document.createElement("li");
  item.textContent = text;
  return item;
}

function subjectItem(subject) {
  const item = document.createElement("li");
  item.dataset.subject = subject.subject;
  const name = document.createElement("span");
  name.textContent = `${subject.subject} (${subject.face_count})`;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "delete";
  remove.title = `delete ${subject.subject}`;
  remove.addEventListener("click", () => removeSubject(subject.subject));
  item.append(name, remove);
  return item;
}

async function removeSubject(subject) {
  const url = `/subjects/${encodeURIComponent(subject)}?` +
    new URLSearchParams({ collection: collection() });
  const response = await fetch(url, { method: "DELETE", headers: authHeaders() });
  if (!response.ok) setStatus($("enroll-status"), await errorText(response), "error");
  await refreshSubjects();
}

// --- wiring ---------------------------------------------------------------------------------

function restartStreamIfRunning() {
  refreshSubjects();
  if (state.socket) {
    state.socket.close(1000, "settings changed");
    openSocket();
  }
}

const query = new URLSearchParams(location.search);
if (query.get("collection")) $("collection").value = query.get("collection");
if (query.get("camera")) $("camera").value = query.get("camera");
$("api-key").value = sessionStorage.getItem("facerec-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("facerec-api-key", $("api-key").value.trim());
  restartStreamIfRunning();
});
$("collection").addEventListener("change", restartStreamIfRunning);
$("camera").addEventListener("change", restartStreamIfRunning);
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("enroll-form").addEventListener("submit", enroll);
$("refresh").addEventListener("click", refreshSubjects);
refreshSubjects();
if (query.get("autostart") === "1") start();
