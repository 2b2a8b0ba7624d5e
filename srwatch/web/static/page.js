// srwatch status page: polls api/status every 2 s and refreshes the page in place; uploads
// through the drop zone to POST upload and follows each file until it is done or quarantined.
// No framework and no network beyond this server. Text goes in with textContent only (file
// names come from users); new rows are clones of the page's <template> elements.
"use strict";

const POLL_MS = 2000;
const uploads = [];  // {row, name, savedAs, since, entry}
const matched = new Set();  // ids of finished entries already shown against an upload

// -- formats (the template's filters in srwatch/web/app.py do the same) -----------------------
function duration(value) {
  const total = Math.floor(Number(value) || 0);
  if (total < 60) return `${Math.round(Number(value) || 0)} s`;
  if (total < 3600) return `${Math.floor(total / 60)} min ${total % 60} s`;
  return `${Math.floor(total / 3600)} h ${Math.floor((total % 3600) / 60)} min`;
}
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");
const seconds = (s) => (s == null ? "" : `${Number(s).toFixed(2)} s`);
function sizes(e) {
  if (!e.input_size || !e.output_size) return "";
  return `${e.input_size[0]}\u00d7${e.input_size[1]} \u2192 ${e.output_size[0]}\u00d7${e.output_size[1]}`;
}
const FORMATS = {at: clock, seconds: seconds, sizes: (_v, e) => sizes(e)};

function show(value) {
  return value == null ? "" : String(value);
}

function lookup(data, key) {
  return key.split(".").reduce((obj, k) => (obj == null ? undefined : obj[k]), data);
}

// -- rows ---------------------------------------------------------------------------------------
function fill(node, entry) {
  for (const el of node.querySelectorAll("[data-field]")) {
    const field = el.dataset.field;
    const format = FORMATS[field];
    el.textContent = format ? format(entry[field], entry) : show(entry[field]);
  }
  if (node.dataset.state !== undefined && entry.state !== undefined) node.dataset.state = entry.state;
}

function clone(templateId) {
  return document.getElementById(templateId).content.firstElementChild.cloneNode(true);
}

// Keep existing rows (a slider being moved, images already loaded), add new ones, drop old ones.
function syncList(list, entries, templateId, key, after) {
  const existing = new Map([...list.children].map((el) => [el.dataset.id, el]));
  const rows = entries.map((entry) => {
    let row = existing.get(String(entry[key]));
    const fresh = !row;
    if (fresh) {
      row = clone(templateId);
      row.dataset.id = entry[key];
    }
    fill(row, entry);
    if (after) after(row, entry, fresh);
    return row;
  });
  const same = rows.length === list.children.length && rows.every((row, i) => list.children[i] === row);
  if (!same) list.replaceChildren(...rows);
}

// -- before/after ---------------------------------------------------------------------------------
function setupCompare(compare) {
  const slider = compare.querySelector(".slider");
  const after = compare.querySelector("img.after");
  const divider = compare.querySelector(".divider");
  const update = () => {
    after.style.clipPath = `inset(0 0 0 ${slider.value}%)`;
    divider.style.left = `${slider.value}%`;
  };
  slider.addEventListener("input", update);
  update();
}

function showPreview(compare, entry) {
  if (!entry.has_preview || !compare.hidden) return;
  const base = `preview/${encodeURIComponent(entry.id)}/`;
  compare.querySelector("img.before").src = base + "before.jpg";
  compare.querySelector("img.after").src = base + "after.jpg";
  compare.hidden = false;
}

// -- the chart ------------------------------------------------------------------------------------
function drawChart(lastHour) {
  const svg = document.getElementById("chart");
  const height = svg.viewBox.baseVal.height;
  const peak = Math.max(1, ...lastHour.map((m) => m.done + m.quarantined));
  svg.querySelectorAll("g.bar").forEach((bar, i) => {
    const m = lastHour[i];
    if (!m) return;
    const doneH = (height * m.done) / peak;
    const badH = (height * m.quarantined) / peak;
    const [done, bad] = bar.querySelectorAll("rect");
    done.setAttribute("y", height - doneH);
    done.setAttribute("height", doneH);
    bad.setAttribute("y", height - doneH - badH);
    bad.setAttribute("height", badH);
    bar.querySelector("title").textContent = `${clock(m.minute)}: ${m.done} done, ${m.quarantined} quarantined`;
  });
  document.getElementById("chart-peak").textContent = peak;
  document.getElementById("chart-total").textContent = lastHour.reduce((n, m) => n + m.done, 0);
}

// -- polling --------------------------------------------------------------------------------------
function render(status) {
  for (const el of document.querySelectorAll("[data-key]")) {
    const value = lookup(status, el.dataset.key);
    el.textContent = el.dataset.format === "duration" ? duration(value) : show(value);
  }
  document.getElementById("state").dataset.state = status.state;
  const paused = document.getElementById("paused");
  paused.replaceChildren(...status.paused.map((why) => Object.assign(document.createElement("li"), {textContent: why})));
  syncList(document.getElementById("workers"), status.workers, "tpl-worker", "name");
  syncList(document.getElementById("done-list"), status.recent_done, "tpl-done", "id", (row, entry, fresh) => {
    const compare = row.querySelector(".compare");
    if (fresh) setupCompare(compare);
    showPreview(compare, entry);
  });
  syncList(document.getElementById("quarantine-list"), status.recent_quarantined, "tpl-quarantined", "id");
  drawChart(status.last_hour);
  followUploads(status);
}

async function poll() {
  const note = document.getElementById("poll");
  try {
    const response = await fetch("api/status", {cache: "no-store"});
    if (!response.ok) throw new Error(response.statusText);
    render(await response.json());
    note.hidden = true;
  } catch (err) {
    note.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// -- uploads --------------------------------------------------------------------------------------
function setUpload(upload, state, status) {
  upload.row.dataset.state = state;
  upload.row.querySelector("[data-field=status]").textContent = status;
}

// The oldest finished entry for this upload's name since it was received, not already taken by another upload.
function findFinished(list, upload) {
  const found = list
    .filter((e) => e.rel === upload.savedAs && (!upload.profile || e.profile === upload.profile)
      && e.at >= upload.since - 1 && !matched.has(e.id))
    .sort((a, b) => a.at - b.at)[0];
  if (found) matched.add(found.id);
  return found;
}

function followUploads(status) {
  for (const upload of uploads) {
    if (!upload.savedAs || upload.entry) continue;
    const done = findFinished(status.recent_done, upload);
    const bad = done ? null : findFinished(status.recent_quarantined, upload);
    if (done) {
      upload.entry = done;
      setUpload(upload, "done", `done \u2192 ${done.output} (${sizes(done)}, ${seconds(done.seconds)})`);
      showPreview(upload.row.querySelector(".compare"), done);
    } else if (bad) {
      upload.entry = bad;
      setUpload(upload, "quarantined", `quarantined: ${bad.reason}: ${bad.message}`);
    } else if (status.workers.some((w) => w.job === upload.savedAs)) {
      setUpload(upload, "working", `in progress (as ${upload.savedAs})`);
    }
  }
}

function addUpload(name) {
  const row = clone("tpl-upload");
  row.querySelector("[data-field=name]").textContent = name;
  setupCompare(row.querySelector(".compare"));
  document.getElementById("uploads").prepend(row);
  const upload = {row, name, savedAs: null, since: 0, entry: null, profile: null};
  uploads.push(upload);
  setUpload(upload, "uploading", "uploading\u2026");
  return upload;
}

async function send(files) {
  if (!files.length) return;
  const tokenInput = document.getElementById("token");
  const token = tokenInput ? tokenInput.value : "";
  const profileSelect = document.getElementById("profile");  // only with several hot folders
  const target = profileSelect ? `upload?profile=${encodeURIComponent(profileSelect.value)}` : "upload";
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const pending = files.map((file) => addUpload(file.name));
  let response, body;
  try {
    response = await fetch(target, {method: "POST", body: form, headers: token ? {Authorization: `Bearer ${token}`} : {}});
    body = await response.json().catch(() => ({}));
  } catch (err) {
    pending.forEach((u) => setUpload(u, "refused", `not sent: ${err}`));
    return;
  }
  if (!response.ok) {
    pending.forEach((u) => setUpload(u, "refused", `refused (${response.status}): ${body.error || response.statusText}`));
    return;
  }
  body.files.forEach((saved, i) => {
    const upload = pending[i];
    upload.savedAs = saved.saved_as;
    upload.since = body.received_at;
    upload.profile = body.profile;
    upload.row.dataset.savedAs = saved.saved_as;
    setUpload(upload, "waiting", `in the inbox as ${saved.saved_as}, waiting`);
  });
}

function setupDropzone() {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  if (!zone || !input) return;
  input.addEventListener("change", () => {
    send([...input.files]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    send([...event.dataTransfer.files]);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("#done-list .compare").forEach(setupCompare);
  setupDropzone();
  poll();
});
