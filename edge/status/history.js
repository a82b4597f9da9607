// The history page: recent items from the event log, filterable, with the running model's panel.
// Every piece of data reaches the DOM as text; labelling uses the same token and same-origin rule as the kiosk.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "ecosorter-token";
const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
const kioskToken = meta("ecosorter-token").startsWith("{{") ? "" : meta("ecosorter-token");
const actions = new Set(meta("ecosorter-actions").split(" ").filter((a) => a && !a.startsWith("{{")));
const own = (obj, key) => (obj && Object.hasOwn(obj, key) ? obj[key] : undefined);
const FLAGS = {uncertain: ["tidak yakin", "uncertain", ""], flagged: ["ditandai", "flagged", ""],
               wrong: ["salah", "wrong", "bad"], not_routed: ["tidak disortir", "not routed", "bad"],
               rerouted: ["dialihkan", "rerouted", ""]};

let labels = {}, before = null;

function el(tag, cls, ...kids) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.append(...kids);
  return e;
}

function name(label) {
  const n = own(labels, label);
  return typeof n === "string" ? n : String(label);
}

function token() {
  return kioskToken || localStorage.getItem(TOKEN_KEY) || "";
}

async function act(path, body) {
  try {
    const r = await fetch(path, {method: "POST", credentials: "same-origin", cache: "no-store",
      headers: {"Content-Type": "application/json", "X-EcoSorter-Token": token()}, body: JSON.stringify(body)});
    if (r.status === 403 && !kioskToken) {
      $("tokenwhy").textContent = "Masukkan kode dari pemilik bin / Enter the token from the bin's owner";
      $("tokenbox").hidden = false;
    }
    return r.ok;
  } catch (e) {
    return false;
  }
}

function filters() {
  const q = new URLSearchParams();
  if ($("class").value) q.set("class", $("class").value);
  if ($("wrong").checked) q.set("wrong", "1");
  return q;
}

function pct(x) {
  return `${(100 * Number(x)).toFixed(1)}%`;
}

// ------------------------------------------------------------------ the model panel
async function drawModel() {
  const m = await (await fetch("/api/model", {cache: "no-store"})).json();
  const v = m.verification || {}, src = m.source || {}, trust = m.trust || {};
  const rows = [
    ["Berkas / File", `${m.file || "?"} (sha256 ${String(m.sha256 || "").slice(0, 12)})`],
    ["Versi / Version", String(m.version ?? 0)],
    ["Dipasang / Installed", m.installed || "?"],
    ["Runtime", m.runtime || "?"],
    ["Sumber / Source", [src.file, src.format, src.keras || src.tensorflow, src.quantization].filter(Boolean).join(" · ") || "?"],
    ["Verifikasi / Verification", v.images ? `${v.images} foto / photos: Keras ${pct(v.keras_accuracy)}, ` +
      `TFLite ${pct(v.tflite_accuracy)}, sepakat / agreement ${pct(v.agreement)}` : "tidak ada / none recorded"],
  ];
  const dl = $("modelinfo");
  dl.replaceChildren();
  for (const [k, val] of rows) dl.append(el("dt", "", k), el("dd", "", val));
  // verified / signed: shown as the manifest says, or said to be unrecorded
  for (const [key, id, en] of [["verified", "Terverifikasi", "Verified"], ["signed", "Bertanda tangan", "Signed"]]) {
    const has = Object.hasOwn(trust, key);
    const val = own(trust, key);
    const yes = val === true || (typeof val === "string" && val !== "");
    dl.append(el("dt", "", `${id} / ${en}`),
      el("dd", has ? (yes ? "yes" : "no") : "", has ? (yes ? `ya / yes${typeof val === "string" ? ` (${val})` : ""}`
        : "tidak / no") : "tidak tercatat / not recorded"));
  }
}

// ------------------------------------------------------------------ the items
function row(it) {
  const img = it.photo ? el("img") : el("span", "none", "tanpa foto / no photo");
  if (it.photo) {
    img.src = `/api/history/photo/${encodeURIComponent(it.id)}.jpg`;
    img.alt = name(it.label);
    img.loading = "lazy";
  }
  const when = new Date(it.time);
  const time = isNaN(when) ? String(it.time) : when.toLocaleString("id-ID", {dateStyle: "short", timeStyle: "medium"});
  const truth = el("td");
  if (actions.has("label")) {
    const pick = el("select");
    pick.append(el("option", "", "—"));
    for (const id of Object.keys(labels)) {
      const o = el("option", "", name(id));
      o.value = id;
      o.selected = it.true_label === id;
      pick.append(o);
    }
    pick.dataset.id = it.id;
    pick.onchange = async () => {
      if (pick.value && await act(`/api/label/${encodeURIComponent(it.id)}`, {label: pick.value})) pick.classList.add("saved");
    };
    truth.append(pick);
  } else {
    truth.append(it.true_label ? name(it.true_label) : "—");
  }
  const tags = el("td");
  for (const f of it.flags || []) {
    const [id, en, cls] = own(FLAGS, f) || [String(f), String(f), ""];
    tags.append(el("span", cls ? `tag ${cls}` : "tag", `${id} / ${en}`));
  }
  const tr = el("tr", (it.flags || []).includes("wrong") || (it.flags || []).includes("flagged") ? "wrong" : "",
    el("td", "", img), el("td", "", time), el("td", "", name(it.label)), el("td", "", pct(it.confidence)),
    el("td", "", it.routed_to >= 0 ? String(it.compartment_name) : "—"), truth, tags);
  tr.dataset.id = it.id;
  tr.dataset.kind = it.true_label || it.label;  // what the class filter matches
  return tr;
}

async function load(more) {
  const q = filters();
  if (more && before !== null) q.set("before", String(before));
  const r = await fetch(`/api/history?${q}`, {cache: "no-store"});
  const data = await r.json();
  const rows = (data.items || []).map(row);
  if (more) $("rows").append(...rows);
  else $("rows").replaceChildren(...rows);
  const items = data.items || [];
  before = items.length ? items[items.length - 1].seq : before;
  $("more").hidden = !data.more;
  $("empty").hidden = $("rows").children.length > 0;
  document.body.dataset.loaded = String($("rows").children.length);
}

async function start() {
  const s = await (await fetch("/api/status", {cache: "no-store"})).json();
  labels = s.labels || {};
  const params = new URLSearchParams(location.search);
  for (const id of Object.keys(labels)) {
    const o = el("option", "", name(id));
    o.value = id;
    $("class").append(o);
  }
  $("class").value = Object.hasOwn(labels, params.get("class") || "") ? params.get("class") : "";
  $("wrong").checked = params.get("wrong") === "1";
  const refresh = () => {
    history.replaceState(null, "", `/history${filters().size ? `?${filters()}` : ""}`);
    before = null;
    load(false);
  };
  $("class").onchange = refresh;
  $("wrong").onchange = refresh;
  $("more").onclick = () => load(true);
  await Promise.all([drawModel(), load(false)]);
}

$("tokenbox").onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  $("tokenbox").hidden = true;
};

start();
