// facerec management page: collections, subjects with face thumbnails, enrollment from
// photos, deletion with confirmation, identification of a dropped photo. Plain JavaScript
// against the public API; no build step. Names from the gallery are only ever set as
// text (never as HTML).
"use strict";

const PAGE_SIZE = 100;
const KEY_STORAGE = "facerec.apiKey";
const COLLECTION_STORAGE = "facerec.collection";
const BOX_MATCH = "#1f7a4d";
const BOX_UNKNOWN = "#b36b00";

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || localStorage.getItem(KEY_STORAGE) || "",
  authRequired: false,
  collection: "default",
  offset: 0,
  total: 0,
  selected: null,
  thumbs: [], // object URLs to revoke when the lists are redrawn
};

// --- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || `http_${status}`;
    this.details = body.details || {};
  }
}

async function api(method, path, { params = {}, body, key = state.key, raw = false } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  const headers = key ? { "X-API-Key": key } : {};
  const response = await fetch(url, { method, headers, body });
  if (!response.ok) {
    const text = await response.text();
    let parsed = {};
    try { parsed = JSON.parse(text); } catch { parsed = { message: text.slice(0, 200) }; }
    throw new ApiError(response.status, parsed);
  }
  return raw ? response.blob() : response.json();
}

const inCollection = (extra = {}) => ({ collection: state.collection, ...extra });
const segment = (value) => encodeURIComponent(value);

function setStatus(text, kind = "idle") {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

function explain(error) {
  return error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
}

function element(tag, { text, className, dataset } = {}, ...children) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  Object.assign(node.dataset, dataset || {});
  node.append(...children);
  return node;
}

// --- the key first -----------------------------------------------------------------------

async function start() {
  try {
    await enterWorkspace(await api("GET", "/collections"));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      state.authRequired = true;
      showKeyScreen(state.key ? "" : null);
    } else {
      setStatus(`the service cannot be reached: ${explain(error)}`, "error");
    }
  }
}

function showKeyScreen(message) {
  document.body.dataset.state = "key";
  $("key-screen").hidden = false;
  $("workspace").hidden = true;
  $("session").hidden = true;
  $("key-status").textContent = message || "";
  $("key-status").dataset.state = message ? "error" : "idle";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  try {
    const collections = await api("GET", "/collections", { key });
    state.key = key;
    (($("key-remember").checked) ? localStorage : sessionStorage).setItem(KEY_STORAGE, key);
    await enterWorkspace(collections);
  } catch (error) {
    const why = error instanceof ApiError && error.status === 401
      ? "That key was not accepted: check it, or ask for a new one."
      : explain(error);
    $("key-status").textContent = why;
    $("key-status").dataset.state = "error";
  }
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  localStorage.removeItem(KEY_STORAGE);
  state.key = "";
  showKeyScreen();
});

// --- collections --------------------------------------------------------------------------

async function enterWorkspace(collections) {
  $("key-screen").hidden = true;
  $("workspace").hidden = false;
  $("session").hidden = false;
  $("sign-out").hidden = !state.authRequired;
  $("new-collection").hidden = !collections.all_collections;
  const names = collections.items.map((item) => item.name);
  if (collections.all_collections && !names.includes("default")) names.unshift("default");
  const remembered = sessionStorage.getItem(COLLECTION_STORAGE);
  fillCollections(names, names.includes(remembered) ? remembered : names[0]);
  document.body.dataset.state = "ready";
  if (!names.length) setStatus("This key may use no collection.", "error");
}

function fillCollections(names, chosen) {
  const select = $("collection");
  select.replaceChildren(...names.map((name) => element("option", { text: name })));
  if (chosen) {
    select.value = chosen;
    openCollection(chosen);
  }
}

$("collection").addEventListener("change", () => openCollection($("collection").value));

$("new-collection").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("new-collection-name").value.trim();
  const select = $("collection");
  if (![...select.options].some((option) => option.value === name)) {
    select.append(element("option", { text: name }));
  }
  select.value = name;
  $("new-collection-name").value = "";
  openCollection(name);
});

function openCollection(name) {
  state.collection = name;
  sessionStorage.setItem(COLLECTION_STORAGE, name);
  state.selected = null;
  $("detail").hidden = true;
  loadSubjects(true);
}

// --- subjects and thumbnails ---------------------------------------------------------------

async function thumbnail(faceId) {
  const image = element("img", { className: "thumb" });
  image.alt = "";
  try {
    const blob = await api("GET", `/faces/${segment(faceId)}/crop`, { params: inCollection(), raw: true });
    const url = URL.createObjectURL(blob);
    state.thumbs.push(url);
    image.src = url;
  } catch {
    image.title = "no stored crop";
  }
  return image;
}

async function loadSubjects(fromStart) {
  if (fromStart) {
    state.offset = 0;
    state.thumbs.forEach((url) => URL.revokeObjectURL(url));
    state.thumbs = [];
    $("subjects").replaceChildren();
  }
  let page;
  try {
    page = await api("GET", "/subjects", { params: inCollection({ limit: PAGE_SIZE, offset: state.offset }) });
  } catch (error) {
    setStatus(explain(error), "error");
    return;
  }
  state.total = page.total;
  state.offset += page.items.length;
  $("subject-total").textContent = `(${page.total})`;
  $("more").hidden = state.offset >= page.total;
  for (const subject of page.items) $("subjects").append(subjectRow(subject));
  applyFilter();
  $("subjects").dataset.loaded = String(state.offset);
}

function subjectRow(subject) {
  const image = element("img", { className: "thumb" });
  image.alt = "";
  const row = element(
    "li",
    { dataset: { subject: subject.subject } },
    image,
    element("span", { text: subject.subject, className: "name" }),
    element("span", { text: `${subject.face_count} face${subject.face_count === 1 ? "" : "s"}`, className: "count" }),
  );
  row.addEventListener("click", () => showSubject(subject.subject));
  // The first face's crop as the subject's picture (one extra request per subject).
  api("GET", `/subjects/${segment(subject.subject)}`, { params: inCollection() })
    .then(async (detail) => {
      if (detail.faces.length) image.replaceWith(await thumbnail(detail.faces[0].face_id));
    })
    .catch(() => {});
  return row;
}

$("more").addEventListener("click", () => loadSubjects(false));
$("filter").addEventListener("input", applyFilter);

function applyFilter() {
  const needle = $("filter").value.trim().toLowerCase();
  for (const row of $("subjects").children) {
    row.hidden = needle !== "" && !row.dataset.subject.toLowerCase().includes(needle);
  }
}

async function showSubject(name) {
  let detail;
  try {
    detail = await api("GET", `/subjects/${segment(name)}`, { params: inCollection() });
  } catch (error) {
    setStatus(explain(error), "error");
    return;
  }
  state.selected = name;
  for (const row of $("subjects").children) row.classList.toggle("selected", row.dataset.subject === name);
  $("detail").hidden = false;
  $("detail").dataset.subject = name;
  $("detail-name").textContent = name;
  const faces = await Promise.all(detail.faces.map(async (face) => {
    const remove = element("button", { text: "delete", className: "danger" });
    remove.type = "button";
    remove.addEventListener("click", () => deleteFace(face.face_id, name));
    return element("li", { dataset: { faceId: face.face_id } }, await thumbnail(face.face_id),
      element("span", { text: new Date(face.created_at).toLocaleDateString() }), remove);
  }));
  $("detail-faces").replaceChildren(...faces);
}

// --- deletion, always confirmed ---------------------------------------------------------------

function confirmDelete(text) {
  // Answered by the button pressed (or Escape), never by a later "close" event: a close
  // still queued from the previous question must not answer this one.
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const answer = (confirmed) => (event) => {
      event.preventDefault();
      $("confirm-ok").removeEventListener("click", yes);
      $("confirm-cancel").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      dialog.close();
      resolve(confirmed);
    };
    const yes = answer(true);
    const no = answer(false);
    $("confirm-ok").addEventListener("click", yes);
    $("confirm-cancel").addEventListener("click", no);
    dialog.addEventListener("cancel", no);
    dialog.showModal();
  });
}

$("delete-subject").addEventListener("click", async () => {
  const name = state.selected;
  if (!name || !(await confirmDelete(`Delete ${name} and all their faces from ${state.collection}?`))) return;
  try {
    const result = await api("DELETE", `/subjects/${segment(name)}`, { params: inCollection() });
    setStatus(`Deleted ${name} (${result.deleted_faces} faces).`, "ok");
    $("detail").hidden = true;
    state.selected = null;
    loadSubjects(true);
  } catch (error) {
    setStatus(explain(error), "error");
  }
});

async function deleteFace(faceId, name) {
  if (!(await confirmDelete(`Delete this face of ${name}?`))) return;
  try {
    await api("DELETE", `/faces/${segment(faceId)}`, { params: inCollection() });
    setStatus(`Deleted a face of ${name}.`, "ok");
    loadSubjects(true);
    showSubject(name).catch(() => {});
  } catch (error) {
    setStatus(explain(error), "error");
  }
}

// --- enrollment ----------------------------------------------------------------------------

$("enroll-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("enroll-result");
  const form = new FormData();
  form.append("subject", $("enroll-name").value.trim());
  for (const file of $("enroll-files").files) form.append("images", file, file.name);
  form.append("face_policy", $("enroll-largest").checked ? "largest" : "single");
  form.append("strict", $("enroll-strict").checked ? "true" : "false");
  result.dataset.state = "busy";
  result.replaceChildren(element("p", { text: "Enrolling…" }));
  $("enroll-submit").disabled = true;
  try {
    const answer = await api("POST", "/enroll", { params: inCollection(), body: form });
    result.replaceChildren(enrollReport(answer));
    result.dataset.state = "ok";
    $("enroll-form").reset();
    await loadSubjects(true);
  } catch (error) {
    result.replaceChildren(failureReport(error));
    result.dataset.state = "error";
  } finally {
    $("enroll-submit").disabled = false;
  }
});

function enrollReport(answer) {
  const list = element("ul");
  for (const face of answer.faces) {
    const quality = `quality ${face.quality.score.toFixed(2)}`;
    const reasons = face.quality.reasons.length ? ` (${face.quality.reasons.join(", ")})` : "";
    list.append(element("li", { className: "ok", dataset: { outcome: "enrolled" },
      text: `✓ ${face.created ? "enrolled" : "already enrolled"}: ${quality}${reasons}` }));
  }
  for (const rejected of answer.rejected) {
    list.append(element("li", { className: "rejected", dataset: { outcome: "rejected", code: rejected.code },
      text: `✗ ${rejected.image}: ${rejected.message} [${rejected.code}]` }));
  }
  for (const warning of answer.warnings) {
    list.append(element("li", { className: "warning", dataset: { outcome: "warning", code: warning.code },
      text: `⚠ ${warning.image} looks like ${warning.subject} (similarity ${warning.similarity.toFixed(2)})` }));
  }
  return element("div", {}, element("p", { text: `${answer.subject}: ${answer.faces.length} face(s) enrolled in ${answer.collection}` }), list);
}

function failureReport(error) {
  const list = element("ul");
  const rejected = (error.details && error.details.rejected) || [];
  for (const item of rejected) {
    list.append(element("li", { className: "rejected", dataset: { outcome: "rejected", code: item.code },
      text: `✗ ${item.image}: ${item.message} [${item.code}]` }));
  }
  for (const match of (error.details && error.details.matches) || []) {
    list.append(element("li", { className: "warning", dataset: { outcome: "refused", code: error.code },
      text: `⚠ ${match.image} matches ${match.subject} (similarity ${match.similarity.toFixed(2)})` }));
  }
  return element("div", {}, element("p", { className: "rejected", text: `Nothing enrolled: ${explain(error)}` }), list);
}

// --- identification of a dropped photo --------------------------------------------------------

const zone = $("drop-zone");
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("over");
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) identify(file);
});
$("identify-file").addEventListener("change", () => {
  const file = $("identify-file").files[0];
  if (file) identify(file);
});

async function identify(file) {
  const result = $("identify-result");
  result.dataset.state = "busy";
  result.replaceChildren(element("li", { text: `Looking at ${file.name}…` }));
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const [answer, bitmap] = await Promise.all([
      api("POST", "/identify", { params: inCollection({ top_k: 3 }), body: form }),
      createImageBitmap(file, { imageOrientation: "from-image" }),
    ]);
    drawFaces(bitmap, answer.faces);
    result.replaceChildren(...answer.faces.map(faceLine));
    if (!answer.faces.length) result.replaceChildren(element("li", { text: "No face in this photo." }));
    result.dataset.state = "ok";
  } catch (error) {
    result.replaceChildren(element("li", { className: "rejected", text: explain(error) }));
    result.dataset.state = "error";
  }
}

function faceLine(face, index) {
  const name = face.match ? face.match.subject : "unknown";
  const detail = face.match
    ? `similarity ${face.match.similarity.toFixed(2)}`
    : face.candidates.length ? `closest ${face.candidates[0].subject} (${face.candidates[0].similarity.toFixed(2)})` : "";
  return element("li", { dataset: { subject: face.match ? face.match.subject : "" } },
    element("b", { text: String(index + 1) }),
    element("span", { text: name, className: face.match ? "ok" : "warning" }),
    element("span", { text: `${detail}, quality ${face.quality.score.toFixed(2)}` }));
}

function drawFaces(bitmap, faces) {
  const canvas = $("identify-canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.hidden = false;
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const stroke = Math.max(2, Math.round(bitmap.width / 300));
  context.lineWidth = stroke;
  context.font = `${Math.max(14, stroke * 7)}px system-ui, sans-serif`;
  faces.forEach((face, index) => {
    const [x1, y1, x2, y2] = face.bbox;
    const colour = face.match ? BOX_MATCH : BOX_UNKNOWN;
    const label = `${index + 1} ${face.match ? face.match.subject : "unknown"}`;
    context.strokeStyle = colour;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const width = context.measureText(label).width + 8;
    const height = parseInt(context.font, 10) + 6;
    const top = y1 > height ? y1 - height : y2;
    context.fillStyle = colour;
    context.fillRect(x1 - stroke / 2, top, width, height);
    context.fillStyle = "#fff";
    context.fillText(label, x1 + 4, top + height - 6);
  });
  canvas.dataset.faces = String(faces.length);
}

start();
