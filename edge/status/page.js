// The kiosk page. Every piece of data reaches the DOM as text (textContent / append of strings):
// names and details come from model manifests, configs and the network, never trusted as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 700;
const TOKEN_KEY = "ecosorter-token";
const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
const kioskToken = meta("ecosorter-token").startsWith("{{") ? "" : meta("ecosorter-token");
const actions = new Set(meta("ecosorter-actions").split(" ").filter((a) => a && !a.startsWith("{{")));

let snap = null, lastSeq = -1, lastId = null;
const drawn = {};  // what each part was last drawn from: redraw only on change (keeps touches and scroll)

function el(tag, cls, ...kids) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.append(...kids);  // strings become text nodes
  return e;
}

function changed(part, value) {
  const key = JSON.stringify(value);
  if (drawn[part] === key) return false;
  drawn[part] = key;
  return true;
}

// "Kaca (glass)" -> ["Kaca", "Glass"]; a name without English keeps one language.
const own = (obj, key) => (obj && Object.hasOwn(obj, key) ? obj[key] : undefined);  // data keys, never prototypes

function names(label) {
  const known = own(snap && snap.labels, label);
  const name = typeof known === "string" ? known : String(label);
  const m = name.match(/^(.*?)\s*\((.*)\)$/);
  if (!m) return [name, ""];
  return [m[1], m[2].charAt(0).toUpperCase() + m[2].slice(1)];
}

const both = (id, en) => (en && en !== id ? `${id} / ${en}` : id);
// A compartment as printed on the bin (hardware.compartment_names; numbered from 1 by default).
function binName(index) {
  const c = ((snap && snap.compartments) || []).find((x) => x.index === index);
  return c && typeof c.name === "string" ? c.name : String(index + 1);
}
const where = (n) => `→ Kompartemen\u00a0${binName(n)} / Compartment\u00a0${binName(n)}`;

// ------------------------------------------------------------------ the state word
function drawState(s) {
  const m = s.machine || {};
  const state = ["ready", "held", "fault"].includes(m.state) ? m.state : "ready";
  const fromRegistry = own(s.words, state) || ["", ""];  // edge/machine.py's STATE_WORDS
  const id = typeof m.word_id === "string" ? m.word_id : fromRegistry[0];
  const en = typeof m.word_en === "string" ? m.word_en : fromRegistry[1];
  document.body.dataset.state = state;
  $("word").textContent = both(String(id), String(en));
}

// ------------------------------------------------------------------ holds and faults
function drawBanners(machine) {
  if (!changed("banners", [machine, [...actions]])) return;
  const box = $("banners");
  box.replaceChildren();
  const entries = [...(machine.faults || []).map((e) => ["fault", e]), ...(machine.holds || []).map((e) => ["hold", e]),
    ...(machine.warnings || []).map((e) => ["warning", e])];
  if (!entries.length && machine.state === "fault") entries.push(["fault", {}]);
  if (!entries.length && machine.state === "held") entries.push(["hold", {}]);
  for (const [kind, e] of entries) {
    const badge = {fault: "Gangguan · Fault", hold: "Tunggu · Hold", warning: "Peringatan · Warning"}[kind];
    const reasonId = e.reason_id || (kind === "fault" ? "Bin berhenti" : "Bin menunggu");
    const reasonEn = e.reason_en || (kind === "fault" ? "The bin has stopped" : "The bin is waiting");
    const bin = e.compartment_name != null ? String(e.compartment_name)
      : Number.isInteger(e.compartment) ? String(e.compartment + 1) : "";
    const b = el("div", `banner ${kind}`,
      el("div", "kind", badge, ...(bin ? [el("br"), bin] : [])),
      el("div", "reason", reasonId, " / ", el("span", "en", reasonEn)));
    if (kind === "fault" && actions.has("clear_fault")) {
      const clear = el("button", "", "Sudah aman: lanjutkan / Fixed: resume");
      clear.type = "button";
      clear.onclick = () => act("/api/clear_fault");
      b.append(clear);
    }
    if (e.action_id || e.action_en) {
      b.append(el("div", "action", "→ ", e.action_id || "", " / ", el("span", "en", e.action_en || "")));
    }
    b.dataset.name = e.name || kind;
    box.append(b);
  }
}

// ------------------------------------------------------------------ the item on the tray
function cameraDown(s) {
  const link = s.links.camera, health = s.health.camera;
  if (link) return !["ok", "slow"].includes(link.state);
  return Boolean(health && !health.ok);
}

function idle(s) {
  const state = (s.machine || {}).state;
  if (cameraDown(s)) {
    const d = (s.links.camera || {}).detail || (s.health.camera || {}).detail || "";
    return ["camera", "Kamera mati", "Camera not working", "Jangan letakkan barang / Do not put items on the tray", d];
  }
  if (state === "fault") return ["fault", "Berhenti", "Stopped", "Lihat pesan di atas / See the message above", ""];
  if (state === "held") return ["wait", "Tunggu", "Please wait", "Lihat pesan di atas / See the message above", ""];
  return ["ready", "Siap", "Ready", "Letakkan barang di baki / Put an item on the tray", ""];
}

function drawItem(s) {
  const [mode, h1, en, conf, why] = idle(s);
  document.body.dataset.idle = mode;
  const last = s.last;
  const showItem = last && mode !== "camera";  // a stale photo while the camera is down would mislead
  document.body.dataset.shown = showItem ? "item" : "idle";
  if (!changed("item", [showItem ? last : null, mode, why])) return;
  const dest = $("dest");
  dest.className = "dest";
  if (!showItem) {
    $("photo").removeAttribute("src");
    $("label").textContent = h1; $("english").textContent = en; $("conf").textContent = conf;
    dest.textContent = ""; $("why").textContent = why;
    return;
  }
  const [id, english] = names(last.label);
  const pct = (100 * last.confidence).toFixed(0);
  if (last.uncertain) {  // the guess is not what the bin acted on: say so first, the guess smaller
    $("label").textContent = "Tidak yakin";
    $("english").textContent = "Uncertain";
    $("conf").textContent = `Mungkin / Maybe: ${both(id, english)} (${pct}%)`;
  } else {
    $("label").textContent = id;
    $("english").textContent = english;
    $("conf").textContent = `${pct}% yakin / confident`;
  }
  document.body.dataset.uncertain = last.uncertain ? "1" : "";
  let reason = "";
  if (last.routed_to < 0) {
    dest.classList.add("unrouted");
    dest.textContent = "TIDAK DISORTIR / NOT ROUTED";
    reason = last.note || "";
  } else if (last.uncertain) {
    dest.classList.add("uncertain");
    dest.textContent = where(last.routed_to);
    const [fid, fen] = names(binLabels(s, last.routed_to)[0] || "");
    reason = "Ke kompartemen cadangan / To the fallback compartment" + (fid ? ` (${both(fid, fen)})` : "");
  } else if (last.routed_to !== last.compartment) {
    dest.classList.add("rerouted");
    dest.textContent = where(last.routed_to);
    reason = `Dialihkan dari kompartemen ${last.compartment} / Rerouted from compartment ${last.compartment}`
      + (last.note ? ` (${last.note})` : "");
  } else {
    dest.textContent = where(last.routed_to);
  }
  $("why").textContent = reason;
  const kept = (s.recent || []).some((r) => r.id === last.id && r.photo);
  if (kept) $("photo").src = `/api/photo/${encodeURIComponent(last.id)}.jpg`;
  else $("photo").removeAttribute("src");
  $("photo").alt = both(id, english);
}

function binLabels(s, index) {
  return ((s.compartments || []).find((c) => c.index === index) || {labels: []}).labels;
}

// ------------------------------------------------------------------ compartments, counts, links
function drawBins(s) {
  if (!changed("bins", [s.compartments, s.labels, s.unrouted])) return;
  const tiles = s.compartments.map((c) => {
    const label = c.labels.map((lb) => names(lb)[0]).join(" · ") || "—";
    // fill: only compartments with a sensor say "room"; every one says how many it rerouted in
    const fill = c.full ? "PENUH / FULL" : c.sensor ? "Ada ruang / Room" : "";
    const sub = [fill, c.rerouted_in ? `+${c.rerouted_in} dialihkan / rerouted` : ""].filter(Boolean).join(" · ");
    const cls = ["bin", c.full ? "full" : "", c.sensor ? "sensor" : ""].filter(Boolean).join(" ");
    const t = el("div", cls, el("div", "top", el("div", "no", typeof c.name === "string" ? c.name : String(c.index + 1)),
      el("div", "n", String(c.count))), el("div", "names", label), ...(sub ? [el("div", "sub", sub)] : []));
    t.dataset.index = c.index;
    return t;
  });
  const n = s.unrouted || 0;  // counted apart: these items went nowhere
  tiles.push(el("div", n ? "bin unrouted some" : "bin unrouted", el("div", "top", el("div", "no", "Tidak disortir"),
    el("div", "n", String(n))), el("div", "names", "Not routed")));
  $("bins").replaceChildren(...tiles);
}

function drawKinds(s) {
  const t = s.today;
  if (!changed("kinds", [t, s.labels])) return;
  const parts = ["Hari ini / Today: "];
  const seen = Object.entries(t.counts).filter(([, n]) => n);  // kinds not seen today: no room for zeros
  if (!seen.length) parts.push(el("b", "", "0"));
  seen.forEach(([k, n], i) => parts.push(...(i ? [" · "] : []), names(k)[0], " ", el("b", "", String(n))));
  parts.push("  |  Tidak yakin / Uncertain ", el("b", "", String(t.uncertain)));
  $("kinds").replaceChildren(...parts);
}

// Two lines a chip: Indonesian at 28 px on top, English under it (no room for both side by side).
const LINKS = {
  lid: ["Penutup", "Lid", {closed: ["✓", "closed", "ok"], open: ["TERBUKA", "OPEN", "bad"],
                           none: ["tanpa sensor", "no sensor", "off"]}],
  camera: ["Kamera", "Camera", {ok: ["✓", "OK", "ok"], slow: ["lambat", "slow", "warn"], down: ["MATI", "DOWN", "bad"]}],
  mqtt: ["MQTT", "MQTT", {connected: ["✓", "connected", "ok"], disconnected: ["terputus", "disconnected", "bad"],
                          off: ["mati", "off", "off"]}],
};

function chip(cls, id, en) {
  return el("span", `chip ${cls}`, el("span", "id", id), el("span", "en", en));
}

function drawChips(s) {
  if (!changed("chips", [s.links, s.health, s.model])) return;
  const chips = [], details = [];
  for (const [name, link] of Object.entries(s.links)) {
    const [id, en, states] = own(LINKS, name) || [name, name, {}];
    const [sid, sen, cls] = own(states, link.state) || [String(link.state), String(link.state), "warn"];
    chips.push(chip(cls, `${id} ${sid}`, `${en}: ${sen}`));
    chips[chips.length - 1].dataset.link = name;
    if (link.detail && cls !== "ok") details.push([en, link.detail]);  // in full on the strip, not in the chip
  }
  // The bin's own parts: one chip beside the state word; what failed, in full, on one strip below.
  const good = [], bad = [];
  for (const [part, h] of Object.entries(s.health)) {
    if (part in s.links) continue;  // its link chip says it, with the detail
    if (h.ok) good.push(part);
    else bad.push([part, h.detail || "rusak / failing"]);
  }
  // a model nobody signed, or one that failed its conversion gate, stays visible until replaced
  const m = s.model || {}, model = [];
  if (m.unsigned) model.push(["Model", `TIDAK DITANDATANGANI / UNSIGNED — ${m.trust || ""}`]);
  if (m.unverified_allowed) model.push(["Model", `TIDAK TERVERIFIKASI / UNVERIFIED — ${m.verification || ""}`]);
  const health = [];
  if (bad.length) health.push(chip("bad", "Sistem rusak", `System failing: ${bad.map(([p]) => p).join(", ")}`));
  else if (model.length) health.push(chip("warn", "Model belum dijamin", "Model not vouched for"));
  else if (good.length) health.push(chip("ok", "Sistem ✓", `OK: ${good.join(" · ")}`));
  $("chips").replaceChildren(...chips);
  $("health").replaceChildren(...health);
  const all = [...bad, ...model, ...details];
  $("parts").replaceChildren(...(all.length ? [el("div", "strip", ...all.flatMap(([part, detail], i) =>
    [...(i ? [" · "] : []), el("b", "", `${part}: `), String(detail)]))] : []));
}

// ------------------------------------------------------------------ what was it? (true labels)
function drawRecent(s) {
  if (!changed("recent", [s.recent, s.labels])) return;
  const rows = (s.recent || []).map((r) => {
    const [id] = names(r.label);
    const tag = r.true_label ? el("span", "tag done", `✓ ${names(r.true_label)[0]}`)
      : r.flagged ? el("span", "tag", "perlu label / needs label") : "";
    const time = new Date(r.time).toLocaleTimeString("id-ID", {hour: "2-digit", minute: "2-digit", second: "2-digit"});
    const went = r.routed_to < 0 ? "tidak disortir / not routed" : `→ ${binName(r.routed_to)}`;
    const head = el("div", "what", el("b", "", r.uncertain ? `${id}?` : id),
      ` ${(100 * r.confidence).toFixed(0)}% · ${went} · ${time} `, tag);
    const choices = el("div", "choices");
    for (const label of Object.keys(s.labels)) {
      const [lid, len] = names(label);
      const b = el("button", "", lid, el("small", "", len));
      b.type = "button";
      b.setAttribute("aria-pressed", String(r.true_label === label));
      b.dataset.label = label;
      b.onclick = () => act(`/api/label/${encodeURIComponent(r.id)}`, {label}).then((ok) => ok && tick());
      choices.append(b);
    }
    const img = el("img");
    if (r.photo) img.src = `/api/photo/${encodeURIComponent(r.id)}.jpg`;
    img.alt = id;
    const row = el("div", r.flagged && !r.true_label ? "row needs" : "row", img, el("div", "", head, choices));
    row.dataset.id = r.id;
    return row;
  });
  $("recent").replaceChildren(...rows);
}

function drawButtons(s) {
  const last = (s.recent || []).find((r) => r.id === lastId);
  const shown = document.body.dataset.shown === "item";  // "wrong?" is about the item on screen
  $("wrong").hidden = !(actions.has("flag") && shown && last && !last.flagged);
  $("labels").hidden = !(actions.has("label") && (s.recent || []).length);
}

// ------------------------------------------------------------------ actions
function token() {
  return kioskToken || localStorage.getItem(TOKEN_KEY) || "";
}

async function act(path, body) {
  try {
    const r = await fetch(path, {method: "POST", credentials: "same-origin", cache: "no-store",
      headers: {"Content-Type": "application/json", "X-EcoSorter-Token": token()},
      body: body === undefined ? "" : JSON.stringify(body)});
    if (r.status === 403 && !kioskToken) {
      $("tokenwhy").textContent = "Masukkan kode dari pemilik bin / Enter the token from the bin's owner";
      $("tokenbox").hidden = false;
    }
    return r.ok;
  } catch (e) {
    return false;
  }
}

$("tokenbox").onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  $("tokenbox").hidden = true;
};
$("wrong").onclick = async () => {
  if (lastId && await act(`/api/flag/${encodeURIComponent(lastId)}`)) {
    await tick();
    if (actions.has("label")) $("panel").hidden = false;
  }
};
$("labels").onclick = () => { $("panel").hidden = false; $("panel").scrollTop = 0; };
$("done").onclick = () => { $("panel").hidden = true; };

// ------------------------------------------------------------------ the loop
async function tick() {
  try {
    const s = await (await fetch("/api/status", {cache: "no-store"})).json();
    snap = s;
    if (s.last && s.seq !== lastSeq) {
      lastSeq = s.seq; lastId = s.last.id;
      document.body.dataset.seq = s.seq; document.body.dataset.label = s.last.label;
    }
    drawState(s);
    drawBanners(s.machine || {});
    drawItem(s);
    drawBins(s);
    drawKinds(s);
    drawChips(s);
    drawRecent(s);
    drawButtons(s);
  } catch (e) {
    drawn.chips = null;
    $("chips").replaceChildren(chip("bad", "status tidak tersedia", "status unavailable"));
  }
}

if (location.hash === "#labels") $("panel").hidden = false;  // a direct link for the staff
tick();
setInterval(tick, POLL_MS);
