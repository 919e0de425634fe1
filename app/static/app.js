// facerec live page: webcam -> JPEG frames over the /stream WebSocket -> boxes and names.
// No build step, no dependencies. The server drops stale frames (latest wins); this page
// also keeps at most MAX_IN_FLIGHT frames unanswered so it never floods the socket.
"use strict";

const MAX_IN_FLIGHT = 2;
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
  answerTimes: [],
  dropped: 0,
};

function collection() {
  return $("collection").value.trim() || "default";
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
  const key = $("api-key").value.trim();
  if (key) params.set("api_key", key);
  const socket = new WebSocket(`${scheme}://${location.host}/stream?${params}`);
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
  if (socket && socket.readyState === WebSocket.OPEN && video.videoWidth > 0 &&
      !state.encoding && inFlight < MAX_IN_FLIGHT) {
    state.encoding = true;
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
}

function labelOf(face) {
  if (face.subject) return face.subject;
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
$("api-key").value = sessionStorage.getItem("facerec-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("facerec-api-key", $("api-key").value.trim());
  restartStreamIfRunning();
});
$("collection").addEventListener("change", restartStreamIfRunning);
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("enroll-form").addEventListener("submit", enroll);
$("refresh").addEventListener("click", refreshSubjects);
refreshSubjects();
if (query.get("autostart") === "1") start();
