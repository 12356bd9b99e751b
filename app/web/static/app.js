// The desk page: plain JavaScript, no build step, no request outside the service that serves it.
//
// Asking fetches the K x K pair distances of the question against its POOL nearest stored
// questions (POST /questions/explain) and, in parallel, the service's own answer at the current
// rule (POST /questions/similar). Moving a slider re-applies the rule to the pool at once; letting
// go asks the service again and adds any match the pool lacked, so the list is always what the
// service answers.
"use strict";

(() => {
  const POOL = 25;
  const SHOWN = 10; // matches listed before "show all" (the API's default limit)
  const NEAR_MISSES = 3;
  const SOURCE = "desk-page";
  const SVG = "http://www.w3.org/2000/svg";
  // The service searches a threshold below this at this (identical codes differ by rounding).
  const IDENTICAL_CODES = 1e-9;
  // Stored text inside the page's own sentences, isolated: a right-to-left override in it must not
  // turn the rest of the sentence around.
  const iso = (text) => `\u2068${text}\u2069`;

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  };
  const svg = (tag, attrs = {}) => {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    return node;
  };
  const fmt = (x, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : "–");

  const state = {
    rule: null, // the model's calibrated rule: {id, name, metric, samples, pairs, threshold, min_pairs}
    t: null,
    m: null,
    query: null, // {text, samples, mean}
    pool: new Map(), // id -> explained question
    items: new Map(), // id -> <li> in #results (kept across renders: focus and feedback survive)
    feedback: new Map(), // id -> the verdict saved for the question asked (true: duplicate)
    selected: null,
    showAll: false,
    zoom: false, // the map shows the neighbourhood of the question instead of every point
    only: null, // ids the service restricted the answer to (see confirmWithService), else null
    answers: new Map(), // "t|m" -> the service's answer at that rule: {order, pairs}
    reason: null, // the service's reason_detail for such an answer
    seq: 0, // one per question asked: answers to an older one are dropped
    ruleSeq: 0, // one per slider move: checks of an older rule are dropped
    map: null,
    colorKey: null, // null: the service's default key; "": none; else a metadata key
    admin: { token: null, timer: null },
  };

  // ------------------------------------------------------------------ HTTP

  async function api(method, path, body, headers = {}) {
    const init = { method, headers: { Accept: "application/json", ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (cause) {
      const error = new Error("the service did not answer (network error)");
      error.status = 0;
      throw error;
    }
    const raw = await response.text();
    let data = null;
    if (raw) {
      try { data = JSON.parse(raw); } catch { data = { detail: raw.slice(0, 200) }; }
    }
    if (!response.ok) {
      const error = new Error((data && data.detail) || `HTTP ${response.status}`);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  // ------------------------------------------------------------------ the rule

  const isWithin = (d, t) => d <= Math.max(t, IDENTICAL_CODES);

  function pairsWithin(candidate, t) {
    let count = 0;
    for (const row of candidate.distances) for (const d of row) if (isWithin(d, t)) count += 1;
    return count;
  }

  // Once the service has answered at the rule shown, its list is what matches, in its order; while
  // a slider moves (no answer for that rule yet) the page predicts from the pair distances, in the
  // service's order: closest pair first, then more pairs within t, then id.
  function ranked() {
    const all = [...state.pool.values()]
      .filter((c) => !state.only || state.only.has(c.id))
      .map((c) => ({ c, within: pairsWithin(c, state.t) }));
    all.sort((a, b) => a.c.distance - b.c.distance || b.within - a.within || a.c.id - b.c.id);
    const answered = state.answers.get(`${state.t}|${state.m}`);
    if (answered) {
      const listed = new Set(answered.order);
      return {
        accepted: answered.order.filter((id) => state.pool.has(id))
          .map((id) => ({ c: state.pool.get(id), within: answered.pairs.get(id) })),
        rejected: all.filter((x) => !listed.has(x.c.id) && x.within < state.m),
      };
    }
    return {
      accepted: all.filter((x) => x.within >= state.m),
      rejected: all.filter((x) => x.within < state.m),
    };
  }

  function adoptRule(rule) {
    const changed = !state.rule || state.rule.id !== rule.id;
    state.rule = rule;
    if (!changed) return;
    const t0 = rule.threshold;
    // t0 lies on the slider's grid, so the slider starts exactly at the calibrated value.
    const threshold = $("threshold");
    threshold.min = "0";
    threshold.step = String(t0 > 0 ? t0 / 200 : 0.001);
    threshold.max = "0";
    fitThreshold(t0 > 0 ? 2.5 * t0 : 1);
    const pairs = $("min-pairs");
    pairs.min = "1";
    pairs.max = String(rule.pairs);
    $("calibrated").textContent = `Calibrated for model ${rule.name}: t = ${fmt(t0)}, min pairs = ${rule.min_pairs} of ${rule.pairs}.`;
    $("rule").disabled = false;
    resetRule();
  }

  // The threshold slider reaches at least `wanted` (never less than it reached before): far enough
  // for every question of the pool to match.
  function fitThreshold(wanted) {
    const threshold = $("threshold");
    const step = Number(threshold.step);
    const cap = state.rule.metric === "cosine" ? 2 : Infinity;
    const steps = Math.ceil(Math.min(cap, wanted) / step - 1e-9);
    if (steps * step > Number(threshold.max)) threshold.max = String(steps * step);
    if (state.t !== null) threshold.value = String(state.t);
  }

  function resetRule() {
    if (!state.rule) return;
    state.t = state.rule.threshold;
    state.m = state.rule.min_pairs;
    $("threshold").value = String(state.t);
    $("min-pairs").value = String(state.m);
    showRule();
  }

  function showRule() {
    $("threshold-value").textContent = fmt(state.t);
    $("min-pairs-value").textContent = `${state.m} of ${state.rule ? state.rule.pairs : "–"}`;
  }

  function onSlide() {
    state.ruleSeq += 1;
    if (state.query) markChecked(false);
    state.t = Number($("threshold").value);
    state.m = Number($("min-pairs").value);
    showRule();
    render();
  }

  // ------------------------------------------------------------------ asking

  // #results[data-checked="true"]: the list shown is the service's answer for the rule shown
  // (outside checks wait for it; "false" while the page is asking or re-checking).
  function markChecked(flag) {
    $("results").dataset.checked = String(flag);
  }

  async function ask(text) {
    const seq = ++state.seq;
    markChecked(false);
    setStatus("Searching…", "busy");
    $("ask-button").disabled = true;
    try {
      // No limit sent: the service pools POOL nearest, or its QSIM_MAX_LIMIT when that is lower.
      const explained = await api("POST", "/questions/explain", { question: text });
      if (seq !== state.seq) return;
      adoptRule(explained.model);
      state.query = { text, samples: explained.query.samples, mean: explained.query.mean, limit: explained.limit };
      state.pool = new Map(explained.results.map((r) => [r.id, r]));
      state.feedback.clear();
      for (const item of state.items.values()) item.remove();
      state.items.clear();
      state.selected = null;
      state.showAll = false;
      state.only = null;
      state.answers.clear();
      fitThreshold(Math.max(0, ...explained.results.map((r) => r.distance)));
      await confirmWithService(seq);
      if (seq !== state.seq) return;
      const { accepted } = ranked();
      state.selected = accepted.length ? accepted[0].c.id : null;
      render();
    } catch (error) {
      if (seq === state.seq) {
        clearAnswer();
        setStatus(`Could not search: ${error.message}`, "error");
      }
    } finally {
      if (seq === state.seq) {
        $("ask-button").disabled = false;
        markChecked(true);
      }
    }
  }

  // Nothing from an earlier question stays on screen once asking another one failed.
  function clearAnswer() {
    state.query = null;
    state.pool = new Map();
    state.answers.clear();
    state.only = null;
    state.reason = null;
    state.selected = null;
    for (const item of state.items.values()) item.remove();
    state.items.clear();
    $("near-misses").replaceChildren();
    $("near").hidden = true;
    $("show-all").hidden = true;
    renderWhy();
    renderOverlay([]);
  }

  // The service's own answer at the current rule; matches the pool lacked are explained and added.
  async function confirmWithService(seq) {
    if (!state.query) return;
    const t = state.t;
    const m = state.m;
    const answer = await api("POST", "/questions/similar", {
      question: state.query.text, limit: state.query.limit, threshold: t, min_pairs: m,
    });
    if (seq !== state.seq) return;
    // Kept per rule: a late answer to a rule the sliders already left does not stand for the current one.
    state.answers.set(`${t}|${m}`, {
      order: answer.results.map((r) => r.id), pairs: new Map(answer.results.map((r) => [r.id, r.pairs_within])),
    });
    if (t !== state.t || m !== state.m) return;
    // A question the model cannot read (reason "low_coverage") is answered by identical texts only:
    // then the service's list, not the pair distances, says what matches.
    state.reason = answer.reason ? answer.reason_detail || answer.reason : null;
    state.only = answer.reason ? new Set(answer.results.map((r) => r.id)) : null;
    const missing = answer.results.map((r) => r.id).filter((id) => !state.pool.has(id));
    if (missing.length) {
      const more = await api("POST", "/questions/explain", { question: state.query.text, ids: missing });
      if (seq !== state.seq) return;
      for (const r of more.results) state.pool.set(r.id, r);
    }
  }

  async function onSlideDone() {
    if (!state.query) return;
    const seq = state.seq;
    const ruleSeq = state.ruleSeq;
    const current = () => seq === state.seq && ruleSeq === state.ruleSeq;
    try {
      await confirmWithService(seq);
      if (!current()) return;
      render();
    } catch (error) {
      if (current()) setStatus(`Could not check with the service: ${error.message}`, "error");
    }
    if (current()) markChecked(true);
  }

  // ------------------------------------------------------------------ rendering

  function setStatus(text, kind = "") {
    const status = $("status");
    status.textContent = text;
    status.dataset.kind = kind;
  }

  function render() {
    if (!state.query) return;
    const { accepted, rejected } = ranked();
    const shown = state.showAll ? accepted : accepted.slice(0, SHOWN);
    const rule = `t = ${fmt(state.t)} with at least ${state.m} of ${state.rule.pairs} pairs`;
    if (accepted.length) {
      const n = accepted.length;
      const many = n >= state.pool.size ? `${n} or more matches` : `${n} ${n === 1 ? "match" : "matches"}`;
      const listed = shown.length < n ? `; the closest ${shown.length} listed` : ", closest first";
      setStatus(`${many} at ${rule}${listed}.`, "ok");
    } else if (state.only) {
      setStatus("No stored question matches.", "empty");
    } else if (rejected.length) {
      const nearest = rejected[0];
      setStatus(`No stored question matches at ${rule}. The nearest, “${iso(nearest.c.text)}”, is at distance ${fmt(nearest.c.distance)} with ${nearest.within} pairs within t.`, "empty");
    } else {
      setStatus("No stored questions yet: there is nothing to match.", "empty");
    }
    if (state.reason) setStatus(`${$("status").textContent} ${state.reason}`, accepted.length ? "ok" : "empty");
    renderResults(shown);
    const more = $("show-all");
    more.hidden = accepted.length <= SHOWN;
    more.textContent = state.showAll ? `Show the closest ${SHOWN} only` : `Show all ${accepted.length} matches`;
    renderNearMisses(rejected.slice(0, NEAR_MISSES));
    renderWhy();
    renderOverlay(shown);
  }

  function renderResults(accepted) {
    const list = $("results");
    const keep = new Set(accepted.map((x) => x.c.id));
    for (const [id, item] of state.items) {
      if (!keep.has(id)) { item.remove(); state.items.delete(id); }
    }
    accepted.forEach(({ c, within }, rank) => {
      let item = state.items.get(c.id);
      if (!item) { item = matchItem(c); state.items.set(c.id, item); }
      item.querySelector(".rank").textContent = `${rank + 1}.`;
      item.querySelector(".facts").textContent = facts(c, within);
      item.classList.toggle("selected", state.selected === c.id);
      item.querySelector(".pick").setAttribute("aria-pressed", String(state.selected === c.id));
      // Into rank order, moving only what is out of place: a moved node loses the keyboard focus.
      if (list.children[rank] !== item) list.insertBefore(item, list.children[rank] || null);
    });
  }

  function facts(c, within) {
    const parts = [`distance ${fmt(c.distance)}`, `${within} of ${state.rule.pairs} pairs within t`, `id ${c.id}`];
    if (c.external_id) parts.push(`external id ${iso(c.external_id)}`);
    if (c.metadata) {
      for (const [key, value] of Object.entries(c.metadata).slice(0, 3)) {
        if (value !== null && typeof value !== "object") parts.push(`${iso(key)}: ${iso(value)}`);
      }
    }
    return parts.join(" · ");
  }

  function matchItem(c) {
    const verdictStatus = el("span", { class: "feedback-status", role: "status" });
    const yes = el("button", { type: "button", "data-feedback": "duplicate", "aria-pressed": "false", text: "Duplicate" });
    const no = el("button", { type: "button", "data-feedback": "not-duplicate", "aria-pressed": "false", text: "Not a duplicate" });
    const item = el(
      "li",
      { class: "match", "data-question-id": String(c.id) },
      el("button", { type: "button", class: "pick", "aria-pressed": "false", onclick: () => select(c.id) },
        el("span", { class: "rank" }), " ", el("span", { class: "text", text: c.text })),
      c.answer
        ? el("p", { class: "answer" }, el("span", { class: "answer-label", text: "Answer: " }), c.answer)
        : el("p", { class: "answer none", text: "No answer stored for this question." }),
      el("div", { class: "match-foot" },
        el("p", { class: "facts" }),
        el("div", { class: "feedback", role: "group", "aria-label": `Is “${c.text}” a duplicate of the question asked?` }, yes, no, verdictStatus)),
    );
    if (state.feedback.has(c.id)) showVerdict(item, state.feedback.get(c.id));
    const send = (duplicate) => sendFeedback(c, duplicate, item);
    yes.addEventListener("click", () => send(true));
    no.addEventListener("click", () => send(false));
    return item;
  }

  async function sendFeedback(c, duplicate, item) {
    const status = item.querySelector(".feedback-status");
    const buttons = item.querySelectorAll("[data-feedback]");
    const question = state.query.text;
    if (item.dataset.saving === "true") return;
    // Marked busy, not disabled: a disabled button drops the keyboard focus.
    item.dataset.saving = "true";
    buttons.forEach((b) => b.setAttribute("aria-disabled", "true"));
    status.textContent = "Saving…";
    status.dataset.kind = "busy";
    try {
      await api("POST", "/feedback", { question, question_id: c.id, duplicate, source: SOURCE });
      if (!state.query || state.query.text !== question) return;
      state.feedback.set(c.id, duplicate);
      showVerdict(item, duplicate);
    } catch (error) {
      status.textContent = error.status === 404 && !/question/i.test(error.message)
        ? "This service does not take feedback (no POST /feedback)."
        : `Not saved: ${error.message}`;
      status.dataset.kind = "error";
    } finally {
      item.dataset.saving = "false";
      buttons.forEach((b) => b.removeAttribute("aria-disabled"));
    }
  }

  function showVerdict(item, duplicate) {
    const verdict = duplicate ? "duplicate" : "not-duplicate";
    item.querySelectorAll("[data-feedback]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.feedback === verdict)));
    const status = item.querySelector(".feedback-status");
    status.textContent = duplicate ? "Saved: duplicate." : "Saved: not a duplicate.";
    status.dataset.kind = "ok";
  }

  function renderNearMisses(rejected) {
    const box = $("near");
    const list = $("near-misses");
    const focused = list.contains(document.activeElement) ? document.activeElement.closest("li")?.dataset.candidateId : null;
    list.replaceChildren(
      ...rejected.map(({ c, within }) => el(
        "li", { "data-candidate-id": String(c.id), class: state.selected === c.id ? "selected" : "" },
        el("button", { type: "button", class: "pick", "aria-pressed": String(state.selected === c.id), onclick: () => select(c.id) },
          el("span", { class: "text", text: c.text })),
        el("span", { class: "facts", text: ` distance ${fmt(c.distance)} · ${within} of ${state.rule.pairs} pairs within t` }),
      )),
    );
    box.hidden = rejected.length === 0;
    if (focused) list.querySelector(`li[data-candidate-id="${focused}"] .pick`)?.focus({ preventScroll: true });
  }

  function select(id) {
    state.selected = id;
    render();
    $("why").scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  function cellColour(d, t) {
    if (isWithin(d, t)) {
      const closeness = t > 0 ? 1 - d / t : 1; // 1 at distance 0, 0 at t
      return `hsl(145 55% ${Math.round(86 - 30 * closeness)}%)`;
    }
    const far = Math.min(1, t > 0 ? (d - t) / t : 1);
    return `hsl(8 ${Math.round(20 + 45 * far)}% ${Math.round(95 - 10 * far)}%)`;
  }

  function renderWhy() {
    const c = state.selected !== null ? state.pool.get(state.selected) : null;
    $("why-empty").hidden = !!c;
    $("why-body").hidden = !c;
    if (!c) return;
    const t = state.t;
    const k = c.distances.length;
    const within = pairsWithin(c, t);
    $("why-question").replaceChildren(
      el("span", { class: "muted", text: "Asked: " }), el("bdi", { text: state.query.text }), el("br"),
      el("span", { class: "muted", text: "Stored: " }), el("bdi", { text: c.text }),
    );
    const table = $("pair-grid");
    const head = el("tr", {}, el("th", { scope: "col", class: "corner", text: "query ↓ / stored →" }));
    for (let j = 0; j < c.distances[0].length; j += 1) head.append(el("th", { scope: "col", text: `s${j + 1}` }));
    const body = c.distances.map((row, i) => el(
      "tr", {}, el("th", { scope: "row", text: `q${i + 1}` }),
      ...row.map((d, j) => {
        const inside = isWithin(d, t);
        const cell = el("td", { class: inside ? "within" : "beyond", title: `query code ${i + 1}, stored code ${j + 1}: ${d}` },
          `${fmt(d)}${inside ? " ✓" : ""}`);
        cell.style.backgroundColor = cellColour(d, t);
        return cell;
      }),
    ));
    table.replaceChildren(
      el("caption", { text: `Pair distances (${state.rule.metric}) of the asked question's ${k} codes against the stored question's ${c.distances[0].length}; t = ${fmt(t)}` }),
      el("thead", {}, head),
      el("tbody", {}, ...body),
    );
    const verdict = $("why-verdict");
    const ok = within >= state.m;
    verdict.textContent = `${within} of ${state.rule.pairs} pairs within t (needs ${state.m}): ${ok ? "a match" : "not a match"}; closest pair ${fmt(c.distance)}.`;
    verdict.dataset.kind = ok ? "ok" : "empty";
  }

  // ------------------------------------------------------------------ the map

  function project(vector) {
    const { center, components } = state.map;
    let x = 0;
    let y = 0;
    for (let i = 0; i < center.length; i += 1) {
      const v = vector[i] - center[i];
      x += v * components[0][i];
      y += v * components[1][i];
    }
    return [x, y];
  }

  function palette(labels) {
    const counts = new Map();
    for (const label of labels) if (label !== null) counts.set(label, (counts.get(label) || 0) + 1);
    const order = [...counts.keys()].sort((a, b) => counts.get(b) - counts.get(a) || (a < b ? -1 : 1));
    const colours = new Map(order.map((label, i) => [label, `hsl(${Math.round((i * 137.508) % 360)} 62% ${i % 2 ? 42 : 52}%)`]));
    return { order, counts, colours };
  }

  async function loadMap(colorKey) {
    $("map-caption").textContent = "Projecting the stored questions…";
    const path = colorKey ? `/questions/map?color_by=${encodeURIComponent(colorKey)}` : "/questions/map";
    try {
      const data = await api("GET", path);
      state.map = data;
      if (!state.rule) adoptRule(data.model);
      renderMap();
    } catch (error) {
      $("map-caption").textContent = `No map: ${error.message}`;
    }
  }

  function renderMap() {
    const data = state.map;
    const select = $("color-by");
    select.replaceChildren(
      el("option", { value: "", text: "(nothing)" }),
      ...data.color_keys.map((key) => el("option", { value: key, text: key })),
    );
    state.colorKey = state.colorKey === "" ? "" : data.color_key || ""; // "": the desk chose no colours
    select.value = state.colorKey;
    select.disabled = data.color_keys.length === 0;

    const xs = data.points.map((p) => p.x);
    const ys = data.points.map((p) => p.y);
    const bounds = xs.length
      ? { x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys) }
      : { x0: -1, x1: 1, y0: -1, y1: 1 };
    const pad = 0.06 * Math.max(bounds.x1 - bounds.x0, bounds.y1 - bounds.y0, 1e-6);
    state.mapBounds = { x0: bounds.x0 - pad, x1: bounds.x1 + pad, y0: bounds.y0 - pad, y1: bounds.y1 + pad };
    const b = state.mapBounds;
    state.mapUnit = Math.max(b.x1 - b.x0, b.y1 - b.y0) / 100;

    const labels = data.points.map((p) => (state.colorKey ? p.label : null));
    const { order, counts, colours } = palette(labels);
    const group = $("map-points");
    const r = state.mapUnit * (data.points.length > 2000 ? 0.45 : 0.7);
    state.dotRadius = r;
    state.mapScale = 1;
    group.replaceChildren(...data.points.map((p, i) => {
      const dot = svg("circle", { cx: p.x, cy: -p.y, r, fill: labels[i] !== null ? colours.get(labels[i]) : "#8a94a6", class: "dot" });
      const title = svg("title");
      title.textContent = labels[i] !== null ? `${p.text} (${labels[i]})` : p.text;
      dot.append(title);
      return dot;
    }));
    const legend = $("map-legend");
    const shown = order.slice(0, 12);
    legend.replaceChildren(...shown.map((label) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.backgroundColor = colours.get(label);
      return el("li", {}, swatch, `${label} (${counts.get(label)})`);
    }));
    if (order.length > shown.length) legend.append(el("li", { class: "muted", text: `… and ${order.length - shown.length} more` }));
    const share = data.explained_variance.map((v) => `${Math.round(v * 100)}%`).join(" and ");
    $("map-caption").textContent =
      `${data.sampled.toLocaleString("en")} of ${data.total.toLocaleString("en")} stored questions` +
      `${data.sampled < data.total ? " (a fixed sample)" : ""}: the first two principal components of their latent means ` +
      `(${share} of the variance), revision ${data.revision}. ` +
      "Black diamond: the asked question's mean; crosses: its K codes; rings: its matches' means.";
    renderOverlay(state.query ? ranked().accepted.slice(0, state.showAll ? Infinity : SHOWN) : []);
  }

  // The visible part of the map: everything, or (zoomed) the question's codes and its matches with
  // a margin; y grows upwards, so it is flipped in the viewBox.
  function frameMap(points) {
    let b = state.mapBounds;
    if (state.zoom && points.length) {
      const xs = points.map((p) => p[0]);
      const ys = points.map((p) => p[1]);
      const full = Math.max(b.x1 - b.x0, b.y1 - b.y0);
      const half = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys), full / 6) * 0.75;
      const cx = (Math.max(...xs) + Math.min(...xs)) / 2;
      const cy = (Math.max(...ys) + Math.min(...ys)) / 2;
      b = { x0: cx - half * (4 / 3), x1: cx + half * (4 / 3), y0: cy - half, y1: cy + half };
    }
    $("map").setAttribute("viewBox", `${b.x0} ${-b.y1} ${b.x1 - b.x0} ${b.y1 - b.y0}`);
    // Marks keep their size on screen whatever the zoom.
    const scale = Math.max(b.x1 - b.x0, b.y1 - b.y0) / Math.max(state.mapBounds.x1 - state.mapBounds.x0, state.mapBounds.y1 - state.mapBounds.y0);
    if (Math.abs(scale - state.mapScale) > 0.01 * state.mapScale) {
      state.mapScale = scale;
      const r = String(state.dotRadius * scale);
      for (const dot of $("map-points").children) dot.setAttribute("r", r);
    }
    return scale;
  }

  function renderOverlay(accepted) {
    const overlay = $("map-overlay");
    const zoom = $("zoom");
    if (!state.map || !state.query || state.map.model.id !== state.rule.id) {
      overlay.replaceChildren();
      zoom.disabled = true;
      if (state.mapBounds) frameMap([]);
      return;
    }
    zoom.disabled = false;
    const nodes = [];
    const framed = [project(state.query.mean), ...state.query.samples.map(project), ...accepted.map(({ c }) => project(c.mean))];
    const u = state.mapUnit * frameMap(framed);
    for (const { c } of accepted) {
      const [x, y] = project(c.mean);
      const ring = svg("circle", { cx: x, cy: -y, r: u * (state.selected === c.id ? 2.2 : 1.4), class: state.selected === c.id ? "ring selected" : "ring" });
      ring.style.strokeWidth = String(u * (state.selected === c.id ? 0.6 : 0.35));
      const title = svg("title");
      title.textContent = `match: ${c.text}`;
      ring.append(title);
      nodes.push(ring);
    }
    {
      const [x, y] = project(state.query.mean);
      const s = u * 1.3;
      const mark = svg("path", { d: `M${x} ${-y - s}L${x + s} ${-y}L${x} ${-y + s}L${x - s} ${-y}Z`, class: "query-mean" });
      mark.style.strokeWidth = String(u * 0.4);
      const title = svg("title");
      title.textContent = "asked question, latent mean";
      mark.append(title);
      nodes.push(mark);
    }
    state.query.samples.forEach((sample, i) => {
      const [x, y] = project(sample);
      const s = u * 1.6;
      const d = `M${x - s} ${-y - s}L${x + s} ${-y + s}M${x - s} ${-y + s}L${x + s} ${-y - s}`;
      const halo = svg("path", { d, class: "sample-halo" });
      halo.style.strokeWidth = String(u * 1.5);
      nodes.push(halo);
      const cross = svg("path", { d, class: "sample" });
      cross.style.strokeWidth = String(u * 0.7);
      const title = svg("title");
      title.textContent = `asked question, code ${i + 1}`;
      cross.append(title);
      nodes.push(cross);
    });
    overlay.replaceChildren(...nodes);
  }

  // ------------------------------------------------------------------ service status

  async function loadStatus() {
    let data = null;
    try {
      const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
      data = await response.json();
    } catch {
      $("model-info").textContent = "The service does not answer; retrying…";
      setTimeout(loadStatus, 2000);
      return false;
    }
    if (!data.loaded) {
      $("model-info").textContent = `Loading: ${(data.reasons || []).join("; ") || "the model and index"}…`;
      setTimeout(loadStatus, 1000);
      return false;
    }
    $("model-info").textContent =
      `Model ${data.model} (${data.model_id}) · ${Number(data.questions).toLocaleString("en")} stored questions · ` +
      `index ${data.index_kind} on ${data.device}${data.status === "ready" ? "" : ` · ${data.reasons.join("; ")}`}`;
    if (!state.map) loadMap(null);
    return true;
  }

  // ------------------------------------------------------------------ admin

  function adminHeaders() {
    return { Authorization: `Bearer ${state.admin.token}` };
  }

  function setAdmin(text, kind = "") {
    const status = $("admin-status");
    status.textContent = text;
    status.dataset.kind = kind;
  }

  function setToken(token) {
    state.admin.token = token || null;
    for (const id of ["start-reindex", "start-clusters", "forget-token"]) $(id).disabled = !state.admin.token;
    setAdmin(state.admin.token ? "Token set (in memory only)." : "No token: the admin actions are off.");
  }

  function adminError(error) {
    if (error.status === 401) { setToken(null); return `The service refused the token: ${error.message}`; }
    if (error.status === 403) return `The admin API is off on this service: ${error.message}`;
    return error.message;
  }

  async function startJob(kind) {
    const [path, body] = kind === "reindex"
      ? ["/admin/reindex", undefined]
      : ["/admin/clusters", state.t !== null ? { threshold: state.t, min_pairs: state.m } : {}];
    $("clusters").replaceChildren();
    setAdmin(`Starting the ${kind === "reindex" ? "reindex" : "cluster"} job…`, "busy");
    try {
      const started = await api("POST", path, body, adminHeaders());
      watchJob(started.job_id, kind);
    } catch (error) {
      if (error.status === 409 && error.data && error.data.job_id) {
        setAdmin(`A job is already running (${error.data.job_id}); watching it.`, "busy");
        watchJob(error.data.job_id, kind); // jobs conflict only with a running job of their own kind
      } else if (error.status === 404 || error.status === 405) {
        setAdmin(`This service has no ${kind === "reindex" ? "reindex" : "cluster"} jobs (${path} answered ${error.status}).`, "error");
      } else {
        setAdmin(`Could not start: ${adminError(error)}`, "error");
      }
    }
  }

  function watchJob(jobId, kind) {
    clearTimeout(state.admin.timer);
    $("job").hidden = false;
    $("job").dataset.jobId = jobId;
    $("job-label").textContent = `${kind === "reindex" ? "Reindex" : "Clusters"} job ${jobId.slice(0, 8)}`;
    const poll = async () => {
      if (!state.admin.token) return;
      let job;
      try {
        job = await api("GET", `/admin/jobs/${encodeURIComponent(jobId)}`, undefined, adminHeaders());
      } catch (error) {
        setAdmin(`Lost the job: ${adminError(error)}`, "error");
        return;
      }
      $("job-progress").value = job.progress;
      $("job-state").textContent = `${job.status} · ${Math.round(job.progress * 100)}%`;
      if (job.status === "succeeded") {
        setAdmin(`The ${job.kind} job finished.`, "ok");
        if (job.kind === "reindex") { loadStatus(); loadMap(state.colorKey || null); } else showClusters(jobId);
      } else if (job.status === "failed") {
        setAdmin(`The ${job.kind} job failed: ${job.error}`, "error");
      } else {
        setAdmin(`The ${job.kind} job is ${job.status}…`, "busy");
        state.admin.timer = setTimeout(poll, 600);
      }
    };
    poll();
  }

  async function showClusters(jobId) {
    let data;
    try {
      data = await api("GET", `/admin/clusters/${encodeURIComponent(jobId)}`, undefined, adminHeaders());
    } catch (error) {
      setAdmin(`Could not read the clusters: ${adminError(error)}`, "error");
      return;
    }
    const clusters = data.clusters || [];
    const box = $("clusters");
    box.replaceChildren(
      el("p", { text: `${clusters.length} clusters of duplicates, ${data.singletons} questions without one. The largest:` }),
      el("ol", {}, ...clusters.slice(0, 20).map((cluster) => el(
        "li", {},
        el("details", {},
          el("summary", {}, `${cluster.size} × “${cluster.representative.text ?? "(deleted)"}”`),
          el("ul", {}, ...cluster.members.slice(0, 30).map((m) => el("li", { text: `${m.text ?? "(deleted)"} (id ${m.id})` })))),
      ))),
    );
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("ask-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("question").value;
      if (!text.trim()) { setStatus("Type a question first.", "error"); $("question").focus(); return; }
      ask(text);
    });
    for (const id of ["threshold", "min-pairs"]) {
      $(id).addEventListener("input", onSlide);
      $(id).addEventListener("change", onSlideDone);
    }
    $("show-all").addEventListener("click", () => { state.showAll = !state.showAll; render(); });
    $("zoom").addEventListener("click", () => {
      state.zoom = !state.zoom;
      $("zoom").setAttribute("aria-pressed", String(state.zoom));
      $("zoom").textContent = state.zoom ? "Show every question" : "Zoom to the question";
      render();
    });
    $("reset-rule").addEventListener("click", () => {
      state.ruleSeq += 1;
      if (state.query) markChecked(false);
      resetRule();
      render();
      onSlideDone();
    });
    $("color-by").addEventListener("change", (event) => {
      state.colorKey = event.target.value;
      if (state.colorKey) loadMap(state.colorKey); else renderMap();
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("admin-token");
      setToken(input.value.trim());
      input.value = "";
    });
    $("forget-token").addEventListener("click", () => { clearTimeout(state.admin.timer); setToken(null); });
    $("start-reindex").addEventListener("click", () => startJob("reindex"));
    $("start-clusters").addEventListener("click", () => startJob("clusters"));
    setToken(null);
    loadStatus();
  }

  init();
})();
