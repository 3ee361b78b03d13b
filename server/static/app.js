// modelyard's page. The memory view follows the server's own event stream (/admin/events): one
// snapshot whenever the arbiter's state changed, never a poll. The playground calls the public /v1
// API exactly as any client would, and shows each call as curl.
//
// Everything a server or a model returns is set as text (textContent, append(string)), never as
// markup; the page's Content-Security-Policy allows no script but this file.

const KEY_STORAGE = "modelyard.apiKey";
const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  models: [],               // GET /admin/models
  snapshot: null,           // the latest /admin/events snapshot
  receivedAt: 0,            // performance.now() when it arrived (keep-alive countdowns run from it)
  version: 0,               // snapshots seen: a plan fetched for an older one is stale
  history: [],              // lifecycle records, oldest first
  loads: {},                // model -> its recent load records
  lastEventId: "",           // "<server epoch>-<record id>": a reconnect is sent only what it missed
  epoch: "",                 // the server's event epoch (a new one after a restart)
  selected: null,           // the model the detail panel shows
  hovered: null,            // a model under the pointer (previewed in the panel)
  plan: { model: null, version: -1, body: null, error: null, busy: false, timer: 0, fetchedAt: 0 },
  events: null,             // the event stream's AbortController
};

// ---- small DOM helpers ------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

/** Make `container`'s children match `items` by key, reusing nodes so focus and hover survive. */
function keyed(container, items, key, create, update) {
  const existing = new Map([...container.children].map((node) => [node.dataset.key, node]));
  let cursor = container.firstElementChild;
  for (const item of items) {
    const k = key(item);
    let node = existing.get(k);
    if (node) existing.delete(k);
    else { node = create(item); node.dataset.key = k; }
    update(node, item);
    if (node !== cursor) container.insertBefore(node, cursor);
    else cursor = cursor.nextElementSibling;
  }
  for (const node of existing.values()) node.remove();
}

const mib = (value) => (value >= 10240 ? `${(value / 1024).toFixed(1)} GiB` : `${Math.round(value)} MiB`);
const seconds = (value) => (value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(value < 10 ? 2 : 1)} s`);
const clock = (at) => new Date(at * 1000).toLocaleTimeString([], { hour12: false });

function ago(at) {
  const s = Math.max(0, Date.now() / 1000 - at);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function countdown(s) {
  const whole = Math.max(0, Math.ceil(s));
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), r = whole % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(r)}` : `${m}:${pad(r)}`;
}

// ---- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : { ...extra };
}

async function api(path, { method = "GET", json, body, signal, headers } = {}) {
  const init = { method, headers: authHeaders(headers), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body?.error?.message || message;
  } catch { /* not JSON: the status line says enough */ }
  if (response.status === 401) askForKey(message);
  return new ApiError(response.status, message);
}

/** Server-sent events from a fetch response (EventSource cannot send the Authorization header). */
async function* sse(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const message = { event: "message", id: null, data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") message.data.push(text);
        else if (field === "event") message.event = text;
        else if (field === "id") message.id = text;
      }
      if (message.data.length) yield { ...message, data: message.data.join("\n") };
    }
  }
}

// ---- the key ------------------------------------------------------------------------------------

function askForKey(reason) {
  const dialog = $("#key-dialog");
  setConnection("key", "Needs an API key");
  if (reason) $("#key-reason").textContent = `${reason} The key is kept in this tab's session storage only.`;
  if (!dialog.open) dialog.showModal();
}

function setupKey() {
  $("#key-button").addEventListener("click", () => {
    $("#key-input").value = state.key;
    $("#key-dialog").showModal();
  });
  $("#key-cancel").addEventListener("click", () => $("#key-dialog").close());
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#key-input").value.trim();
    if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $("#key-dialog").close();
    start();
  });
}

function setConnection(kind, text) {
  const node = $("#conn");
  node.dataset.state = kind;
  node.textContent = text;
}

// ---- the event stream -----------------------------------------------------------------------------

async function watchEvents() {
  state.events?.abort();
  const controller = new AbortController();
  state.events = controller;
  let delay = 1000;
  while (!controller.signal.aborted) {
    try {
      const headers = state.lastEventId ? { "Last-Event-ID": state.lastEventId } : {};
      const response = await api("admin/events", { headers, signal: controller.signal });
      setConnection("live", "Live");
      delay = 1000;
      for await (const message of sse(response)) {
        const data = JSON.parse(message.data);
        if (message.event === "hello") onHello(data);
        else if (message.event === "snapshot") onSnapshot(data);
        else if (message.event === "record") onRecord(data);
        if (message.id) state.lastEventId = message.id;
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error.status === 401) return; // resumes once a key is entered
    }
    if (controller.signal.aborted) return;
    setConnection("down", "Reconnecting…");
    await sleep(delay);
    delay = Math.min(delay * 2, 10000);
  }
}

function onHello(hello) {
  if (!hello.resumed) { // a first connection, or a restarted server: its history replaces ours
    state.history = [];
    state.loads = {};
  }
  if (state.epoch && hello.epoch !== state.epoch) loadModels().catch(() => {}); // its registry may differ
  state.epoch = hello.epoch;
  for (const record of hello.history) addRecord(record, false);
  for (const [model, records] of Object.entries(hello.loads)) state.loads[model] = records;
  renderEvents();
}

function onRecord(record) {
  addRecord(record, true);
  renderEvents();
  if (record.model && record.model === shownModel()) renderDetail();
}

function addRecord(record, live) {
  if (state.history.some((r) => r.id === record.id)) return;
  state.history.push(record);
  if (state.history.length > 200) state.history.shift();
  if (live && record.model && (record.kind === "swapped_in" || record.kind === "load_failed")) {
    const loads = (state.loads[record.model] ||= []);
    loads.push(record);
    if (loads.length > 10) loads.shift();
  }
}

function onSnapshot(snapshot) {
  state.snapshot = snapshot;
  state.receivedAt = performance.now();
  state.version += 1;
  renderMemory();
  renderDetail();
  updateModelOptions();
}

// ---- the memory view --------------------------------------------------------------------------------

function residentOf(model) {
  return state.snapshot?.residents.find((r) => r.model === model) || null;
}

function parkedOf(model) {
  return state.snapshot?.parked.find((p) => p.model === model) || null;
}

function stateOf(model) {
  const resident = residentOf(model);
  if (resident) return resident.state;
  return parkedOf(model) ? "parked" : "absent";
}

const STATE_WORDS = { ready: "ready", loading: "loading", draining: "draining", unloading: "unloading",
  parked: "parked in RAM", absent: "not loaded" };

function renderMemory() {
  const s = state.snapshot;
  if (!s) return;
  const scale = Math.max(s.budget_mb, s.used_mb) || 1;
  const free = Math.max(0, s.budget_mb - s.used_mb);
  $("#device-text").textContent = `${mib(s.used_mb)} of ${mib(s.budget_mb)} · ${mib(free)} free`;
  const segments = s.residents.map((r) => ({ model: r.model, mb: r.memory_mb, state: r.state,
    estimate: r.estimate?.total_mb ?? r.memory_mb, pinned: r.pinned, label: `${r.model}, ${r.state}` }));
  drawBar($("#device-bar"), segments, scale, free);

  const copies = [
    ...s.parked.map((p) => ({ model: p.model, mb: p.memory_mb, state: "parked", estimate: p.memory_mb,
      label: `${p.model}, parked (${p.form})` })),
    ...s.residents.filter((r) => r.warm_mb).map((r) => ({ model: r.model, mb: r.warm_mb, state: "copy",
      estimate: r.warm_mb, label: `${r.model}, its parked copy (resident too)` })),
  ];
  const ramBar = $("#ram-bar");
  if (s.ram_budget_mb > 0) {
    $("#ram-text").textContent = `${mib(s.parked_mb)} of ${mib(s.ram_budget_mb)}`;
    drawBar(ramBar, copies, Math.max(s.ram_budget_mb, s.parked_mb), Math.max(0, s.ram_budget_mb - s.parked_mb));
    ramBar.classList.remove("off");
  } else {
    $("#ram-text").textContent = "off (ram_budget_mb is 0)";
    drawBar(ramBar, [], 1, 1);
    ramBar.classList.add("off");
  }

  const waiting = Object.entries(s.queues || {}).filter(([, n]) => n > 0);
  const parts = [`peak ${mib(s.peak_mb)}`, `${s.loads} load${s.loads === 1 ? "" : "s"}`,
    `${Object.values(s.evictions).reduce((a, b) => a + b, 0)} evictions`];
  if (s.loading) parts.unshift(`loading ${s.loading.model}`);
  parts.push(waiting.length ? `waiting: ${waiting.map(([m, n]) => `${m} ×${n}`).join(", ")}` : "no one waiting");
  $("#summary").textContent = parts.join(" · ");
  renderTable();
}

function drawBar(bar, segments, scale, freeMb) {
  const items = [...segments, { model: "", free: true, mb: freeMb }];
  keyed(bar, items, (item) => (item.free ? "free" : `${item.state === "copy" ? "copy:" : ""}${item.model}`),
    (item) => {
      if (item.free) return el("span", { class: "seg free", "aria-hidden": "true" });
      const node = el("button", { type: "button", class: "seg" },
        el("span", { class: "est", "aria-hidden": "true" }), el("span", { class: "seg-label" }));
      node.dataset.model = item.model;
      node.addEventListener("click", () => select(item.model));
      node.addEventListener("mouseenter", () => hover(item.model));
      node.addEventListener("mouseleave", () => hover(null));
      node.addEventListener("focus", () => hover(item.model));
      node.addEventListener("blur", () => hover(null));
      return node;
    },
    (node, item) => {
      node.style.flexBasis = `${(100 * item.mb) / scale}%`;
      if (item.free) return;
      node.className = `seg state-${item.state}${item.model === state.selected ? " selected" : ""}`;
      node.dataset.state = item.state;
      node.title = `${item.label}: ${mib(item.mb)}${item.estimate !== item.mb ? ` (estimated ${mib(item.estimate)})` : ""}`;
      node.setAttribute("aria-label", node.title);
      $(".seg-label", node).textContent = `${item.model} ${mib(item.mb)}`;
      // The estimate's extent over the measured footprint (dashed): how well the plan guessed.
      const est = $(".est", node);
      est.hidden = Math.abs(item.estimate - item.mb) < Math.max(1, item.mb * 0.02);
      est.style.width = `${(100 * item.estimate) / Math.max(item.mb, 1)}%`;
    });
}

const ORDER = { loading: 0, ready: 0, draining: 0, unloading: 0, parked: 1, absent: 2 };

function renderTable() {
  const body = $("#models tbody");
  // What is on the device first (in the bar's order), then what is parked, then the rest.
  const onDevice = (state.snapshot?.residents || []).map((r) => r.model);
  const rank = (id) => [ORDER[stateOf(id)], onDevice.indexOf(id), state.models.findIndex((m) => m.id === id)];
  const rows = state.models.map((m) => m.id).sort((x, y) => {
    const [a, b] = [rank(x), rank(y)];
    return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
  });
  keyed(body, rows, (id) => id, (id) => {
    const backend = state.models.find((m) => m.id === id)?.backend;
    const button = el("button", { type: "button", class: "link", text: id });
    button.addEventListener("click", () => select(id));
    const row = el("tr", {},
      el("th", { scope: "row", "data-label": "Model", title: `${id} (${backend})` }, button),
      el("td", { "data-label": "State" }, el("span", { class: "badge" })),
      el("td", { class: "n", "data-label": "Device MiB" }),
      el("td", { class: "n", "data-label": "Requests" }),
      el("td", { class: "keep", "data-label": "Keep-alive" }),
      el("td", { class: "placement", "data-label": "Placement" }));
    row.dataset.model = id;
    row.addEventListener("mouseenter", () => hover(id));
    row.addEventListener("mouseleave", () => hover(null));
    return row;
  }, (row, id) => {
    const cells = row.children;
    const r = residentOf(id), p = parkedOf(id), st = stateOf(id);
    row.classList.toggle("selected", id === state.selected);
    row.dataset.state = st;
    const badge = $(".badge", cells[1]);
    badge.className = `badge state-${st}`;
    badge.textContent = STATE_WORDS[st];
    if (r) {
      const estimate = r.estimate?.total_mb;
      cells[2].textContent = String(Math.round(r.memory_mb));
      if (estimate !== undefined && Math.abs(estimate - r.memory_mb) >= 1) {
        cells[2].append(el("span", { class: "sub", text: `est. ${Math.round(estimate)}` }));
      }
      cells[3].textContent = `${r.refcount}/${r.slots ?? "∞"}`;
      cells[5].textContent = r.placement;
    } else {
      cells[2].textContent = "–";
      if (p) cells[2].append(el("span", { class: "sub", text: `${Math.round(p.memory_mb)} in RAM` }));
      cells[3].textContent = "–";
      cells[5].textContent = p ? p.placement : "–";
    }
    const queued = state.snapshot?.queues?.[id] || 0;
    if (queued) cells[3].append(el("span", { class: "queued", text: ` +${queued}` }));
    cells[4].textContent = keepAliveText(id);
  });
}

function keepAliveText(id) {
  const r = residentOf(id);
  if (r) {
    if (r.pinned) return "pinned";
    if (r.state === "loading") return "loading";
    if (r.refcount > 0) return "in use";
    if (r.expires_in_s === null) return r.keep_alive_s === -1 ? "forever" : "–";
    const left = r.expires_in_s - (performance.now() - state.receivedAt) / 1000;
    return `${countdown(left)} left`;
  }
  const p = parkedOf(id);
  if (p) return `idle ${countdown(p.idle_s + (performance.now() - state.receivedAt) / 1000)}`;
  return "–";
}

function tick() {
  // Countdowns run on the page's own clock between snapshots: no request.
  for (const row of $$("#models tbody tr")) row.children[4].textContent = keepAliveText(row.dataset.model);
  const keep = $("#fact-keep");
  if (keep) keep.textContent = keepAliveText(shownModel());
}

// ---- the selected model ---------------------------------------------------------------------------------

const shownModel = () => state.hovered || state.selected;

function select(model) {
  state.selected = model;
  state.hovered = null;
  $("#act-status").textContent = "";
  renderMemory();
  renderDetail();
}

let hoverTimer = null;
function hover(model) {
  clearTimeout(hoverTimer);
  // A short delay, so sweeping the pointer across the bar asks for no plans.
  hoverTimer = setTimeout(() => {
    if (state.hovered === model) return;
    state.hovered = model;
    renderDetail();
  }, model ? 150 : 250);
}

function renderDetail() {
  const model = shownModel();
  const info = state.models.find((m) => m.id === model);
  $("#detail-body").hidden = !info;
  $("#detail-hint").hidden = Boolean(info);
  if (!info) {
    $("#detail-title").textContent = "Select a model";
    return;
  }
  $("#detail-title").textContent = info.id;
  $("#detail-desc").textContent = [info.backend, info.description].filter(Boolean).join(" · ");
  const r = residentOf(model), p = parkedOf(model);
  const loads = state.loads[model] || [];
  const lastSwap = [...loads].reverse().find((l) => l.kind === "swapped_in");
  const facts = [
    ["State", STATE_WORDS[stateOf(model)]],
    ["Placement", r ? `${r.placement} (rung ${r.rung}, from ${r.source})` : p ? `${p.placement} (parked, ${p.form})` : "–"],
    ["Device", r ? `${mib(r.memory_mb)} accounted · estimate ${mib(r.estimate.total_mb)}` : "–"],
    ["Keep-alive", keepAliveText(model), "fact-keep"],
    ["Last swap in", lastSwap ? `${clock(lastSwap.at)} from ${lastSwap.source} in ${seconds(lastSwap.seconds)} (${ago(lastSwap.at)})` : "none yet"],
    ["Aliases", info.aliases.join(", ") || "–"],
  ];
  $("#detail-facts").replaceChildren(...facts.flatMap(([term, value, id]) => [el("dt", { text: term }),
    el("dd", { text: value, id })]));
  const pinned = r ? r.pinned : info.pinned;
  const pin = $("#act-pin");
  pin.textContent = pinned ? "Unpin" : "Pin";
  pin.setAttribute("aria-pressed", String(Boolean(pinned)));
  pin.disabled = info.pinned_in_config;
  pin.title = info.pinned_in_config ? "Pinned in models.yaml" : "Keep it loaded (until the server stops)";
  $("#act-unload").disabled = !r && !p;
  $("#act-preload").disabled = Boolean(r && r.state === "ready");
  $("#loads").replaceChildren(...[...loads].reverse().map((l) => el("li", { text: l.kind === "swapped_in"
    ? `${clock(l.at)} · from ${l.source} in ${seconds(l.seconds)}`
    : `${clock(l.at)} · failed (${l.result}) after ${seconds(l.seconds)}` })));
  if (!loads.length) $("#loads").append(el("li", { class: "muted none", text: "none since the server started" }));
  refreshPlan(model);
  renderPlan(model);
}

function refreshPlan(model) {
  // One plan per snapshot that changed something, and at most one a second for the same model.
  const plan = state.plan;
  if (!model || (plan.model === model && plan.version === state.version)) return;
  if (plan.busy) return; // fetchPlan looks again when it is done
  clearTimeout(plan.timer);
  const wait = plan.model === model ? Math.max(0, plan.fetchedAt + 1000 - performance.now()) : 0;
  plan.timer = setTimeout(fetchPlan, wait);
}

async function fetchPlan() {
  const plan = state.plan;
  const model = shownModel();
  if (!model) return;
  const version = state.version;
  plan.busy = true;
  try {
    const response = await api(`admin/plan?model=${encodeURIComponent(model)}`);
    Object.assign(plan, { model, version, body: await response.json(), error: null });
  } catch (error) {
    Object.assign(plan, { model, version, body: null, error: error.message });
  } finally {
    plan.busy = false;
    plan.fetchedAt = performance.now();
  }
  renderPlan(shownModel());
  refreshPlan(shownModel()); // the pointer or the state moved on meanwhile
}

function planLines(r) {
  if (r.verdict === "never") return [`Can never load: ${r.reason}`];
  if (r.verdict === "resident") {
    return [r.expected_wait_s > 0 ? `Wait about ${seconds(r.expected_wait_s)} behind ${r.queued} queued request(s)`
      : "Be served at once: it is loaded and has a free slot"];
  }
  const lines = [`Load from ${r.source === "ram" ? "the RAM tier" : "disk"} at ${r.placement}: ${mib(r.need_mb)} on the device`];
  if (r.fits_now) lines.push(`Fit in the free memory (${mib(r.budget_mb - r.used_mb)} free)`);
  if (r.evict?.length) lines.push(`Evict ${r.evict.join(", ")}`);
  if (r.park?.length) lines.push(`Park ${r.park.join(", ")} in RAM`);
  if (r.drop?.length) lines.push(`Drop ${r.drop.join(", ")}`);
  if (r.drain?.length) lines.push(`Wait for ${r.drain.join(", ")} to drain`);
  if (r.admission?.action === "hold") lines.push(`Wait behind the loaded models' work (aging bound in ${seconds(r.admission.wake_in_s)})`);
  if (r.expected_wait_s !== undefined) {
    lines.push(`Expect about ${seconds(r.expected_wait_s)} of wait (load ${seconds(r.expected_load_s)}, ${r.load_seen ? "measured" : "estimated"})`);
  }
  return lines;
}

function renderPlan(model) {
  if (model !== shownModel()) return;
  const plan = state.plan;
  const list = $("#plan");
  const ladder = $("#ladder tbody");
  if (plan.model !== model || (!plan.body && !plan.error)) {
    list.replaceChildren(el("li", { class: "muted", text: "Asking the arbiter…" }));
    ladder.replaceChildren();
    return;
  }
  if (plan.error) {
    list.replaceChildren(el("li", { class: "error", text: plan.error }));
    return;
  }
  const r = plan.body;
  list.replaceChildren(...planLines(r).map((line) => el("li", { text: line })));
  if (r.estimate) {
    const parts = Object.entries(r.estimate).filter(([k, v]) => v && k !== "total_mb")
      .map(([k, v]) => `${k.replace(/_mb$/, "").replace("_", " ")} ${Math.round(v)}`);
    list.append(el("li", { class: "muted", text: `Estimate by part (MiB): ${parts.join(", ") || "none"}` }));
  }
  ladder.replaceChildren(...r.ladder.map((rung) => el("tr", { class: rung.placement === r.placement ? "chosen" : "" },
    el("td", { text: `${rung.placement}${rung.placement === r.placement ? " (chosen)" : ""}` }),
    el("td", { class: "n", text: Math.round(rung.need_mb) }),
    el("td", { text: rung.fits ? "yes" : "no" }))));
}

function setupActions() {
  const act = async (button, path, body, done) => {
    const model = state.selected || shownModel();
    const status = $("#act-status");
    button.disabled = true;
    status.textContent = `${button.textContent}: ${model}…`;
    try {
      const response = await api(path, { method: "POST", json: { model, ...body() } });
      status.textContent = done(await response.json());
      await loadModels();
    } catch (error) {
      status.textContent = error.message;
    } finally {
      button.disabled = false;
      renderDetail();
    }
  };
  $("#act-preload").addEventListener("click", (e) => act(e.currentTarget, "admin/preload", () => ({}),
    (r) => `Loaded ${r.model} at ${r.placement} in ${seconds(r.seconds)}`));
  $("#act-pin").addEventListener("click", (e) => act(e.currentTarget, "admin/pin",
    () => ({ pinned: e.currentTarget.getAttribute("aria-pressed") !== "true" }),
    (r) => (r.pinned ? `Pinned ${r.model}` : `Unpinned ${r.model}`)));
  $("#act-unload").addEventListener("click", (e) => act(e.currentTarget, "admin/unload", () => ({}),
    (r) => `Unloaded ${r.model}`));
}

// ---- the event log ----------------------------------------------------------------------------------------

function describe(record) {
  switch (record.kind) {
    case "loading": return `${record.model}: loading at ${record.rung}`;
    case "swapped_in": return `${record.model}: ready, from ${record.source} in ${seconds(record.seconds)}`;
    case "load_failed": return `${record.model}: load ${record.result} after ${seconds(record.seconds)}`;
    case "evicted": return `${record.model}: ${record.parked ? "parked in RAM" : "unloaded"} (${record.reason.replace("_", " ")})`;
    case "switched": return record.reason === "aging"
      ? "switched models: a request waited past the aging bound"
      : "switched models: the loaded one had no work left";
    default: return `${record.model || ""} ${record.kind}`;
  }
}

function renderEvents() {
  const recent = state.history.slice(-50).reverse();
  keyed($("#events"), recent, (r) => String(r.id), (r) => el("li", {},
    el("time", { datetime: new Date(r.at * 1000).toISOString(), text: clock(r.at) }), " ",
    el("span", { text: describe(r) })), (node, r) => { node.dataset.kind = r.kind; });
}

// ---- the playground ---------------------------------------------------------------------------------------

function setupTabs() {
  const tabs = $$('[role="tab"]');
  const show = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
    }
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (event) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      const next = tabs[(to + tabs.length) % tabs.length];
      next.focus();
      show(next);
    });
  });
}

const absolute = (path) => new URL(path, document.baseURI).href;
const shellQuote = (text) => `'${String(text).replaceAll("'", "'\\''")}'`;

function curlFor(path, { json, form, stream, output } = {}) {
  const lines = [`curl${stream ? " -N" : ""} ${absolute(path)}`];
  if (state.key) lines.push(`-H "Authorization: Bearer $MODELYARD_API_KEY"`);
  if (json !== undefined) {
    lines.push(`-H "Content-Type: application/json"`);
    lines.push(`-d ${shellQuote(JSON.stringify(json, null, 1).replace(/\n\s*/g, " "))}`);
  }
  for (const [name, value] of form || []) lines.push(`-F ${shellQuote(`${name}=${value}`)}`);
  if (output) lines.push(output);
  return lines.join(" \\\n  ");
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (a page over plain http on another host is not a secure context).
    const area = el("textarea", { class: "visually-hidden" });
    area.value = text;
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

/** Wire one playground form: its model list, its curl, its errors and its submit. */
function playground(form, capability, { request, curl, run }) {
  const pre = $(".curl pre", form);
  const refresh = () => { pre.textContent = curl(request()); };
  form.addEventListener("input", refresh);
  form.addEventListener("change", refresh);
  form.refreshCurl = refresh;
  form.capability = capability;
  $(".curl-button", form).addEventListener("click", async (event) => {
    refresh();
    $(".curl", form).open = true;
    const button = event.currentTarget;
    const copied = await copyText(pre.textContent);
    button.textContent = copied ? "Copied" : "Select and copy below";
    setTimeout(() => { button.textContent = "Copy as curl"; }, 1500);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $(".error", form);
    const submit = $('button[type="submit"]', form);
    error.textContent = "";
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    const started = performance.now();
    try {
      const note = await run(request(), started);
      $(".status", form).textContent = note || `Done in ${seconds((performance.now() - started) / 1000)}`;
    } catch (err) {
      $(".status", form).textContent = "";
      if (err.name !== "AbortError") error.textContent = err.message;
    } finally {
      submit.disabled = false;
      form.removeAttribute("aria-busy");
      refresh();
    }
  });
}

function updateModelOptions() {
  for (const form of $$("form.form")) {
    const select = $(".model-select", form);
    if (!select) continue;
    const models = state.models.filter((m) => m.capabilities.includes(form.capability));
    const current = select.value;
    keyed(select, models, (m) => m.id, (m) => el("option", { value: m.id }), (option, m) => {
      option.textContent = `${m.id} · ${STATE_WORDS[stateOf(m.id)]}`;
    });
    if (current && models.some((m) => m.id === current)) select.value = current;
    const panel = form.closest('[role="tabpanel"]');
    let empty = $(".empty", panel);
    if (!models.length && !empty) {
      empty = el("p", { class: "empty muted", text: `No model in the registry serves ${form.capability}.` });
      panel.prepend(empty);
    } else if (models.length && empty) {
      empty.remove();
    }
    $('button[type="submit"]', form).disabled = !models.length;
    form.dispatchEvent(new Event("models"));
    form.refreshCurl?.();
  }
}

function setupChat() {
  const form = $("#chat-form");
  const log = $("#chat-log");
  const conversation = [];
  let controller = null;
  const message = () => form.elements.message.value.trim();
  const request = () => {
    const messages = [];
    const system = form.elements.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...conversation, { role: "user", content: message() || "Hello!" });
    const body = { model: form.elements.model.value, messages, stream: true,
      stream_options: { include_usage: true } };
    const maxTokens = form.elements.max_tokens.valueAsNumber;
    const temperature = form.elements.temperature.valueAsNumber;
    if (Number.isFinite(maxTokens)) body.max_tokens = maxTokens;
    if (Number.isFinite(temperature)) body.temperature = temperature;
    return body;
  };
  const bubble = (role, text) => {
    const body = el("div", { class: "text", text });
    const item = el("li", { class: `msg ${role}` }, el("span", { class: "role", text: role }), body);
    log.append(item);
    log.scrollTop = log.scrollHeight;
    return item;
  };
  playground(form, "chat", {
    request,
    curl: (body) => curlFor("v1/chat/completions", { json: body, stream: true }),
    run: async (body, started) => {
      if (!message()) throw new Error("Write a message first.");
      bubble("user", message());
      conversation.push({ role: "user", content: message() });
      form.elements.message.value = "";
      const out = bubble("assistant", "");
      const text = $(".text", out);
      out.dataset.state = "waiting";
      controller = new AbortController();
      form.elements.stop.disabled = false;
      let first = null, usage = null, reply = "";
      try {
        const response = await api("v1/chat/completions", { method: "POST", json: body, signal: controller.signal });
        const placement = response.headers.get("x-modelyard-placement");
        for await (const event of sse(response)) {
          if (event.data === "[DONE]") break;
          const chunk = JSON.parse(event.data);
          if (chunk.error) throw new ApiError(0, chunk.error.message);
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            first ??= performance.now();
            reply += delta;
            text.textContent = reply;
            out.dataset.state = "streaming";
            log.scrollTop = log.scrollHeight;
          }
          if (chunk.usage) usage = chunk.usage;
        }
        out.dataset.state = "done";
        conversation.push({ role: "assistant", content: reply });
        const total = (performance.now() - started) / 1000;
        const notes = [];
        if (first !== null) notes.push(`first token ${seconds((first - started) / 1000)}`);
        if (usage) {
          notes.push(`${usage.completion_tokens} tokens`);
          const generating = first !== null ? (performance.now() - first) / 1000 : 0;
          if (generating > 0 && usage.completion_tokens > 1) notes.push(`${((usage.completion_tokens - 1) / generating).toFixed(1)} tokens/s`);
        }
        notes.push(`${seconds(total)} in all`);
        if (placement) notes.push(`placement ${placement}`);
        return notes.join(" · ");
      } catch (error) {
        out.dataset.state = error.name === "AbortError" ? "stopped" : "failed";
        if (reply) conversation.push({ role: "assistant", content: reply });
        if (!reply) out.remove();
        if (error.name === "AbortError") return "Stopped";
        throw error;
      } finally {
        controller = null;
        form.elements.stop.disabled = true;
      }
    },
  });
  form.elements.stop.addEventListener("click", () => controller?.abort());
  form.elements.clear.addEventListener("click", () => {
    controller?.abort();
    conversation.length = 0;
    log.replaceChildren();
    $(".status", form).textContent = "";
    form.refreshCurl();
  });
  form.elements.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!controller) form.requestSubmit();
    }
  });
}

function setupImage() {
  const form = $("#image-form");
  const figure = $("#image-out");
  const request = () => {
    const body = { model: form.elements.model.value, prompt: form.elements.prompt.value, n: 1,
      size: form.elements.size.value, response_format: "b64_json" };
    const steps = form.elements.steps.valueAsNumber, seed = form.elements.seed.valueAsNumber;
    if (Number.isFinite(steps)) body.steps = steps;
    if (Number.isFinite(seed)) body.seed = seed;
    return body;
  };
  form.addEventListener("models", () => {
    // The chosen model's own sizes and steps (models.yaml's options), when it says.
    const hints = state.models.find((m) => m.id === form.elements.model.value)?.playground?.image;
    if (!hints || form.dataset.hintsFor === form.elements.model.value) return;
    form.dataset.hintsFor = form.elements.model.value;
    form.elements.size.value = hints.default_size;
    form.elements.steps.placeholder = String(hints.default_steps);
    form.elements.steps.max = String(hints.max_steps);
    const sizes = hints.sizes.length ? hints.sizes
      : [256, 512, 768, 1024].filter((s) => s >= hints.min_side && s <= hints.max_side).map((s) => `${s}x${s}`);
    $("#image-sizes").replaceChildren(...sizes.map((s) => el("option", { value: s })));
  });
  form.elements.model.addEventListener("change", () => form.dispatchEvent(new Event("models")));
  playground(form, "image", {
    request,
    curl: (body) => curlFor("v1/images/generations", { json: body,
      output: "| python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)[\"data\"][0][\"b64_json\"]))' > image.png" }),
    run: async (body, started) => {
      const response = await api("v1/images/generations", { method: "POST", json: body });
      const result = await response.json();
      const image = $("img", figure);
      image.src = `data:image/png;base64,${result.data[0].b64_json}`;
      image.alt = `Generated for: ${body.prompt}`;
      await image.decode().catch(() => {});
      figure.hidden = false;
      $("figcaption", figure).textContent = `${result.size || body.size}${body.seed !== undefined ? ` · seed ${body.seed}` : ""}`;
      return `Generated in ${seconds((performance.now() - started) / 1000)}`;
    },
  });
}

function setupTranscribe() {
  const form = $("#transcribe-form");
  const player = $("audio", form);
  const record = form.elements.record;
  let recording = null;   // the Blob recorded from the microphone, if any
  let recorder = null;
  const audio = () => recording
    ? new File([recording], `recording.${recording.type.includes("ogg") ? "ogg" : "webm"}`, { type: recording.type })
    : form.elements.file.files[0];
  const request = () => {
    const fields = [["model", form.elements.model.value], ["response_format", "verbose_json"]];
    if (form.elements.language.value.trim()) fields.push(["language", form.elements.language.value.trim()]);
    return fields;
  };
  form.elements.file.addEventListener("change", () => {
    recording = null;
    const file = form.elements.file.files[0];
    player.hidden = !file;
    if (file) player.src = URL.createObjectURL(file);
  });
  record.addEventListener("click", async () => {
    if (recorder) {
      recorder.stop();
      return;
    }
    const error = $(".error", form);
    error.textContent = "";
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus"].find((t) => MediaRecorder.isTypeSupported(t));
      recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
      const parts = [];
      recorder.addEventListener("dataavailable", (event) => parts.push(event.data));
      recorder.addEventListener("stop", () => {
        stream.getTracks().forEach((track) => track.stop());
        recording = new Blob(parts, { type: recorder.mimeType || "audio/webm" });
        recorder = null;
        record.textContent = "Record from the microphone";
        record.setAttribute("aria-pressed", "false");
        form.elements.file.value = "";
        player.src = URL.createObjectURL(recording);
        player.hidden = false;
        $(".status", form).textContent = "Recorded; press Transcribe";
        form.refreshCurl();
      });
      recorder.start();
      record.textContent = "Stop recording";
      record.setAttribute("aria-pressed", "true");
      $(".status", form).textContent = "Recording…";
    } catch (err) {
      error.textContent = `The microphone is not available: ${err.message}`;
    }
  });
  playground(form, "transcription", {
    request,
    curl: (fields) => curlFor("v1/audio/transcriptions", {
      form: [["file", `@${audio()?.name || "audio.wav"}`], ...fields] }),
    run: async (fields) => {
      const file = audio();
      if (!file) throw new Error("Choose an audio file or record one first.");
      const body = new FormData();
      body.append("file", file, file.name);
      for (const [name, value] of fields) body.append(name, value);
      const response = await api("v1/audio/transcriptions", { method: "POST", body });
      const result = await response.json();
      const out = $("#transcript");
      const segments = (result.segments || []).map((s) => el("li", {},
        el("span", { class: "muted", text: `${s.start.toFixed(1)}–${s.end.toFixed(1)} s ` }), s.text));
      out.replaceChildren(el("p", { class: "transcript-text", text: result.text || "(no speech found)" }),
        segments.length ? el("ol", { class: "segments" }, ...segments) : "");
      out.hidden = false;
      return `${result.duration?.toFixed(1) ?? "?"} s of ${result.language || "audio"} transcribed`;
    },
  });
}

function setupSpeech() {
  const form = $("#speech-form");
  const player = $("#speech-out");
  const request = () => ({ model: form.elements.model.value, input: form.elements.input.value,
    voice: form.elements.voice.value, response_format: form.elements.response_format.value,
    speed: form.elements.speed.valueAsNumber || 1 });
  const voices = () => {
    const names = state.models.find((m) => m.id === form.elements.model.value)?.playground?.voices || ["alloy"];
    const current = form.elements.voice.value;
    form.elements.voice.replaceChildren(...names.map((v) => el("option", { value: v, text: v })));
    if (names.includes(current)) form.elements.voice.value = current;
  };
  form.addEventListener("models", voices);
  form.elements.model.addEventListener("change", voices);
  playground(form, "speech", {
    request,
    curl: (body) => curlFor("v1/audio/speech", { json: body, output: `--output speech.${body.response_format}` }),
    run: async (body, started) => {
      const response = await api("v1/audio/speech", { method: "POST", json: body });
      const blob = await response.blob();
      player.src = URL.createObjectURL(blob);
      player.hidden = false;
      player.play().catch(() => {}); // a browser may refuse to autoplay; the controls are there
      return `${(blob.size / 1024).toFixed(0)} KiB of ${body.response_format} in ${seconds((performance.now() - started) / 1000)}`;
    },
  });
}

function setupEmbeddings() {
  const form = $("#embed-form");
  const request = () => ({ model: form.elements.model.value, input: [form.elements.a.value, form.elements.b.value] });
  playground(form, "embedding", {
    request,
    curl: (body) => curlFor("v1/embeddings", { json: body }),
    run: async (body) => {
      const response = await api("v1/embeddings", { method: "POST", json: body });
      const result = await response.json();
      const [a, b] = [...result.data].sort((x, y) => x.index - y.index).map((d) => d.embedding);
      const dot = a.reduce((sum, v, i) => sum + v * b[i], 0);
      const norm = (v) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0));
      const cosine = dot / (norm(a) * norm(b) || 1);
      $("#similarity-value").textContent = cosine.toFixed(4);
      $("#similarity-meter").value = cosine;
      $("#similarity-detail").textContent = `${a.length} dimensions · ${result.usage?.prompt_tokens ?? "?"} tokens`;
      $("#similarity").hidden = false;
      return `cosine similarity ${cosine.toFixed(4)}`;
    },
  });
}

// ---- start ------------------------------------------------------------------------------------------------

async function loadModels() {
  const response = await api("admin/models");
  state.models = (await response.json()).models;
  renderMemory();
  updateModelOptions();
}

async function start() {
  try {
    await loadModels();
  } catch (error) {
    if (error.status !== 401) setConnection("down", `Cannot reach the server: ${error.message}`);
    return;
  }
  watchEvents();
}

setupKey();
setupTabs();
setupActions();
setupChat();
setupImage();
setupTranscribe();
setupSpeech();
setupEmbeddings();
setInterval(tick, 1000);
start();
