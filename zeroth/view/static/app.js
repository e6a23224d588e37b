/* zeroth view: the page over the run ledgers. Plain JS, no libraries; charts are drawn as SVG.
 *
 * Data comes from the JSON API of zeroth/view/server.py (/api/runs, /api/metrics, /api/evals,
 * /api/rollouts, /api/group, /api/steps, /api/eval_samples). The page polls /api/runs every
 * few seconds (?poll=MS in the URL changes the interval) and re-reads whatever changed,
 * keeping the user's filters, selection and scroll position. ?runs=a,b preselects runs.
 */
"use strict";

const params = new URLSearchParams(location.search);
const POLL_MS = Math.max(200, Number(params.get("poll")) || 5000);
const PALETTE = [
  "#2f6fdf",
  "#e4572e",
  "#2a9d8f",
  "#8e5bd6",
  "#e9a23b",
  "#c2185b",
  "#3d5a80",
  "#6a994e",
  "#8d6e63",
  "#00838f",
];
// Reflection phrases come from the server (zeroth/thoughts.py), matched as whole words.
let REFLECTION_RE = null;

function reflectionPattern(phrases) {
  const escaped = phrases.map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp("\\b(?:" + escaped.join("|") + ")\\b", "gi");
}

// Curves drawn first, in this order, for every training phase that logged them.
const MAIN_METRICS = [
  "accuracy",
  "heldout_pass1",
  "heldout_greedy",
  "reward",
  "reward_*",
  "mean_len",
  "kl",
  "entropy",
  "clip_frac",
  "reflect_rate",
  "think_rate",
  "lr",
  "grad_norm",
];
const ACCURACY_KEYS = [
  "reward_correct",
  "reward_accuracy",
  "reward_math_accuracy",
  "reward_code_tests",
];
const LABELS = {
  accuracy: "accuracy",
  heldout_pass1: "held-out pass@1 (during RL)",
  heldout_greedy: "held-out greedy (during RL)",
  heldout_mean_len: "held-out response tokens",
  reward: "reward (total)",
  mean_len: "mean response tokens",
  kl: "KL to reference",
  entropy: "entropy",
  clip_frac: "clipped fraction",
  reflect_rate: "reflection rate",
  think_rate: "uses <think>",
  lr: "learning rate",
  grad_norm: "gradient norm",
  loss: "loss",
  time_gen: "seconds: sample",
  time_gather: "seconds: rollouts exchanged between ranks",
  time_reward: "seconds: score",
  time_adv: "seconds: advantages",
  time_ref: "seconds: old & reference log-probs",
  time_update: "seconds: update",
  time_sync: "seconds: engine sync",
  time_record: "seconds: record",
  time_heldout: "seconds: held-out evaluation",
};
// An RL step's timers (zeroth/stages/rl.py), charted first among the other metrics, in the
// order the step runs them.
const TIMERS = [
  "time_gen",
  "time_gather",
  "time_reward",
  "time_adv",
  "time_ref",
  "time_update",
  "time_sync",
  "time_record",
  "time_heldout",
];
const EVAL_ORDER = [
  "pass@1",
  "greedy",
  "maj@",
  "pass@",
  "format",
  "think_rate",
  "mean_len",
  "greedy_len",
  "problems",
];
const ROLLOUT_INPUTS = [
  "f-step",
  "f-step-min",
  "f-step-max",
  "f-task",
  "f-reward-min",
  "f-reward-max",
  "f-len-min",
  "f-len-max",
  "f-q",
  "f-order",
];

const state = {
  runs: [], // the latest /api/runs list
  selected: new Set(), // runs drawn in curves and evaluations
  colours: new Map(), // run id -> its colour's index, stable for the session
  firstLoad: true,
  metrics: new Map(), // run id -> {updated, data}
  evals: new Map(), // run id -> {updated, data}
  drawn: { charts: "", evals: "" }, // what is on screen, to redraw only on change
  rollouts: { offset: 0, total: 0, seen: "", seq: 0, ranges: null },
  evalSamples: { offset: 0, total: 0, limit: 20, seen: "", seq: 0 },
  group: null, // {run, phase, step, prompt, sample}
};

/* ---------------------------------------------------------------- small helpers */

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.setAttribute("class", value);
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

function fmt(v) {
  if (v === null || v === undefined || (typeof v === "number" && !Number.isFinite(v))) return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  if (a >= 0.01) return v.toFixed(3);
  if (a >= 1e-4) return v.toPrecision(2);
  return v.toExponential(1);
}

function signed(v) {
  return isNum(v) && v > 0 ? "+" + fmt(v) : fmt(v);
}

function shorten(text, n) {
  const flat = String(text ?? "")
    .replace(/\s+/g, " ")
    .trim();
  return flat.length > n ? flat.slice(0, n - 1) + "…" : flat;
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

async function api(path, query = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== null && v !== undefined && v !== "") qs.set(k, v);
  }
  const res = await fetch(`/api/${path}?${qs}`, { cache: "no-store" });
  let body = null;
  try {
    body = await res.json();
  } catch (e) {
    body = null;
  }
  if (!res.ok) throw new Error((body && body.error) || `${path}: HTTP ${res.status}`);
  return body;
}

function showError(err) {
  const box = $("#error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

function runById(id) {
  return state.runs.find((r) => r.id === id) || null;
}

// Runs whose ledger the server could read (an unreadable one is listed, greyed, and skipped).
const readable = (run) => run && run.status !== "unreadable";

// The n-th run seen gets PALETTE[n]; past the palette, hues a golden angle apart (never two
// alike, each far from the one before) that keep 15 degrees from the palette's own hues, at
// three lightnesses, and a dash pattern on the run's curves.
const PALETTE_HUES = [218, 14, 173, 265, 36, 336, 214, 98, 16, 185];
const GOLDEN_ANGLE = 137.508;
const DASHES = ["7 3", "2 3", "9 3 2 3"];

function hueGap(a, b) {
  const d = Math.abs(a - b) % 360;
  return Math.min(d, 360 - d);
}

function colourAt(n) {
  if (n < PALETTE.length) return PALETTE[n];
  let hue = 0;
  for (let k = 0, found = 0; found <= n - PALETTE.length; k++) {
    hue = (60 + k * GOLDEN_ANGLE) % 360;
    if (PALETTE_HUES.every((h) => hueGap(h, hue) >= 15)) found += 1;
  }
  return `hsl(${hue.toFixed(1)}, 70%, ${[40, 50, 32][(n - PALETTE.length) % 3]}%)`;
}

function runIndex(id) {
  if (!state.colours.has(id)) state.colours.set(id, state.colours.size);
  return state.colours.get(id);
}

function colourOf(id) {
  return colourAt(runIndex(id));
}

function dashOf(id) {
  const n = runIndex(id);
  return n < PALETTE.length ? null : DASHES[(n - PALETTE.length) % DASHES.length];
}

function swatch(id) {
  return el("span", { class: "swatch", style: `background:${colourOf(id)}` });
}

function fillSelect(select, options, fallback) {
  // options: [[value, label]]; keeps the current value when it is still offered.
  const keep = select.value;
  const sig = JSON.stringify(options);
  if (select.dataset.sig !== sig) {
    select.replaceChildren(...options.map(([v, label]) => el("option", { value: v, text: label })));
    select.dataset.sig = sig;
  }
  const values = options.map((o) => o[0]);
  select.value = values.includes(keep)
    ? keep
    : values.includes(fallback)
      ? fallback
      : (values[0] ?? "");
  return select.value !== keep;
}

/* ---------------------------------------------------------------- runs header */

function renderRuns() {
  const box = $("#runs");
  if (!state.runs.length) {
    box.replaceChildren(el("span", { class: "muted", text: "no runs found yet" }));
    return;
  }
  box.replaceChildren(...state.runs.map(runCard));
}

function runCard(run) {
  // One run: tick it to draw it; its status, what it is, and where a stopped run stopped.
  const box = el("input", { type: "checkbox", "data-run": run.id, onchange: onRunToggle });
  box.checked = state.selected.has(run.id);
  box.disabled = !readable(run);
  const about = [run.task, run.algorithm, run.model].filter(Boolean).join(" · ");
  const said = run.status_text && run.status_text !== run.status ? run.status_text : null;
  const resume = run.resume ? `continue it: ${run.resume}` : null;
  const events = (run.events || []).map((e) => `${e.time} ${e.kind}: ${e.text}`);
  const title = [run.path, about, said, resume, run.error, ...events]
    .filter(Boolean)
    .join("\n");
  return el(
    "label",
    { class: `run${readable(run) ? "" : " unreadable"}`, title, "data-run": run.id },
    box,
    swatch(run.id),
    el(
      "span",
      { class: "run-body" },
      el("span", { class: "run-name", text: run.id }),
      el(
        "span",
        { class: "run-meta" },
        el("span", {
          class: `badge ${run.status}`,
          text: run.status,
          title: [run.status_text, resume].filter(Boolean).join("\n"),
        }),
        about ? el("span", { class: "run-about", text: about }) : null,
      ),
      said ? el("span", { class: `run-state ${run.status}`, text: said }) : null,
      run.resume ? resumeCommand(run.resume) : null,
      events.length ? runEvents(run.events) : null,
    ),
  );
}

function runEvents(events) {
  // What happened to the run (faults met: a stop, a damaged checkpoint, a salvaged ledger).
  const kinds = [...new Set(events.map((e) => e.kind))].join(", ");
  return el("span", {
    class: "run-events",
    text: `${events.length} event${events.length > 1 ? "s" : ""}: ${kinds}`,
    title: events.map((e) => `${e.time} ${e.kind}: ${e.text}`).join("\n"),
  });
}

function resumeCommand(command) {
  // Selectable: a click selects the command instead of ticking the run.
  return el("code", {
    class: "resume",
    title: "the command that continues this run",
    text: command,
    onclick: (ev) => ev.preventDefault(),
  });
}

function onRunToggle(event) {
  const id = event.target.dataset.run;
  if (event.target.checked) state.selected.add(id);
  else state.selected.delete(id);
  refreshSelected().catch(showError);
}

function chooseInitialRuns() {
  const runs = state.runs.filter(readable);
  const wanted = (params.get("runs") || "").split(",").filter((id) => readable(runById(id)));
  let pick = wanted;
  if (!pick.length && runs.length <= 4) pick = runs.map((r) => r.id);
  if (!pick.length && runs.length) {
    pick = [runs.reduce((a, b) => ((b.updated || 0) > (a.updated || 0) ? b : a)).id];
  }
  pick.forEach((id) => state.selected.add(id));
}

async function refreshRuns() {
  const data = await api("runs");
  state.runs = data.runs || [];
  if (!REFLECTION_RE && data.reflection_phrases) REFLECTION_RE = reflectionPattern(data.reflection_phrases);
  state.runs.forEach((r) => colourOf(r.id));
  for (const id of [...state.selected]) if (!readable(runById(id))) state.selected.delete(id);
  if (state.firstLoad || (!state.selected.size && state.runs.some(readable))) {
    chooseInitialRuns();
    state.firstLoad = false;
  }
  renderRuns();
  const ids = state.runs.filter(readable).map((r) => [r.id, r.id]);
  // The browsers start on the first picked run that has rollouts.
  const picked = state.runs.filter((r) => state.selected.has(r.id));
  const withRollouts = picked.find((r) => (r.phases || []).some((p) => p.rollouts > 0));
  const focus = (withRollouts || picked[0] || {}).id;
  fillSelect($("#f-run"), ids, focus);
  fillSelect($("#e-run"), ids, focus);
}

/* ---------------------------------------------------------------- metrics and charts */

async function fetchPerRun(cache, path, ids) {
  // Re-read a run's data only when its ledger changed since the last read.
  await Promise.all(
    ids.map(async (id) => {
      const run = runById(id);
      const have = cache.get(id);
      // evals_updated: results files of `zeroth eval`, written beside a finished run too
      const sig = run ? [run.updated, run.status, run.evals_updated].join("|") : null;
      if (have && run && have.sig === sig) return;
      const data = await api(path, { run: id });
      cache.set(id, { sig, data });
    }),
  );
}

async function refreshSelected() {
  const ids = state.runs.map((r) => r.id).filter((id) => state.selected.has(id));
  await Promise.all([
    fetchPerRun(state.metrics, "metrics", ids),
    fetchPerRun(state.evals, "evals", ids),
  ]);
  const charts = JSON.stringify(ids.map((id) => [id, state.metrics.get(id)?.data]));
  if (charts !== state.drawn.charts) {
    state.drawn.charts = charts;
    renderCharts(ids);
  }
  const evals = JSON.stringify(ids.map((id) => [id, state.evals.get(id)?.data]));
  if (evals !== state.drawn.evals) {
    state.drawn.evals = evals;
    renderEvals(ids);
  }
}

function accuracyKey(series) {
  const found = ACCURACY_KEYS.find((k) => k in series);
  return found || Object.keys(series).find((k) => /^reward_.*(accura|correct|pass|tests)/.test(k));
}

function trainingPhases(ids) {
  // [{phase, kind, runs: [{id, steps, series}]}] in first-seen order; eval phases left out.
  const phases = new Map();
  for (const id of ids) {
    for (const ph of state.metrics.get(id)?.data?.phases || []) {
      if (ph.kind === "eval" || ph.phase.startsWith("eval")) continue;
      if (!phases.has(ph.phase)) phases.set(ph.phase, { phase: ph.phase, kind: ph.kind, runs: [] });
      phases.get(ph.phase).runs.push({ id, steps: ph.steps || [], series: ph.series || {} });
    }
  }
  return [...phases.values()];
}

function metricsOf(phase) {
  // (main, other): the metric names to chart for a phase, each [name, sourceKey].
  const keys = new Set();
  phase.runs.forEach((r) =>
    Object.keys(r.series).forEach((k) => {
      if (r.series[k].some(isNum)) keys.add(k);
    }),
  );
  const acc = phase.runs.map((r) => accuracyKey(r.series)).find((k) => k && keys.has(k));
  const main = [];
  for (const name of MAIN_METRICS) {
    if (name === "accuracy") {
      if (acc) main.push(["accuracy", acc]);
    } else if (name === "reward_*") {
      [...keys]
        .filter((k) => k.startsWith("reward_") && k !== acc)
        .sort()
        .forEach((k) => main.push([k, k]));
    } else if (keys.has(name)) main.push([name, name]);
  }
  if (phase.kind !== "rl" && keys.has("loss")) main.unshift(["loss", "loss"]);
  const used = new Set(main.map((m) => m[1]));
  [...keys].filter(isFamilyKey).forEach((k) => used.add(k)); // charted per task (taskCharts)
  const timers = TIMERS.filter((k) => keys.has(k) && !used.has(k));
  const other = timers.concat(
    [...keys].filter((k) => !used.has(k) && !timers.includes(k)).sort(),
  ).map((k) => [k, k]);
  return { main, other };
}

/* A mix of task families (zeroth/tasks/mix.py): metrics <prefix>/<family>, charted together. */

const FAMILY_PREFIXES = ["accuracy", "heldout_pass1", "level"];

function isFamilyKey(key) {
  const cut = key.indexOf("/");
  return cut > 0 && FAMILY_PREFIXES.includes(key.slice(0, cut));
}

function familiesOf(phase, prefixes) {
  // The families with a metric under one of `prefixes`, in first-seen order.
  const names = new Set();
  for (const r of phase.runs) {
    for (const [k, values] of Object.entries(r.series)) {
      const cut = k.indexOf("/");
      if (cut > 0 && prefixes.includes(k.slice(0, cut)) && values.some(isNum)) {
        names.add(k.slice(cut + 1));
      }
    }
  }
  return [...names];
}

function changesOf(phase) {
  // The curriculum's level changes in this phase, of every run drawn: [{run, ...change}].
  return phase.runs.flatMap((r) =>
    (state.metrics.get(r.id)?.data?.curriculum || [])
      .filter((c) => c.stage === phase.phase)
      .map((c) => ({ run: r.id, ...c })),
  );
}

function taskCharts(phase) {
  // Accuracy per task (training: solid, held-out pass@1: dashed) and the curriculum's levels,
  // a colour per family, the level changes as dotted vertical lines.
  const names = familiesOf(phase, FAMILY_PREFIXES);
  const charts = [];
  if (familiesOf(phase, ["accuracy", "heldout_pass1"]).length) {
    charts.push(familyChart(phase, names, ["accuracy", "heldout_pass1"], "accuracy per task"));
  }
  if (familiesOf(phase, ["level"]).length) {
    charts.push(familyChart(phase, names, ["level"], "curriculum level per task"));
  }
  return charts;
}

function familyChart(phase, names, prefixes, title) {
  // a colour per family; several runs: a dash per run (held-out pass@1: dashes of its own)
  const lines = [];
  phase.runs.forEach((r, ri) =>
    names.forEach((name, fi) =>
      prefixes.forEach((prefix, pi) => {
        const values = r.series[`${prefix}/${name}`];
        if (!values || !values.some(isNum)) return;
        const colour = PALETTE[fi % PALETTE.length];
        const dash = pi ? "4 3" : ri ? DASHES[(ri - 1) % DASHES.length] : null;
        lines.push({ id: r.id, steps: r.steps, values, colour, dash, family: name, key: prefix,
                     bridge: prefix === "heldout_pass1", stepped: prefix === "level" });
      }),
    ),
  );
  const steps = phase.runs.flatMap((r) => r.steps).filter(isNum);
  const values = lines.flatMap((l) => l.values).filter(isNum);
  const rate = prefixes[0] !== "level";
  const attrs = { "data-metric": title, "data-phase": phase.phase, class: "chart-svg task-chart" };
  const { root, sx, sy } = rate
    ? frame(steps, 0, 1, attrs)
    : frame(steps, least(values), most(values), attrs, true); // levels: whole numbers
  for (const l of lines) drawSeries(root, l, sx, sy);
  for (const c of changesOf(phase)) {
    const x = sx(c.step + 0.5);
    const mark = svg("line", { class: "level-change", x1: x, x2: x, y1: CH.t, y2: CH.h - CH.b,
                               stroke: PALETTE[Math.max(0, names.indexOf(c.family)) % PALETTE.length],
                               "data-family": c.family, "data-step": c.step });
    const tip = svg("title");
    tip.textContent = changeText(c);
    mark.append(tip);
    root.append(mark);
  }
  const legend = names.map((name, fi) =>
    el("span", { class: "legend" },
       el("span", { class: "swatch", style: `background:${PALETTE[fi % PALETTE.length]}` }), name),
  );
  const caption = el("figcaption", {}, el("span", { class: "chart-name", text: title }), ...legend);
  return el("figure", { class: "chart" }, caption, root);
}

function changeText(c) {
  const acc = isNum(c.accuracy) ? `${(100 * c.accuracy).toFixed(1)}%` : "–";
  return `after step ${c.step}: ${c.family} ${c.knob} ${c.from} → ${c.to} ` +
    `(train accuracy ${acc} over ${c.window} completions)`;
}

function changesTable(phase) {
  const changes = changesOf(phase);
  if (!changes.length) return null;
  const many = phase.runs.length > 1;
  const head = ["after step", "task", "knob", "level", "train accuracy", "completions"];
  if (many) head.unshift("run");
  const row = (c) => [
    ...(many ? [c.run] : []), c.step, c.family, c.knob, `${c.from} → ${c.to}`,
    isNum(c.accuracy) ? `${(100 * c.accuracy).toFixed(1)}%` : "–", c.window,
  ];
  return el(
    "table",
    { class: "evals curriculum", "data-phase": phase.phase },
    el("caption", { text: "curriculum: level changes" }),
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...changes.map((c) =>
      el("tr", { "data-family": c.family }, ...row(c).map((v) => el("td", { text: String(v) }))))),
  );
}

function renderCharts(ids) {
  $("#tooltip").hidden = true; // its chart is about to be replaced
  const phases = trainingPhases(ids);
  const main = [];
  const other = [];
  for (const phase of phases) {
    const { main: m, other: o } = metricsOf(phase);
    if (m.length) main.push(phaseBlock(phase, m, true));
    if (o.length) other.push(phaseBlock(phase, o));
  }
  $("#charts").replaceChildren(
    ...(main.length
      ? main
      : [
          el("p", {
            class: "muted",
            text: ids.length ? "no training steps logged yet" : "pick a run above",
          }),
        ]),
  );
  $("#more-charts").replaceChildren(...other);
  $("#more-charts-box").hidden = !other.length;
}

function phaseBlock(phase, metrics, main = false) {
  const title =
    phase.kind && phase.kind !== phase.phase ? `${phase.phase} (${phase.kind})` : phase.phase;
  const charts = metrics.map(([name, key]) => chart(phase, name, key));
  // the per-task charts come right after the accuracy and held-out ones
  const at = metrics.findIndex(([name]) => !["accuracy", "heldout_pass1", "heldout_greedy"].includes(name));
  if (main) charts.splice(at < 0 ? charts.length : at, 0, ...taskCharts(phase));
  const grid = el("div", { class: "chart-grid" }, ...charts);
  return el(
    "div",
    { class: "phase-charts", "data-phase": phase.phase },
    el("h3", { text: title }),
    grid,
    main ? changesTable(phase) : null,
  );
}

/* ---------------------------------------------------------------- one SVG chart */

const CH = { w: 360, h: 180, l: 48, r: 12, t: 10, b: 24 };

function niceStep(range, n) {
  const raw = range / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

function axis(lo, hi, integer) {
  // {lo, hi, ticks}: the domain and tick values of an axis holding [lo, hi].
  if (lo === hi && lo === 0 && !integer) hi = 1;
  if (lo === hi) {
    const pad = integer ? 1 : Math.abs(lo) * 0.1 || 1;
    lo -= integer && lo - pad < 0 ? 0 : pad;
    hi += pad;
  }
  let step = niceStep(hi - lo, integer ? 5 : 4);
  if (integer) step = Math.max(1, Math.round(step));
  if (!integer) {
    lo = Math.floor(lo / step + 1e-9) * step;
    hi = Math.ceil(hi / step - 1e-9) * step;
  }
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  }
  return { lo, hi, ticks, step };
}

function least(values) {
  return values.reduce((a, b) => (b < a ? b : a), Infinity);
}

function tickLabel(v, step) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1e5 || step < 1e-3) {
    const digits = Math.floor(Math.log10(Math.abs(v))) - Math.floor(Math.log10(step) + 1e-9);
    return v.toExponential(Math.min(4, Math.max(0, digits)));
  }
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(decimals);
}

function most(values) {
  return -least(values.map((v) => -v));
}

function frame(xs, yLo, yHi, attrs, yInteger = false) {
  // An empty chart: the axes of steps `xs` against [yLo, yHi], and the scales into the SVG.
  const xa = axis(least(xs), most(xs), true);
  const ya = axis(yLo, yHi, yInteger);
  const sx = (x) => CH.l + ((x - xa.lo) / (xa.hi - xa.lo)) * (CH.w - CH.l - CH.r);
  const sy = (y) => CH.t + (1 - (y - ya.lo) / (ya.hi - ya.lo)) * (CH.h - CH.t - CH.b);
  const root = svg("svg", { width: CH.w, height: CH.h, viewBox: `0 0 ${CH.w} ${CH.h}`, ...attrs });
  drawAxes(root, xa, ya, sx, sy);
  return { root, xa, ya, sx, sy };
}

function chart(phase, name, key) {
  // held-out evaluations come every rl.eval_every steps: their line bridges the steps between
  const bridge = key.startsWith("heldout_");
  const series = phase.runs.map((r) => ({
    id: r.id,
    steps: r.steps,
    values: r.series[key] || [],
    bridge,
  }));
  const points = series
    .flatMap((s) => s.steps.map((x, i) => [x, s.values[i]]))
    .filter((p) => isNum(p[1]) && isNum(p[0]));
  const steps = series.flatMap((s) => s.steps).filter(isNum); // one x range for the whole phase
  const values = points.map((p) => p[1]);
  const { root, xa, sx, sy } = frame(steps, least(values), most(values), {
    "data-metric": name,
    "data-phase": phase.phase,
    "data-key": key,
    class: "chart-svg",
  });
  for (const s of series) drawSeries(root, s, sx, sy);
  const guide = svg("line", {
    class: "guide",
    y1: CH.t,
    y2: CH.h - CH.b,
    x1: 0,
    x2: 0,
    visibility: "hidden",
  });
  root.append(guide);
  const hit = svg("rect", {
    class: "hit",
    x: CH.l,
    y: CH.t,
    width: CH.w - CH.l - CH.r,
    height: CH.h - CH.t - CH.b,
  });
  root.append(hit);
  const ctx = { phase: phase.phase, name, key, series, sx, xa, guide };
  hit.addEventListener("mousemove", (ev) => hover(ctx, ev));
  hit.addEventListener("mouseleave", () => {
    $("#tooltip").hidden = true;
    guide.setAttribute("visibility", "hidden");
  });
  hit.addEventListener("click", (ev) => jumpToStep(phase.phase, nearestStep(ctx, ev), series));
  if (hasRollouts(phase.phase)) root.classList.add("clickable");
  return el("figure", { class: "chart" }, chartTitle(name, key, series), root);
}

function chartTitle(name, key, series) {
  const label = LABELS[name] || (name.startsWith("reward_") ? "reward: " + name.slice(7) : name);
  const title = el("figcaption", {}, el("span", { class: "chart-name", text: label }));
  if (key !== name || !(name in LABELS)) title.append(el("code", { text: key }));
  if (series.length === 1) {
    const last = [...series[0].values].reverse().find(isNum);
    if (last !== undefined) title.append(el("span", { class: "last", text: "last " + fmt(last) }));
  }
  return title;
}

function drawAxes(root, xa, ya, sx, sy) {
  for (const t of ya.ticks) {
    root.append(svg("line", { class: "grid", x1: CH.l, x2: CH.w - CH.r, y1: sy(t), y2: sy(t) }));
    const label = svg("text", { class: "tick", x: CH.l - 5, y: sy(t) + 3.5, "text-anchor": "end" });
    label.textContent = tickLabel(t, ya.step);
    root.append(label);
  }
  for (const t of xa.ticks) {
    root.append(
      svg("line", { class: "xtick", x1: sx(t), x2: sx(t), y1: CH.h - CH.b, y2: CH.h - CH.b + 4 }),
    );
    const label = svg("text", {
      class: "tick",
      x: sx(t),
      y: CH.h - CH.b + 15,
      "text-anchor": "middle",
    });
    label.textContent = String(t);
    root.append(label);
  }
  root.append(
    svg("line", { class: "axis", x1: CH.l, x2: CH.w - CH.r, y1: CH.h - CH.b, y2: CH.h - CH.b }),
  );
  root.append(svg("line", { class: "axis", x1: CH.l, x2: CH.l, y1: CH.t, y2: CH.h - CH.b }));
}

function drawSeries(root, s, sx, sy) {
  let d = "";
  let pen = false;
  let n = 0;
  let last = null;
  s.steps.forEach((x, i) => {
    const y = s.values[i];
    if (!isNum(y)) {
      if (!s.bridge) pen = false;
      return;
    }
    if (pen && s.stepped) {
      // a level holds until halfway to the next step, where a change is marked
      const mid = sx((last + x) / 2).toFixed(1);
      d += `H${mid}V${sy(y).toFixed(1)}H${sx(x).toFixed(1)}`;
    } else d += `${pen ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
    pen = true;
    last = x;
    n += 1;
  });
  if (!n) return;
  const colour = s.colour || colourOf(s.id); // a family's colour on the per-task charts
  root.append(
    svg("path", {
      class: "series",
      d,
      stroke: colour,
      "stroke-dasharray": s.colour ? s.dash : dashOf(s.id),
      "data-run": s.id,
      "data-family": s.family,
      "data-key": s.key,
      "data-points": n,
    }),
  );
  if (n <= 60) {
    s.steps.forEach((x, i) => {
      if (isNum(s.values[i])) {
        root.append(
          svg("circle", { class: "pt", cx: sx(x), cy: sy(s.values[i]), r: 2.4, fill: colour }),
        );
      }
    });
  }
}

function nearestStep(ctx, ev) {
  const box = ev.currentTarget.ownerSVGElement.getBoundingClientRect();
  const x = ((ev.clientX - box.left) / box.width) * CH.w;
  let best = null;
  for (const s of ctx.series) {
    for (const step of s.steps) {
      if (best === null || Math.abs(ctx.sx(step) - x) < Math.abs(ctx.sx(best) - x)) best = step;
    }
  }
  return best;
}

function hover(ctx, ev) {
  const step = nearestStep(ctx, ev);
  if (step === null) return;
  ctx.guide.setAttribute("x1", ctx.sx(step));
  ctx.guide.setAttribute("x2", ctx.sx(step));
  ctx.guide.setAttribute("visibility", "visible");
  const tip = $("#tooltip");
  const rows = ctx.series.map((s) => {
    const i = s.steps.indexOf(step);
    return el(
      "div",
      { class: "tip-row" },
      swatch(s.id),
      el("span", { text: s.id }),
      el("b", { text: fmt(i >= 0 ? s.values[i] : null) }),
    );
  });
  const hint = hasRollouts(ctx.phase)
    ? el("div", { class: "tip-hint", text: "click: rollouts of this step" })
    : null;
  tip.replaceChildren(
    el("div", { class: "tip-head", text: `${ctx.phase} · step ${step} · ${ctx.key}` }),
    ...rows,
    hint,
  );
  tip.hidden = false;
  const left = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  tip.style.left = `${left}px`;
  tip.style.top = `${ev.clientY + 14}px`;
}

function hasRollouts(phase, runId) {
  const runs = runId ? [runById(runId)] : state.runs;
  return runs.some((r) => r && (r.phases || []).some((p) => p.phase === phase && p.rollouts > 0));
}

function jumpToStep(phase, step, series) {
  if (step === null) return;
  const current = $("#f-run").value;
  const ids = [current, ...series.map((s) => s.id)];
  const id = ids.find((r) => hasRollouts(phase, r));
  if (!id) return;
  $("#f-run").value = id;
  syncPhases();
  $("#f-phase").value = phase;
  ["f-step-min", "f-step-max"].forEach((i) => {
    $("#" + i).value = "";
  });
  $("#f-step").value = step;
  $("#tooltip").hidden = true;
  onRolloutContextChange().then(() => {
    $("#sec-rollouts").scrollIntoView({ behavior: "smooth", block: "start" });
  });
}

/* ---------------------------------------------------------------- evaluations */

function isRate(key) {
  return /^(pass|maj|greedy$|format|think_rate|accuracy|correct)/.test(key);
}

function evalValue(key, v) {
  if (isRate(key) && isNum(v)) return (v * 100).toFixed(1) + "%";
  return fmt(v);
}

function evalColumns(rows) {
  const keys = new Set();
  rows.forEach((r) =>
    Object.entries(r || {}).forEach(([k, v]) => {
      if (typeof v === "number" || v === null) keys.add(k);
    }),
  );
  keys.delete("k");
  if (keys.has("pass@1")) keys.delete("pass1");
  const rank = (k) => {
    const i = EVAL_ORDER.findIndex((p) => (p.endsWith("@") ? k.startsWith(p) : k === p));
    return i < 0 ? EVAL_ORDER.length : i;
  };
  return [...keys].sort(
    (a, b) => rank(a) - rank(b) || a.localeCompare(b, undefined, { numeric: true }),
  );
}

// Evaluations `zeroth eval` saved in the run directory (not in the ledger: no samples to browse).
const isSaved = (e) => e.source === "zeroth eval";

function renderEvals(ids) {
  const blocks = ids.map((id) => {
    const evals = state.evals.get(id)?.data?.evals || [];
    const head = el("h3", {}, swatch(id), id);
    if (!evals.length)
      return el(
        "div",
        { class: "eval-run" },
        head,
        el("p", { class: "muted", text: "no evaluation yet" }),
      );
    return el(
      "div",
      { class: "eval-run", "data-run": id },
      head,
      evalTable(evals, runById(id)?.task),
      checkpointCharts(evals),
      breakdownTables(evals, "by_task", "by task", "task"),
      breakdownTables(evals, "by_difficulty", "by difficulty", "level"),
    );
  });
  $("#evals").replaceChildren(
    ...(blocks.length ? blocks : [el("p", { class: "muted", text: "pick a run above" })]),
  );
}

function evalTable(evals, runTask) {
  const own = evals.filter((e) => !isSaved(e));
  const saved = evals.filter(isSaved);
  const cols = evalColumns(evals.map((e) => e.metrics));
  const head = el(
    "tr",
    {},
    el("th", { text: "evaluation" }),
    ...cols.map((c) => el("th", { title: c }, ...breakable(c))),
    el("th", { text: "samples" }),
  );
  const rows = own.map((e) =>
    el(
      "tr",
      { class: "eval", "data-phase": e.phase },
      el("td", { class: "label", title: e.phase, text: e.label || e.phase }),
      ...cols.map((c) => el("td", { class: "num", text: evalValue(c, e.metrics?.[c]) })),
      el("td", { class: "num", text: fmt(e.samples) }),
    ),
  );
  if (own.length > 1) rows.push(changeRow(own, cols));
  if (saved.length) {
    rows.push(
      el(
        "tr",
        { class: "saved-head" },
        el("td", { colspan: cols.length + 2, text: "scored afterwards by zeroth eval" }),
      ),
    );
    rows.push(...saved.map((e) => savedRow(e, cols, runTask)));
  }
  const table = el("table", { class: "evals" }, el("thead", {}, head), el("tbody", {}, ...rows));
  return el("div", { class: "table-scroll" }, table); // scrolls itself, never the page
}

function breakable(name) {
  // A metric name that may wrap after its underscores (think_rate) in a narrow table.
  return name.split("_").flatMap((part, i) => (i ? ["_", el("wbr"), part] : [part]));
}

function savedLabel(e, runTask) {
  // The task is named when it is not the run's own.
  return e.task && e.task !== runTask ? `${e.label} · ${e.task}` : e.label;
}

function savedRow(e, cols, runTask) {
  const attrs = {
    class: `eval saved${e.error ? " broken" : ""}`,
    "data-source": e.source,
    "data-file": e.file,
    "data-tag": e.checkpoint?.tag,
    "data-step": e.checkpoint?.step,
  };
  const label = el("td", { class: "label", title: e.file, text: savedLabel(e, runTask) });
  if (e.error) {
    const why = el("td", { class: "bad", colspan: cols.length + 1, text: e.error });
    return el("tr", attrs, label, why);
  }
  return el(
    "tr",
    attrs,
    label,
    ...cols.map((c) => el("td", { class: "num", text: evalValue(c, e.metrics?.[c]) })),
    el("td", { class: "num", text: fmt(e.samples) }),
  );
}

/* Checkpoint evaluations: pass@1 and greedy against the step, one chart per task and stage. */

const EVAL_LINES = [
  ["pass@1", "#2f6fdf", ""],
  ["greedy", "#e4572e", "4 3"],
];

function checkpointCharts(evals) {
  const groups = new Map();
  for (const e of evals) {
    const c = e.checkpoint;
    if (!isSaved(e) || e.error || !c || !isNum(c.step) || c.tag === "final") continue;
    const key = JSON.stringify([e.task, c.stage]);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(e);
  }
  const charts = [...groups.values()]
    .filter((g) => g.length >= 2)
    .map((g) => evalChart(g.sort((a, b) => a.checkpoint.step - b.checkpoint.step)));
  return charts.length ? el("div", { class: "chart-grid eval-charts" }, ...charts) : null;
}

function evalRate(e, key) {
  const m = e.metrics || {};
  return key === "pass@1" && !isNum(m[key]) ? m.pass1 : m[key];
}

function evalChart(entries) {
  const task = entries[0].task;
  const stage = entries[0].checkpoint.stage;
  const steps = entries.map((e) => e.checkpoint.step);
  const values = entries.flatMap((e) => EVAL_LINES.map(([k]) => evalRate(e, k))).filter(isNum);
  const { root, sx, sy } = frame(steps, 0, values.length ? most(values) : 0, {
    "data-metric": "eval-pass@1",
    "data-task": task,
    "data-stage": stage,
    class: "chart-svg eval-chart",
  });
  for (const [key, colour, dash] of EVAL_LINES) {
    const pts = entries.filter((e) => isNum(evalRate(e, key)));
    if (!pts.length) continue;
    const xy = (e) => [sx(e.checkpoint.step), sy(evalRate(e, key))];
    const d = pts.map((e, i) => `${i ? "L" : "M"}${xy(e)[0].toFixed(1)},${xy(e)[1].toFixed(1)}`);
    root.append(
      svg("path", {
        class: "series",
        d: d.join(""),
        stroke: colour,
        "stroke-dasharray": dash || null,
        "data-key": key,
        "data-points": pts.length,
      }),
    );
    for (const e of pts) {
      const [cx, cy] = xy(e);
      const dot = svg("circle", { class: "pt", cx, cy, r: 2.8, fill: colour });
      const tip = svg("title");
      tip.textContent = `${e.checkpoint.tag} · ${key} ${evalValue(key, evalRate(e, key))}`;
      dot.append(tip);
      root.append(dot);
    }
  }
  const legend = EVAL_LINES.map(([key, colour]) =>
    el(
      "span",
      { class: "legend" },
      el("span", { class: "swatch", style: `background:${colour}` }),
      key,
    ),
  );
  const title = el(
    "figcaption",
    {},
    el("span", { class: "chart-name", text: `checkpoints · ${stage || "?"} · ${task || "?"}` }),
    ...legend,
  );
  return el("figure", { class: "chart" }, title, root);
}

function changeRow(evals, cols) {
  const first = evals[0].metrics || {};
  const last = evals[evals.length - 1].metrics || {};
  return el(
    "tr",
    { class: "change" },
    el("td", { class: "label", text: "change, first → last" }),
    ...cols.map((c) => {
      if (c === "problems" || !isNum(first[c]) || !isNum(last[c])) return el("td", {});
      const d = last[c] - first[c];
      const text = isRate(c) ? `${d > 0 ? "+" : ""}${(d * 100).toFixed(1)} pt` : signed(d);
      return el("td", { class: `num ${d > 0 ? "up" : d < 0 ? "down" : ""}`, text });
    }),
    el("td", {}),
  );
}

function difficultyLabel(e) {
  return isSaved(e) && e.task ? `${e.label} · ${e.task}` : e.label || e.phase;
}

function breakdownTables(evals, key, caption, head) {
  // An evaluation's numbers per difficulty level (by_difficulty) or per family of a mix
  // (by_task), one table per evaluation that has them.
  const withLevels = evals.filter((e) => e[key] && Object.keys(e[key]).length);
  if (!withLevels.length) return null;
  const kind = key === "by_task" ? "by-task" : "difficulty";
  return el(
    "div",
    { class: "by-difficulty" },
    ...withLevels.map((e) => {
      const levels = Object.entries(e[key]);
      const cols = evalColumns(levels.map(([, m]) => m));
      return el(
        "table",
        { class: `evals ${kind}`, "data-phase": e.phase, "data-file": e.file },
        el("caption", { text: `${caption} · ${difficultyLabel(e)}` }),
        el(
          "thead",
          {},
          el("tr", {}, el("th", { text: head }), ...cols.map((c) => el("th", { text: c }))),
        ),
        el(
          "tbody",
          {},
          ...levels.map(([level, m]) =>
            el(
              "tr",
              {},
              el("td", { class: "label", text: level }),
              ...cols.map((c) => el("td", { class: "num", text: evalValue(c, m?.[c]) })),
            ),
          ),
        ),
      );
    }),
  );
}

/* ---------------------------------------------------------------- rollout browser */

function syncPhases() {
  const run = runById($("#f-run").value);
  const phases = (run?.phases || []).filter((p) => p.rollouts > 0).map((p) => [p.phase, p.phase]);
  return fillSelect($("#f-phase"), phases, phases.find(([p]) => p.startsWith("rl"))?.[0]);
}

function rolloutQuery() {
  const v = (id) => $("#" + id).value.trim();
  return {
    run: v("f-run"),
    phase: v("f-phase"),
    step: v("f-step"),
    step_min: v("f-step-min"),
    step_max: v("f-step-max"),
    task: v("f-task"),
    reward_min: v("f-reward-min"),
    reward_max: v("f-reward-max"),
    len_min: v("f-len-min"),
    len_max: v("f-len-max"),
    q: v("f-q"),
    order: v("f-order"),
    offset: state.rollouts.offset,
    limit: $("#r-limit").value,
  };
}

async function loadRanges() {
  const run = $("#f-run").value;
  const phase = $("#f-phase").value;
  if (!run || !phase) {
    state.rollouts.ranges = null;
    return;
  }
  const r = await api("steps", { run, phase });
  state.rollouts.ranges = r;
  const tasks = (r.tasks || []).filter((t) => t !== null);
  fillSelect($("#f-task"), [["", tasks.length ? "all" : "–"], ...tasks.map((t) => [t, t])], "");
  const range = (a, lo, hi, f) => {
    if (a && isNum(a[0])) {
      $("#" + lo).placeholder = f(a[0]);
      $("#" + hi).placeholder = f(a[1]);
    }
  };
  range(r.steps, "f-step-min", "f-step-max", String);
  range(r.reward, "f-reward-min", "f-reward-max", fmt);
  range(r.len, "f-len-min", "f-len-max", String);
  if (r.steps && isNum(r.steps[0])) $("#f-step").placeholder = `${r.steps[0]}–${r.steps[1]}`;
}

async function loadRollouts() {
  const seq = ++state.rollouts.seq;
  const q = rolloutQuery();
  const body = $("#rollouts tbody");
  if (!q.run || !q.phase) {
    body.replaceChildren();
    setRolloutCount(0, 0, 0, q.run ? "this run has no rollouts yet" : "no run");
    return;
  }
  let data;
  try {
    data = await api("rollouts", q);
  } catch (err) {
    if (seq !== state.rollouts.seq) return;
    body.replaceChildren();
    setRolloutCount(0, 0, 0, err.message);
    $("#rollout-count").classList.add("bad");
    return;
  }
  if (seq !== state.rollouts.seq) return; // a newer query was sent meanwhile
  state.rollouts.total = data.total;
  body.replaceChildren(...data.rows.map(rolloutRow));
  setRolloutCount(data.offset, data.rows.length, data.total);
  markPickedRow();
}

function setRolloutCount(offset, n, total, note) {
  const box = $("#rollout-count");
  box.classList.remove("bad");
  box.dataset.total = total;
  box.textContent =
    note || (total ? `rows ${offset + 1}–${offset + n} of ${total}` : "no rollouts match");
  $("#r-prev").disabled = offset <= 0;
  $("#r-next").disabled = offset + n >= total;
}

// A reward component's value: a number, null (not scored) or "nan"/"inf"/"-inf".
function componentText(v) {
  if (v === null || v === undefined) return "not scored";
  if (typeof v === "string") return { nan: "NaN", inf: "+∞", "-inf": "−∞" }[v] || v;
  return fmt(v);
}

function componentClass(v) {
  if (typeof v === "string") return "odd";
  return isNum(v) && v > 0 ? "pos" : isNum(v) && v < 0 ? "neg" : "zero";
}

function componentChips(rewards) {
  return el(
    "span",
    { class: "comps" },
    ...Object.entries(rewards || {}).map(([k, v]) =>
      el(
        "span",
        {
          class: `comp ${componentClass(v)}`,
          title: `${k}: ${v === null || v === undefined ? "not scored" : componentText(v)}`,
        },
        el("i", { text: k }),
        " " + (v === null || v === undefined ? "–" : componentText(v)),
      ),
    ),
  );
}

function advClass(v) {
  return !isNum(v) || Math.abs(v) < 1e-9 ? "zero" : v > 0 ? "pos" : "neg";
}

function rolloutRow(r) {
  // The list carries the first few hundred characters of reasoning and answer; the group
  // view (click the row) reads the whole completion.
  const reasoning = r.reasoning_snippet || "";
  const answer = r.answer_snippet || "";
  const snippet = el("td", { class: "snippet", title: `${r.n_chars ?? "?"} characters` });
  if (answer) {
    snippet.append(
      el("span", { class: "snip-answer", text: shorten(answer, reasoning ? 40 : 110) }),
    );
  }
  if (reasoning) snippet.append(el("span", { class: "snip-text", text: shorten(reasoning, 110) }));
  if (!answer && !reasoning) {
    const text = r.n_chars ? `(empty tags · ${r.n_chars} characters: open to see)` : "(empty)";
    snippet.append(el("span", { class: "snip-text", text }));
  }
  return el(
    "tr",
    {
      class: "rollout",
      tabindex: 0,
      "data-id": r.id,
      "data-phase": r.phase,
      "data-step": r.step,
      "data-prompt": r.prompt_idx,
      "data-sample": r.sample_idx,
      title: "open this prompt's group",
      onclick: () =>
        openGroup({
          run: $("#f-run").value,
          phase: r.phase,
          step: r.step,
          prompt: r.prompt_idx,
          sample: r.sample_idx,
        }),
      onkeydown: (ev) => {
        if (ev.key === "Enter") ev.currentTarget.click();
      },
    },
    el("td", { class: "num", text: r.step }),
    el("td", { class: "num", text: `${r.prompt_idx} · ${r.sample_idx}` }),
    el("td", { class: "prompt", title: r.prompt, text: shorten(r.prompt, 60) }),
    el("td", { class: "num strong", text: fmt(r.reward) }),
    el("td", {}, componentChips(r.rewards)),
    el("td", { class: `num adv ${advClass(r.advantage)}`, text: signed(r.advantage) }),
    el("td", { class: "num", text: r.n_tokens }),
    snippet,
  );
}

async function onRolloutContextChange() {
  // The run or phase changed: new ranges, first page.
  state.rollouts.offset = 0;
  state.rollouts.seen = rolloutSignature();
  try {
    await loadRanges();
  } catch (err) {
    showError(err);
  }
  await loadRollouts();
}

function onFilterChange() {
  state.rollouts.offset = 0;
  loadRollouts();
}

function setupRolloutFilters() {
  const later = debounce(onFilterChange, 250);
  for (const id of ROLLOUT_INPUTS) {
    const input = $("#" + id);
    input.addEventListener(input.tagName === "SELECT" ? "change" : "input", later);
  }
  $("#f-run").addEventListener("change", () => {
    syncPhases();
    onRolloutContextChange();
  });
  $("#f-phase").addEventListener("change", onRolloutContextChange);
  $("#r-limit").addEventListener("change", onFilterChange);
  $("#f-first").addEventListener("click", () => setStep(0));
  $("#f-last").addEventListener("click", () => setStep(1));
  $("#f-clear").addEventListener("click", () => {
    ROLLOUT_INPUTS.forEach((id) => {
      if (id !== "f-order") $("#" + id).value = "";
    });
    onFilterChange();
  });
  $("#r-prev").addEventListener("click", () => page(-1));
  $("#r-next").addEventListener("click", () => page(1));
}

function setStep(which) {
  const steps = state.rollouts.ranges?.steps;
  if (!steps || !isNum(steps[which])) return;
  $("#f-step").value = steps[which];
  $("#f-step-min").value = "";
  $("#f-step-max").value = "";
  onFilterChange();
}

function page(dir) {
  const limit = Number($("#r-limit").value);
  const next = state.rollouts.offset + dir * limit;
  if (next < 0 || next >= state.rollouts.total) return;
  state.rollouts.offset = next;
  loadRollouts();
}

/* ---------------------------------------------------------------- group view */

function highlighted(text) {
  // The reasoning as text nodes, with each reflection phrase in a <mark>.
  const out = document.createDocumentFragment();
  let at = 0;
  for (const m of REFLECTION_RE ? String(text).matchAll(REFLECTION_RE) : []) {
    out.append(text.slice(at, m.index), el("mark", { class: "reflect", text: m[0] }));
    at = m.index + m[0].length;
  }
  out.append(text.slice(at));
  return out;
}

function reasoningBox(text) {
  return text
    ? el("div", { class: "reasoning", title: "reasoning (inside <think>)" }, highlighted(text))
    : el("div", { class: "reasoning empty", text: "no reasoning" });
}

function answerBox(text) {
  return el("div", {
    class: `answer${text ? "" : " empty"}`,
    title: "answer",
    text: text || "no answer",
  });
}

async function openGroup(where) {
  state.group = where;
  markPickedRow();
  const box = $("#group");
  let g;
  try {
    g = await api("group", {
      run: where.run,
      phase: where.phase,
      step: where.step,
      prompt: where.prompt,
    });
  } catch (err) {
    box.replaceChildren(el("p", { class: "bad", text: err.message }));
    box.hidden = false;
    return;
  }
  if (state.group !== where) return;
  box.replaceChildren(
    groupHeader(g, where),
    groupPrompt(g),
    el("div", { class: "samples" }, ...g.samples.map((s) => sampleCard(s, where.sample))),
  );
  box.hidden = false;
  box.scrollIntoView({ behavior: "smooth", block: "start" });
}

function groupHeader(g, where) {
  const rewards = g.samples.map((s) => s.reward).filter(isNum);
  const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
  const steps = state.rollouts.ranges?.steps;
  const nav = (label, step) =>
    el("button", {
      type: "button",
      text: label,
      title: "the same prompt slot one step away (a different prompt: each step draws new ones)",
      disabled: !steps || step < steps[0] || step > steps[1],
      onclick: () => openGroup({ ...where, step, sample: null }),
    });
  return el(
    "div",
    { class: "group-head" },
    el("h3", { text: `${g.phase} · step ${g.step} · prompt ${g.prompt_idx}` }),
    el("span", {
      class: "muted",
      text: [
        g.task,
        g.difficulty !== null && g.difficulty !== undefined ? `difficulty ${g.difficulty}` : null,
        `${g.samples.length} samples`,
        `mean reward ${fmt(mean)}`,
      ]
        .filter(Boolean)
        .join(" · "),
    }),
    el("span", { class: "spacer" }),
    el(
      "span",
      { class: "group-buttons" }, // wrap as one onto a narrow screen's next line
      nav("‹ previous step", g.step - 1),
      nav("next step ›", g.step + 1),
      el("button", {
        type: "button",
        class: "close",
        title: "close",
        text: "×",
        onclick: () => {
          state.group = null;
          $("#group").hidden = true;
          markPickedRow();
        },
      }),
    ),
  );
}

function groupPrompt(g) {
  return el(
    "div",
    { class: "group-prompt" },
    el(
      "div",
      {},
      el("div", { class: "caption", text: "prompt" }),
      el("pre", { class: "prompt-text", text: g.prompt }),
    ),
    el(
      "div",
      { class: "gold" },
      el("div", { class: "caption", text: "gold answer" }),
      el("pre", { class: "gold-text", text: g.gold ?? "–" }),
    ),
  );
}

function sampleCard(s, picked) {
  const head = el(
    "div",
    { class: "sample-head" },
    el("span", { class: "sample-id", text: `sample ${s.sample_idx}` }),
    el("span", { class: "total", title: "total reward", text: fmt(s.reward) }),
    el("span", {
      class: `adv ${advClass(s.advantage)}`,
      title: "advantage",
      text: "adv " + signed(s.advantage),
    }),
    el("span", { class: "muted", text: `${s.n_tokens} tok` }),
    s.reflections
      ? el("span", {
          class: "reflections",
          text: `${s.reflections} reflection${s.reflections > 1 ? "s" : ""}`,
        })
      : null,
  );
  const rewards = el(
    "dl",
    { class: "rewards" },
    ...Object.entries(s.rewards || {}).flatMap(([k, v]) => [
      el("dt", { text: k }),
      el("dd", {
        class: typeof v === "string" ? "odd" : isNum(v) && v > 0 ? "pos" : "",
        text: componentText(v),
      }),
    ]),
  );
  const extra =
    s.extra && Object.keys(s.extra).length
      ? el(
          "details",
          {},
          el("summary", { text: "extra" }),
          el("pre", { text: JSON.stringify(s.extra, null, 1) }),
        )
      : null;
  return el(
    "article",
    {
      class: `sample adv-${advClass(s.advantage)}${s.sample_idx === picked ? " picked" : ""}`,
      "data-sample": s.sample_idx,
    },
    head,
    rewards,
    el("div", { class: "caption", text: "reasoning" }),
    reasoningBox(s.reasoning),
    el("div", { class: "caption", text: "answer" }),
    answerBox(s.answer_text),
    el(
      "details",
      { class: "raw" },
      el("summary", { text: "raw completion" }),
      el("pre", { text: s.completion }),
    ),
    extra,
  );
}

function markPickedRow() {
  const g = state.group;
  document.querySelectorAll("tr.rollout").forEach((tr) => {
    const on =
      g &&
      g.run === $("#f-run").value &&
      tr.dataset.phase === g.phase &&
      Number(tr.dataset.step) === g.step &&
      Number(tr.dataset.prompt) === g.prompt;
    tr.classList.toggle("in-group", Boolean(on));
  });
}

/* ---------------------------------------------------------------- eval samples */

function syncEvalPhases() {
  const id = $("#e-run").value;
  const evals = state.evals.get(id)?.data?.evals;
  if (!evals) return false;
  const options = evals
    .filter((e) => !isSaved(e))
    .map((e) => [e.phase, `${e.label || e.phase} (${e.samples})`]);
  return fillSelect($("#e-phase"), options, options.length ? options[options.length - 1][0] : "");
}

async function loadEvalSamples() {
  const seq = ++state.evalSamples.seq;
  const v = (id) => $("#" + id).value.trim();
  const q = {
    run: v("e-run"),
    phase: v("e-phase"),
    problem: v("e-problem"),
    correct: v("e-correct"),
    q: v("e-q"),
    offset: state.evalSamples.offset,
    limit: state.evalSamples.limit,
  };
  const box = $("#eval-samples");
  if (!q.run || !q.phase) {
    box.replaceChildren(el("p", { class: "muted", text: "no evaluation in this run yet" }));
    setEvalCount(0, 0, 0);
    return;
  }
  let data;
  try {
    data = await api("eval_samples", q);
  } catch (err) {
    if (seq === state.evalSamples.seq)
      box.replaceChildren(el("p", { class: "bad", text: err.message }));
    return;
  }
  if (seq !== state.evalSamples.seq) return;
  state.evalSamples.total = data.total;
  box.replaceChildren(...data.rows.map(evalCard));
  setEvalCount(q.offset, data.rows.length, data.total);
}

function setEvalCount(offset, n, total) {
  const box = $("#eval-count");
  box.dataset.total = total;
  const shown = `samples ${offset + 1}–${offset + n} of ${total}`;
  box.textContent = total ? shown : "no samples match";
  $("#e-prev").disabled = offset <= 0;
  $("#e-next").disabled = offset + n >= total;
}

function evalCard(r) {
  const which = r.sample_idx < 0 ? "greedy" : "sample " + r.sample_idx;
  return el(
    "article",
    { class: `eval-sample ${r.correct ? "right" : "wrong"}`, "data-problem": r.problem_idx },
    el(
      "div",
      { class: "sample-head" },
      el("span", {
        class: "sample-id",
        text: `problem ${r.problem_idx} · ${which}`,
      }),
      el("span", {
        class: `verdict ${r.correct ? "pos" : "neg"}`,
        text: r.correct ? "✓ correct" : "✗ wrong",
      }),
      el("span", { class: "muted", text: `${r.n_tokens} tok · gold ${r.gold ?? "–"}` }),
    ),
    el("pre", { class: "prompt-text", text: r.prompt }),
    el("div", { class: "caption", text: "reasoning" }),
    reasoningBox(r.reasoning),
    el("div", { class: "caption", text: "answer" }),
    answerBox(r.answer_text),
  );
}

function setupEvalFilters() {
  const reload = () => {
    state.evalSamples.offset = 0;
    loadEvalSamples();
  };
  const later = debounce(reload, 250);
  ["e-problem", "e-q"].forEach((id) => $("#" + id).addEventListener("input", later));
  $("#e-correct").addEventListener("change", reload);
  $("#e-phase").addEventListener("change", reload);
  $("#e-run").addEventListener("change", async () => {
    await fetchPerRun(state.evals, "evals", [$("#e-run").value]).catch(showError);
    syncEvalPhases();
    reload();
  });
  const step = (dir) => {
    const next = state.evalSamples.offset + dir * state.evalSamples.limit;
    if (next < 0 || next >= state.evalSamples.total) return;
    state.evalSamples.offset = next;
    loadEvalSamples();
  };
  $("#e-prev").addEventListener("click", () => step(-1));
  $("#e-next").addEventListener("click", () => step(1));
}

/* ---------------------------------------------------------------- live updates */

function rolloutSignature() {
  const run = runById($("#f-run").value);
  const phase = (run?.phases || []).find((p) => p.phase === $("#f-phase").value);
  return JSON.stringify([run?.id, phase?.phase, phase?.rollouts, phase?.steps]);
}

function evalSignature() {
  const id = $("#e-run").value;
  return JSON.stringify([id, $("#e-phase").value, state.evals.get(id)?.data]);
}

async function refreshBrowsers() {
  const phaseChanged = syncPhases();
  const sig = rolloutSignature();
  if (phaseChanged || sig !== state.rollouts.seen) {
    const context =
      phaseChanged || JSON.parse(sig)[1] !== JSON.parse(state.rollouts.seen || "[]")[1];
    state.rollouts.seen = sig;
    if (context) await onRolloutContextChange();
    else {
      await loadRanges().catch(showError);
      await loadRollouts();
    }
  }
  await fetchPerRun(state.evals, "evals", [$("#e-run").value].filter(Boolean));
  const evalPhaseChanged = syncEvalPhases();
  const esig = evalSignature();
  if (evalPhaseChanged || esig !== state.evalSamples.seen) {
    state.evalSamples.seen = esig;
    await loadEvalSamples();
  }
}

function setLive(ok) {
  const live = $("#live");
  live.classList.toggle("ok", ok);
  live.classList.toggle("down", !ok);
  const running = state.runs.filter((r) => r.status === "running").length;
  const when = new Date().toLocaleTimeString();
  $("#live-text").textContent = ok
    ? `${running ? running + " running · " : ""}updated ${when}`
    : `server unreachable · retrying (${when})`;
}

async function poll() {
  try {
    await refreshRuns();
    await refreshSelected();
    await refreshBrowsers();
    showError(null);
    setLive(true);
  } catch (err) {
    showError(err);
    setLive(false);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// Enter in a filter box must not submit (reload) the page; done here, not inline: the CSP
// allows no inline script.
document.querySelectorAll("form.filters").forEach((f) =>
  f.addEventListener("submit", (ev) => ev.preventDefault()),
);
setupRolloutFilters();
setupEvalFilters();
poll();
