// difflane playground: plain JavaScript against the /v1 API, no framework, no build step.
// Everything the page shows comes from the API with the caller's own credentials; text from the
// API is only ever set with textContent, never as HTML.
"use strict";

const API = new URL("../", location.href); // the page lives at <base>/ui/
const PAGE_SIZE = 8;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const RECONNECTS = 5;

const $ = (selector, root = document) => root.querySelector(selector);
const ui = {
  auth: "none",
  models: new Map(),
  cursors: [null], // cursors[i] opens gallery page i
  page: 0,
  blobUrls: [], // object URLs of the gallery's images, revoked when it is redrawn
};

// --- talking to the API ----------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.field = error.field || null;
    this.retryAfter = retryAfter;
  }
}

function credentials(extra = {}) {
  const headers = { ...extra };
  if (ui.auth === "none") {
    const principal = $("#principal").value.trim();
    if (principal) headers["X-Difflane-Principal"] = principal;
  } else {
    const token = $("#token").value.trim();
    if (token) headers["Authorization"] = `Bearer ${token}`;
  }
  return headers;
}

async function api(path, options = {}) {
  const response = await fetch(new URL(path, API), { ...options, headers: credentials(options.headers) });
  if (response.ok) return response.json();
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  throw new ApiError(response.status, body, response.headers.get("Retry-After"));
}

function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function describe(error) {
  if (!(error instanceof ApiError)) return `cannot reach the API: ${error.message}`;
  const wait = error.retryAfter ? ` (retry in ${error.retryAfter} s)` : "";
  return `${error.message}${wait}`;
}

// Credential problems belong next to the credential field, wherever they happened.
function showIdentityError(error) {
  const isAuth = error instanceof ApiError && (error.status === 401 || error.status === 403);
  $("#identity-error").textContent = isAuth ? describe(error) : "";
  return isAuth;
}

// --- the form --------------------------------------------------------------------------------

const FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "num_images"];
const NUMBERS = new Set(["width", "height", "steps", "guidance_scale", "seed", "num_images"]);
const MAX_SEED = 2 ** 53 - 1;

async function loadModels() {
  const select = $("#model");
  try {
    const { models } = await api("v1/models");
    showIdentityError(null);
    const previous = select.value;
    select.replaceChildren();
    ui.models.clear();
    for (const model of models) {
      ui.models.set(model.name, model);
      select.append(new Option(`${model.name} (${model.lane})`, model.name));
    }
    if (ui.models.has(previous)) select.value = previous;
    applyModel(true);
  } catch (error) {
    if (!showIdentityError(error)) showError("model", describe(error));
  }
}

function currentModel() {
  return ui.models.get($("#model").value);
}

// The model's limits become the inputs' bounds, and its defaults their values.
function applyModel(resetValues) {
  const model = currentModel();
  if (!model) return;
  const { limits: l, defaults: d } = model;
  const bounds = {
    width: { max: l.max_width },
    height: { max: l.max_height },
    steps: { min: l.min_steps, max: l.max_steps },
    guidance_scale: { max: l.max_guidance_scale },
    num_images: { max: l.max_images },
    seed: { max: MAX_SEED },
  };
  for (const [name, attrs] of Object.entries(bounds)) {
    for (const [attr, value] of Object.entries(attrs)) $(`#${name}`).setAttribute(attr, value);
  }
  $("#prompt").maxLength = l.max_prompt_chars;
  $("#negative_prompt").maxLength = l.max_prompt_chars;
  if (resetValues) {
    $("#width").value = d.width;
    $("#height").value = d.height;
    $("#steps").value = d.steps;
    $("#guidance_scale").value = d.guidance_scale;
    $("#negative_prompt").value = d.negative_prompt;
  }
  $("#model-limits").textContent =
    `up to ${l.max_width}×${l.max_height} (${l.max_pixels.toLocaleString("en")} pixels), ` +
    `steps ${l.min_steps}–${l.max_steps}, guidance ≤ ${l.max_guidance_scale}, ` +
    `${l.max_images} image(s), prompt ≤ ${l.max_prompt_chars} characters`;
}

function readForm() {
  const body = { model: $("#model").value };
  for (const name of FIELDS) {
    const raw = $(`#${name}`).value;
    if (raw.trim() === "") continue;
    body[name] = NUMBERS.has(name) ? Number(raw) : raw;
  }
  return body;
}

// The same limits the API checks, so most mistakes never leave the page.
function checkLimits(body) {
  const model = currentModel();
  if (!model) return ["model", "choose a model"];
  const l = model.limits;
  const integer = (v) => v === undefined || Number.isInteger(v);
  const rules = [
    ["prompt", body.prompt && body.prompt.trim() !== "", "a prompt is required"],
    ["prompt", !body.prompt || body.prompt.length <= l.max_prompt_chars, `at most ${l.max_prompt_chars} characters`],
    ["width", integer(body.width) && (body.width ?? 8) % 8 === 0, "width must be a multiple of 8"],
    ["height", integer(body.height) && (body.height ?? 8) % 8 === 0, "height must be a multiple of 8"],
    ["width", (body.width ?? 0) <= l.max_width, `width must be at most ${l.max_width}`],
    ["height", (body.height ?? 0) <= l.max_height, `height must be at most ${l.max_height}`],
    [
      "width",
      (body.width ?? model.defaults.width) * (body.height ?? model.defaults.height) <= l.max_pixels,
      `width × height must be at most ${l.max_pixels} pixels`,
    ],
    [
      "steps",
      body.steps === undefined || (integer(body.steps) && body.steps >= l.min_steps && body.steps <= l.max_steps),
      `steps must be ${l.min_steps}..${l.max_steps}`,
    ],
    [
      "guidance_scale",
      body.guidance_scale === undefined || (body.guidance_scale >= 0 && body.guidance_scale <= l.max_guidance_scale),
      `guidance must be 0..${l.max_guidance_scale}`,
    ],
    ["seed", body.seed === undefined || (integer(body.seed) && body.seed >= 0 && body.seed <= MAX_SEED), "seed must be a whole number ≥ 0"],
    [
      "num_images",
      body.num_images === undefined || (integer(body.num_images) && body.num_images >= 1 && body.num_images <= l.max_images),
      `images must be 1..${l.max_images}`,
    ],
  ];
  const broken = rules.find(([, ok]) => !ok);
  return broken ? [broken[0], broken[2]] : null;
}

function clearErrors() {
  for (const el of document.querySelectorAll("#job-form .field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#job-form [aria-invalid]")) el.removeAttribute("aria-invalid");
}

// An error naming a field goes next to it; anything else under the button.
function showError(field, message) {
  const name = (field || "").split(".")[0];
  const slot = name ? $(`#job-form .field-error[data-field="${CSS.escape(name)}"]`) : null;
  (slot || $("#form-error")).textContent = message;
  const input = name ? document.getElementById(name) : null;
  if (slot && input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

async function submitJob(event) {
  event.preventDefault();
  clearErrors();
  const body = readForm();
  const broken = checkLimits(body);
  if (broken) {
    showError(...broken);
    return;
  }
  const button = $("#submit");
  button.disabled = true;
  try {
    const job = await api("v1/jobs", {
      method: "POST",
      headers: { "content-type": "application/json", "Idempotency-Key": idempotencyKey() },
      body: JSON.stringify(body),
    });
    follow(addActiveCard(job), job);
    refreshGallery();
  } catch (error) {
    if (!showIdentityError(error)) showError(error.field, describe(error));
  } finally {
    button.disabled = false;
  }
}

function runAgain(job, seed) {
  $("#model").value = job.model;
  applyModel(false);
  for (const name of FIELDS) $(`#${name}`).value = job[name] ?? "";
  $("#seed").value = seed;
  $("#num_images").value = 1;
  $("#job-form").requestSubmit();
}

// --- job cards -------------------------------------------------------------------------------

function newCard(job) {
  const card = $("#job-card").content.firstElementChild.cloneNode(true);
  card.dataset.jobId = job.id;
  $(".job-id", card).textContent = `…${job.id.slice(-8)}`; // a UUIDv7 starts with its timestamp: the end tells jobs apart
  $(".job-id", card).title = job.id;
  $(".cancel", card).addEventListener("click", () => cancelJob(card, job.id));
  renderJob(card, job);
  return card;
}

function addActiveCard(job) {
  const active = $("#active");
  $(".empty", active)?.remove();
  const card = newCard(job);
  active.prepend(card);
  return card;
}

function renderJob(card, job) {
  card.dataset.state = job.state;
  card.job = job;
  $(".state", card).textContent = job.cancel_requested && !TERMINAL.has(job.state) ? "cancelling" : job.state;
  $(".prompt", card).textContent = job.prompt;
  $(".cancel", card).hidden = TERMINAL.has(job.state);
  renderProgress(card, job.progress.step, job.progress.total, job);
  $(".job-error", card).textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  if (TERMINAL.has(job.state)) renderParams(card, job);
  if (job.state === "succeeded" && !card.dataset.imagesShown) {
    card.dataset.imagesShown = "1";
    renderImages(card, job);
  }
}

function renderProgress(card, step, total, job) {
  const bar = $("progress", card);
  bar.max = total || 1;
  bar.value = job && job.state === "succeeded" ? bar.max : step;
  bar.hidden = job ? TERMINAL.has(job.state) : false;
  let label = `step ${step}/${total}`;
  if (job && job.state === "queued") {
    const position = job.queue && job.queue.position;
    label = position ? `queued, position ${position}` : "queued";
  }
  $(".progress-label", card).textContent = job && TERMINAL.has(job.state) ? "" : label;
}

const seconds = (v) => (v === null || v === undefined ? null : `${v.toFixed(2)} s`);

function renderParams(card, job) {
  const m = job.metrics || {};
  const rows = [
    ["model", job.model],
    ["size", `${job.width}×${job.height}`],
    ["steps", job.steps],
    ["guidance", job.guidance_scale],
    ["seed", job.seed],
    ["negative", job.negative_prompt || null],
    ["queued", seconds(m.queue_wait_s)],
    ["load", seconds(m.load_s)],
    ["run", seconds(m.execution_s)],
    ["batch", m.batch_size ?? null],
    ["device", m.device ?? null],
    ["created", job.created_at],
    ["finished", job.finished_at],
  ];
  const list = $(".params", card);
  list.replaceChildren();
  for (const [name, value] of rows) {
    if (value === null || value === undefined || value === "") continue;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dd.dataset.param = name;
    list.append(dt, dd);
  }
}

async function imageSource(url) {
  // A signed URL of the result storage needs no credentials; our own output route does.
  if (new URL(url, API).origin !== location.origin) return url;
  const response = await fetch(url, { headers: credentials() });
  if (!response.ok) throw new ApiError(response.status, null, null);
  const objectUrl = URL.createObjectURL(await response.blob());
  ui.blobUrls.push(objectUrl);
  return objectUrl;
}

function renderImages(card, job) {
  const box = $(".images", card);
  box.replaceChildren();
  for (const output of job.outputs) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = `output ${output.index} of job ${job.id} (seed ${output.seed})`;
    img.width = output.width;
    img.height = output.height;
    imageSource(output.url).then(
      (src) => (img.src = src),
      (error) => (img.alt = `could not load: ${describe(error)}`),
    );
    const caption = document.createElement("figcaption");
    caption.textContent = `seed ${output.seed} `;
    const again = document.createElement("button");
    again.type = "button";
    again.className = "again";
    again.textContent = "Run again with this seed";
    again.addEventListener("click", () => runAgain(job, output.seed));
    caption.append(again);
    figure.append(img, caption);
    box.append(figure);
  }
}

async function cancelJob(card, jobId) {
  try {
    renderJob(card, await api(`v1/jobs/${jobId}/cancel`, { method: "POST" }));
  } catch (error) {
    if (!showIdentityError(error)) $(".job-error", card).textContent = describe(error);
  }
}

// --- the event stream ------------------------------------------------------------------------

// EventSource cannot send an Authorization header, so the stream is read with fetch and parsed
// here; Last-Event-ID resumes it after a dropped connection without losing a step.
async function follow(card, job) {
  let lastId = null;
  for (let attempt = 0; attempt < RECONNECTS && !TERMINAL.has(card.job.state); attempt++) {
    try {
      const headers = lastId ? { "Last-Event-ID": lastId } : {};
      const response = await fetch(new URL(`v1/jobs/${job.id}/events`, API), { headers: credentials(headers) });
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null), null);
      for await (const event of readEvents(response.body)) {
        if (event.id) lastId = event.id;
        if (event.type === "state") renderJob(card, event.data);
        else if (event.type === "progress") renderProgress(card, event.data.step, event.data.total, null);
        else if (event.type === "error") throw new ApiError(503, { error: event.data }, null);
      }
    } catch (error) {
      if (error instanceof ApiError && error.status < 500) {
        $(".job-error", card).textContent = describe(error);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
    }
  }
  if (!TERMINAL.has(card.job.state)) {
    try {
      renderJob(card, await api(`v1/jobs/${job.id}`)); // the stream kept failing: read it once
    } catch (error) {
      $(".job-error", card).textContent = describe(error);
    }
  }
  refreshGallery();
}

async function* readEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, type: "message", data: [] };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "id") event.id = text;
        else if (name === "event") event.type = text;
        else if (name === "data") event.data.push(text);
      }
      if (event.data.length) yield { ...event, data: JSON.parse(event.data.join("\n")) };
    }
  }
}

// --- the gallery -----------------------------------------------------------------------------

async function refreshGallery() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const stateFilter = $("#state-filter").value;
  if (stateFilter) params.set("state", stateFilter);
  const cursor = ui.cursors[ui.page];
  if (cursor) params.set("cursor", cursor);
  try {
    const page = await api(`v1/jobs?${params}`);
    $("#gallery-error").textContent = "";
    for (const url of ui.blobUrls.splice(0)) URL.revokeObjectURL(url);
    const gallery = $("#gallery");
    gallery.replaceChildren(...page.jobs.map(newCard));
    if (!page.jobs.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = stateFilter ? `no ${stateFilter} jobs` : "no jobs yet";
      gallery.append(empty);
    }
    ui.cursors[ui.page + 1] = page.next_cursor;
    $("#older").disabled = !page.next_cursor;
    $("#newer").disabled = ui.page === 0;
    $("#page-label").textContent = `page ${ui.page + 1}`;
  } catch (error) {
    if (!showIdentityError(error)) $("#gallery-error").textContent = describe(error);
  }
}

function resetGallery() {
  ui.cursors = [null];
  ui.page = 0;
  refreshGallery();
}

// --- start -----------------------------------------------------------------------------------

function rememberIdentity() {
  sessionStorage.setItem("difflane.token", $("#token").value.trim()); // a token dies with the tab
  localStorage.setItem("difflane.principal", $("#principal").value.trim());
  loadModels();
  resetGallery();
}

async function start() {
  try {
    const config = await (await fetch(new URL("ui/config.json", API))).json();
    ui.auth = config.auth;
  } catch {
    ui.auth = "none";
  }
  $("#token-row").hidden = ui.auth === "none";
  $("#principal-row").hidden = ui.auth !== "none";
  $("#token").value = sessionStorage.getItem("difflane.token") || "";
  $("#principal").value = localStorage.getItem("difflane.principal") || "";
  $("#token").addEventListener("change", rememberIdentity);
  $("#principal").addEventListener("change", rememberIdentity);
  $("#model").addEventListener("change", () => applyModel(true));
  $("#job-form").addEventListener("submit", submitJob);
  $("#state-filter").addEventListener("change", resetGallery);
  $("#refresh").addEventListener("click", refreshGallery);
  $("#older").addEventListener("click", () => {
    ui.page += 1;
    refreshGallery();
  });
  $("#newer").addEventListener("click", () => {
    ui.page = Math.max(0, ui.page - 1);
    refreshGallery();
  });
  await loadModels();
  await refreshGallery();
  document.body.dataset.ready = "1"; // tests wait for this
}

start();
