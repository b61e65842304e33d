/* Tunery dashboard: a single page over the /v1 API. Hash routes:
 *   #/jobs  #/jobs/ID  #/sweeps  #/sweeps/ID  #/files  #/files/ID  #/models  #/deployments
 * Pages poll while something is moving (a running job, a loading deployment) and stop when
 * it ends. All text from the API reaches the page through textContent (see h()).
 */
(function () {
  "use strict";

  const app = document.getElementById("app");
  const KEY_STORAGE = "tunery_api_key";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const COLORS = {
    train_loss: "#4f46e5", eval_loss: "#f97316", accuracy: "#16a34a", f1: "#9333ea",
    precision: "#0891b2", recall: "#db2777", token_accuracy: "#16a34a", perplexity: "#dc2626",
    learning_rate: "#64748b", reward_accuracy: "#16a34a",
  };
  // DPO's reward_accuracy (share of pairs preferred) shares the 0..1 chart; its rewards and
  // margins are in the tables
  // the playground's fields for the predict parameters a model takes (its `predicts`):
  // [default, step]; a parameter not named here has no field (the API still takes it)
  const PARAMETER_FIELDS = { max_new_tokens: [64, 1], temperature: [0, 0.1], top_p: [1, 0.05], top_k: ["", 1] };
  const EVAL_METRICS = ["accuracy", "f1", "precision", "recall", "token_accuracy", "reward_accuracy"];
  let page = 0; // bumps on every navigation: stale polls and renders check it and stop
  let pollTimer = null;

  // -- small helpers ------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmt(v, digits) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e7) return v.toLocaleString("en-US");
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return v.toFixed(digits === undefined ? 4 : digits);
  }

  function bytes(n) {
    if (!n && n !== 0) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function ago(ts) {
    if (!ts) return "–";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 45) return "just now";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(ts * 1000).toLocaleDateString();
  }

  function stamp(ts) {
    return ts ? new Date(ts * 1000).toLocaleString() : "–";
  }

  function clock(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "–";
    seconds = Math.round(seconds);
    const hh = Math.floor(seconds / 3600), mm = Math.floor((seconds % 3600) / 60), ss = seconds % 60;
    const two = (x) => String(x).padStart(2, "0");
    return hh ? `${hh}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
  }

  function pill(status) {
    return h("span", { class: "pill pill-" + String(status).replace(/[^a-z_]/g, ""), text: String(status).replace("_", " ") });
  }

  function progressOf(job) {
    const p = job.progress || {};
    if (typeof p.step === "number" && typeof p.total_steps === "number" && p.total_steps > 0) {
      return Math.min(1, p.step / p.total_steps);
    }
    return job.status === "succeeded" ? 1 : null;
  }

  function bar(fraction, status) {
    const f = fraction === null ? 0 : fraction;
    return h("div", { class: "bar" + (status ? " bar-" + status : ""), role: "progressbar", "aria-valuenow": Math.round(f * 100) },
      h("div", { style: { width: (f * 100).toFixed(1) + "%" } }));
  }

  function toast(message, kind) {
    const box = document.getElementById("toast");
    box.textContent = message;
    box.className = "toast show " + (kind || "");
    clearTimeout(box._timer);
    box._timer = setTimeout(() => { box.className = "toast"; }, kind === "error" ? 7000 : 3500);
  }

  function setLive(on) {
    document.getElementById("live").classList.toggle("on", !!on);
  }

  function card(title, body, extra) {
    return h("section", { class: "card" + (extra && extra.class ? " " + extra.class : ""), id: extra && extra.id },
      title ? h("div", { class: "card-head" }, h("h2", { text: title }), extra && extra.actions) : null,
      body);
  }

  function emptyRow(cols, text) {
    return h("tr", {}, h("td", { colspan: cols, class: "empty", text }));
  }

  // -- the API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, param) { super(message); this.status = status; this.param = param; }
  }

  function authHeaders() {
    const key = localStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: "Bearer " + key } : {};
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = authHeaders();
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const res = await fetch(path, { method: opts.method || "GET", headers, body });
    if (!res.ok) throw await errorOf(res);
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }

  async function errorOf(res) {
    let message = res.statusText, param = null;
    try {
      const j = await res.json();
      if (j && j.error) { message = j.error.message || message; param = j.error.param; }
    } catch (e) { /* not JSON */ }
    if (res.status === 401) askKey(message);
    return new ApiError(res.status, message, param);
  }

  function upload(file, purpose, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/files");
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        let j = null;
        try { j = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300) resolve(j);
        else {
          if (xhr.status === 401) askKey();
          reject(new ApiError(xhr.status, (j && j.error && j.error.message) || xhr.statusText));
        }
      };
      xhr.onerror = () => reject(new ApiError(0, "The upload did not reach the server."));
      const form = new FormData();
      form.append("purpose", purpose);
      form.append("file", file);
      xhr.send(form);
    });
  }

  async function download(url, filename) {
    if (!localStorage.getItem(KEY_STORAGE)) { window.location.href = url; return; }
    toast("Preparing " + filename + "…");
    const res = await fetch(url, { headers: authHeaders() });
    if (!res.ok) throw await errorOf(res);
    const blob = await res.blob();
    const link = h("a", { href: URL.createObjectURL(blob), download: filename });
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  // An archive's example (GET /v1/files/ID/samples/N/content), fetched with the API key and
  // shown from a blob: URL; each is fetched once per page load, however often a poll redraws.
  const mediaUrls = new Map();

  function mediaUrl(path) {
    if (!mediaUrls.has(path)) {
      const loading = fetch(path, { headers: authHeaders() }).then(async (res) => {
        if (!res.ok) throw await errorOf(res);
        const blob = await res.blob();
        return { url: URL.createObjectURL(blob), type: blob.type };
      });
      loading.catch(() => mediaUrls.delete(path)); // a later redraw tries again
      mediaUrls.set(path, loading);
    }
    return mediaUrls.get(path);
  }

  // a thumbnail (an image) or a player (a sound) of example `index` of an uploaded archive,
  // by the type the samples route serves it with
  function sampleMedia(fileId, index, name) {
    const path = `/v1/files/${encodeURIComponent(fileId)}/samples/${encodeURIComponent(index)}/content`;
    const slot = h("span", { class: "sample-thumb loading", title: name });
    mediaUrl(path).then(({ url, type }) => {
      const node = type.startsWith("audio/")
        ? h("audio", { class: "sample-audio", controls: true, preload: "metadata", title: name })
        : h("img", { class: "sample-thumb", alt: name, title: name });
      node.src = url;
      node.dataset.loaded = "true";
      slot.replaceWith(node);
    }).catch((e) => { slot.classList.add("broken"); slot.title = e.message; });
    return slot;
  }

  function askKey(message) {
    const dialog = document.getElementById("key-dialog");
    if (dialog.open) return;
    document.getElementById("key-input").value = localStorage.getItem(KEY_STORAGE) || "";
    if (message) dialog.querySelector("p").textContent = message;
    dialog.showModal();
  }

  document.getElementById("key-button").addEventListener("click", () => askKey());
  document.getElementById("key-dialog").addEventListener("close", (ev) => {
    const value = ev.target.returnValue;
    if (value === "save") {
      const key = document.getElementById("key-input").value.trim();
      if (key) localStorage.setItem(KEY_STORAGE, key);
    } else if (value === "clear") {
      localStorage.removeItem(KEY_STORAGE);
    }
    if (value) route();
  });

  function fail(where, error) {
    toast(error.message || String(error), "error");
    if (where) where.replaceChildren(h("div", { class: "notice error", text: error.message || String(error) }));
  }

  // polls fn every `ms` while the page is the same; fn returns false to stop
  function poll(fn, ms) {
    const mine = page;
    setLive(true);
    const tick = async () => {
      if (mine !== page) return;
      let again = true;
      try { again = (await fn()) !== false; } catch (e) { toast(e.message, "error"); }
      if (mine !== page) return;
      if (again) pollTimer = setTimeout(tick, ms);
      else setLive(false);
    };
    pollTimer = setTimeout(tick, ms);
  }

  // -- jobs list --------------------------------------------------------------------------------

  async function jobsPage() {
    const mine = page;
    const body = h("tbody", {}, emptyRow(6, "Loading…"));
    const formBox = h("div", { class: "hidden" });
    const newButton = h("button", { class: "primary", type: "button", text: "New job", onclick: () => {
      formBox.classList.toggle("hidden");
      if (!formBox.firstChild) newJobForm(formBox);
    } });
    app.replaceChildren(
      h("div", { class: "page-head" }, h("h1", { text: "Fine-tuning jobs" }), newButton),
      formBox,
      card(null, h("table", { class: "table clickable", id: "jobs-table" },
        h("thead", {}, h("tr", {}, ["Job", "Model", "Status", "Progress", "Created", "Fine-tuned model"].map((t) => h("th", { text: t })))),
        body)),
    );
    const refresh = async () => {
      const list = await api("/v1/fine_tuning/jobs?limit=50");
      if (mine !== page) return false;
      body.replaceChildren(...(list.data.length ? list.data.map(jobRow) : [emptyRow(6, "No jobs yet. Upload a file, then start a job with “New job” or `tunery jobs create`.")]));
      return true;
    };
    const preselected = sessionStorage.getItem("tunery_new_job_file");
    if (preselected) { formBox.classList.remove("hidden"); newJobForm(formBox, preselected); }
    try { await refresh(); } catch (e) { fail(body, e); return; }
    poll(refresh, 3000);
  }

  function jobRow(job) {
    const fraction = progressOf(job);
    const p = job.progress || {};
    return h("tr", { "data-id": job.id, onclick: () => { location.hash = "#/jobs/" + job.id; } },
      h("td", {}, h("a", { href: "#/jobs/" + job.id, class: "mono", text: job.id }), job.suffix ? h("span", { class: "tag", text: job.suffix }) : null),
      h("td", { text: job.model }),
      h("td", {}, pill(job.status)),
      h("td", { class: "progress-cell" }, bar(fraction, job.status),
        h("small", { text: fraction === null ? "" : `${Math.round(fraction * 100)}%` + (p.total_steps ? ` · step ${p.step}/${p.total_steps}` : "") })),
      h("td", { class: "nowrap", title: stamp(job.created_at), text: ago(job.created_at) }),
      h("td", { class: "mono small", text: job.fine_tuned_model || "–" }),
    );
  }

  async function newJobForm(box, preselected) {
    sessionStorage.removeItem("tunery_new_job_file");
    const [models, files] = await Promise.all([api("/v1/models"), api("/v1/files?limit=100")]).catch((e) => { fail(box, e); return [null, null]; });
    if (!models) return;
    const bases = models.data.filter((m) => m.kind !== "fine-tuned");
    const usable = files.data.filter((f) => f.status === "processed");
    const option = (value, text) => h("option", { value, text });
    const model = h("select", { name: "model", required: true }, bases.map((m) => option(m.id, `${m.id} (${m.task})`)));
    const training = h("select", { name: "training_file", required: true }, usable.map((f) => option(f.id, `${f.filename} · ${f.format} · ${f.stats.rows} rows`)));
    if (preselected && usable.some((f) => f.id === preselected)) training.value = preselected;
    const validation = h("select", { name: "validation_file" }, option("", "none: hold out a split"), usable.map((f) => option(f.id, `${f.filename} · ${f.id}`)));
    const epochs = h("input", { name: "n_epochs", type: "number", min: 1, max: 100, placeholder: "auto" });
    const batch = h("input", { name: "batch_size", type: "number", min: 1, placeholder: "auto" });
    const lr = h("input", { name: "learning_rate", type: "number", step: "any", min: 0, placeholder: "auto" });
    const kind = h("select", { name: "training_type" }, ["lora", "full", "freeze"].map((k) => option(k, k)));
    const suffix = h("input", { name: "suffix", placeholder: "optional", maxlength: 40 });
    const submit = h("button", { class: "primary", type: "submit", text: "Start training" });
    const field = (label, input) => h("label", { class: "field" }, h("span", { text: label }), input);
    const form = h("form", { class: "grid-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const hp = {};
      if (epochs.value) hp.n_epochs = Number(epochs.value);
      if (batch.value) hp.batch_size = Number(batch.value);
      if (lr.value) hp.learning_rate = Number(lr.value);
      const bodyJson = {
        model: model.value, training_file: training.value,
        training_type: { type: kind.value },
        method: { type: "supervised", supervised: { hyperparameters: hp } },
      };
      if (validation.value) bodyJson.validation_file = validation.value;
      if (suffix.value) bodyJson.suffix = suffix.value;
      submit.disabled = true;
      try {
        const job = await api("/v1/fine_tuning/jobs", { method: "POST", body: bodyJson });
        location.hash = "#/jobs/" + job.id;
      } catch (e) { toast(e.message, "error"); submit.disabled = false; }
    } },
      field("Base model", model), field("Training file", training), field("Validation file", validation),
      field("Training type", kind), field("Epochs", epochs), field("Batch size", batch),
      field("Learning rate", lr), field("Suffix", suffix),
      h("div", { class: "field actions" }, submit));
    box.replaceChildren(card("New fine-tuning job", usable.length ? form
      : h("p", { class: "muted" }, "No processed training file yet: ", h("a", { href: "#/files", text: "upload one" }), " first.")));
  }

  // -- one job ----------------------------------------------------------------------------------

  async function jobPage(jobId) {
    const mine = page;
    const head = h("div", { class: "page-head" });
    const summary = h("div", { class: "stats" });
    const errorBox = h("div");
    const lossChart = h("div", { class: "chart", id: "loss-chart" });
    const evalChart = h("div", { class: "chart", id: "eval-chart" });
    const lrChart = h("div", { class: "chart small-chart", id: "lr-chart" });
    const matrixBox = h("div", { id: "confusion" });
    const evalTable = h("div", { class: "scroll" });
    const trainTable = h("div", { class: "scroll" });
    const eventsBox = h("ol", { class: "events", id: "events" });
    const checkpointsBox = h("div");
    const details = h("dl", { class: "details" });
    const checkpointsCard = card("Checkpoints", checkpointsBox, { class: "hidden", id: "checkpoints" });
    const matrixCard = card("Confusion matrix", matrixBox, { class: "hidden", id: "confusion-card" });
    app.replaceChildren(
      h("div", { class: "crumbs" }, h("a", { href: "#/jobs", text: "Jobs" }), " / ", h("span", { class: "mono", text: jobId })),
      head, errorBox, summary,
      h("div", { class: "grid two" },
        card("Loss", lossChart, { id: "loss-card" }),
        card("Evaluation", evalChart, { id: "eval-card" })),
      h("div", { class: "grid two" }, matrixCard, card("Learning rate", lrChart)),
      card("Evaluations", evalTable),
      h("details", { class: "card fold" }, h("summary", { text: "Training log" }), trainTable),
      checkpointsCard,
      h("div", { class: "grid two" }, card("Events", eventsBox), card("Details", details)),
    );

    let last = null;
    let pointsAt = 0;
    const refresh = async () => {
      const [job, metrics, events] = await Promise.all([
        api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`),
        api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/metrics`),
        api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=100`),
      ]);
      if (mine !== page) return false;
      renderHead(head, job);
      renderError(errorBox, job);
      renderSummary(summary, job, metrics);
      renderCharts(lossChart, evalChart, lrChart, metrics);
      renderConfusion(matrixCard, matrixBox, metrics, job);
      renderEvalTable(evalTable, metrics);
      renderTrainTable(trainTable, metrics);
      renderEvents(eventsBox, events.data);
      renderDetails(details, job);
      if (!last || last.status !== job.status || TERMINAL.has(job.status) || Date.now() - pointsAt > 10000) {
        pointsAt = Date.now();
        loadCheckpoints(jobId, checkpointsCard, checkpointsBox);
      }
      last = job;
      return !TERMINAL.has(job.status) && job.status !== "paused";
    };
    try {
      if (!(await refresh())) { setLive(false); return; }
    } catch (e) { fail(summary, e); return; }
    poll(refresh, 2000);
  }

  function renderHead(head, job) {
    const actions = h("div", { class: "row" });
    if (!TERMINAL.has(job.status)) {
      actions.appendChild(h("button", { class: "danger", id: "cancel-job", type: "button", text: "Cancel job", onclick: async (ev) => {
        if (!confirm(`Cancel ${job.id}?`)) return;
        ev.target.disabled = true;
        try {
          await api(`/v1/fine_tuning/jobs/${job.id}/cancel`, { method: "POST" });
          toast("Cancellation requested.");
        } catch (e) { toast(e.message, "error"); ev.target.disabled = false; }
      } }));
    }
    const act = (label, verb, cls) => h("button", { class: cls || "", type: "button", id: verb + "-job", text: label, onclick: async (ev) => {
      ev.target.disabled = true;
      try {
        await api(`/v1/fine_tuning/jobs/${job.id}/${verb}`, { method: "POST" });
        toast(`${label}: requested.`);
        if (verb === "resume") route(); // polling had stopped while paused
      } catch (e) { toast(e.message, "error"); ev.target.disabled = false; }
    } });
    if (job.status === "running") actions.prepend(act("Pause", "pause"));
    if (job.status === "paused") actions.prepend(act("Resume", "resume", "primary"));
    if (job.status === "succeeded" && job.fine_tuned_model) {
      actions.appendChild(h("button", { class: "primary", type: "button", text: "Deploy", onclick: () => deploy(job.fine_tuned_model) }));
    }
    head.replaceChildren(
      h("div", {}, h("h1", { class: "mono", text: job.id }), h("div", { class: "subtitle" }, pill(job.status), " ", job.model, " · ", (job.training_type || {}).type || "", " · ", job.task || "")),
      actions,
    );
  }

  function renderError(box, job) {
    if (!job.error) { box.replaceChildren(); return; }
    box.replaceChildren(h("div", { class: "notice error" },
      h("strong", { text: job.error.code + ": " }), job.error.message,
      job.error.param ? h("span", { class: "muted", text: ` (param: ${job.error.param})` }) : null));
  }

  function headline(evaluation) {
    for (const name of ["accuracy", "f1", "token_accuracy", "reward_accuracy", "perplexity", "eval_loss"]) {
      if (evaluation && typeof evaluation[name] === "number") return [name, evaluation[name]];
    }
    return null;
  }

  // which checkpoint the fine-tuned model is, and why (null until the job succeeded)
  function exportedText(job) {
    if (job.result_step === null || job.result_step === undefined) return null;
    const hp = job.hyperparameters || {};
    const metric = hp.best_metric || (hp.early_stopping || {}).metric || "eval_loss";
    if (job.result_reason === "final") return `step ${job.result_step}, the final model`;
    const why = job.result_reason === "best_metric" ? "best_metric" : "early stopping";
    return `step ${job.result_step}, the best by ${metric} (${why})`;
  }

  function renderSummary(box, job, metrics) {
    const fraction = progressOf(job);
    const p = job.progress || {};
    const epochs = (job.hyperparameters || {}).n_epochs;
    const training = metrics.training || [];
    const evals = metrics.evaluations || [];
    const lastLoss = training.length ? training[training.length - 1].train_loss : null;
    // the exported evaluation once there is one, else the best so far (with a selection) or the newest
    const shownStep = typeof metrics.result_step === "number" ? metrics.result_step : metrics.best_step;
    const best = evals.find((e) => e.step === shownStep) || evals[evals.length - 1];
    const top = headline(best);
    let timing;
    if (job.status === "running" && job.estimated_finish) timing = ["ETA", clock(job.estimated_finish - Date.now() / 1000)];
    else if (job.finished_at) timing = ["Took", clock(job.finished_at - job.created_at)];
    else timing = ["Waiting", clock(Date.now() / 1000 - job.created_at)];
    const tps = training.length ? training[training.length - 1].tokens_per_second : null;
    const stat = (label, value, sub, id) => h("div", { class: "stat", id }, h("span", { class: "label", text: label }), h("span", { class: "value", text: value }), sub ? h("span", { class: "sub", text: sub }) : null);
    box.replaceChildren(
      h("div", { class: "stat wide", id: "progress-stat" },
        h("span", { class: "label", text: "Progress" }),
        h("span", { class: "value", text: fraction === null ? "–" : Math.round(fraction * 100) + "%" }),
        bar(fraction, job.status),
        h("span", { class: "sub", text: (p.total_steps ? `step ${p.step} of ${p.total_steps}` : "not started") + (typeof p.epoch === "number" ? ` · epoch ${p.epoch.toFixed(2)}${typeof epochs === "number" ? " of " + epochs : ""}` : "") })),
      stat(timing[0], timing[1], job.status === "running" ? "remaining" : stamp(job.finished_at || job.created_at)),
      stat("Train loss", fmt(lastLoss), training.length ? `step ${training[training.length - 1].step}` : "no log yet", "loss-stat"),
      stat(top ? top[0].replace("_", " ") : "Evaluation", top ? fmt(top[1]) : "–", best ? `step ${best.step}${best.step === metrics.result_step ? " (exported)" : best.step === metrics.best_step ? " (best)" : ""}` : "after the first epoch"),
      job.trained_tokens === null || job.trained_tokens === undefined
        ? stat("Throughput", typeof tps === "number" ? fmt(tps, 0) : "–", "tokens/s, newest log")
        : stat("Tokens", fmt(job.trained_tokens), typeof tps === "number" ? `trained; ${fmt(tps, 0)} tokens/s at the end` : "trained"),
    );
  }

  function series(rows, key, options) {
    return Object.assign({
      name: key, color: COLORS[key] || "#334155",
      points: rows.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]),
    }, options || {});
  }

  function renderCharts(lossBox, evalBox, lrBox, metrics) {
    const training = metrics.training || [];
    const evals = metrics.evaluations || [];
    TinyChart.line(lossBox, {
      xLabel: "step", title: "loss by step",
      series: [series(training, "train_loss"), series(evals, "eval_loss", { markers: true })],
    });
    const names = EVAL_METRICS.filter((k) => evals.some((e) => typeof e[k] === "number"));
    if (names.length) {
      TinyChart.line(evalBox, { xLabel: "step", yMin: 0, yMax: 1, series: names.map((k) => series(evals, k, { markers: true })) });
    } else if (evals.some((e) => typeof e.perplexity === "number")) {
      TinyChart.line(evalBox, { xLabel: "step", series: [series(evals, "perplexity", { markers: true })] });
    } else {
      TinyChart.line(evalBox, { series: [], emptyText: "Evaluations appear at the end of each epoch." });
    }
    TinyChart.line(lrBox, { xLabel: "step", height: 160, series: [series(training, "learning_rate", { width: 1.5 })] });
  }

  function renderConfusion(cardNode, box, metrics, job) {
    const evals = (metrics.evaluations || []).filter((e) => Array.isArray(e.confusion_matrix));
    if (!evals.length) { cardNode.classList.add("hidden"); return; }
    cardNode.classList.remove("hidden");
    const latest = evals[evals.length - 1];
    const matrix = latest.confusion_matrix;
    const labels = Object.keys(latest.per_class || {});
    const names = labels.length === matrix.length ? labels : matrix.map((_, i) => String(i));
    const peak = Math.max(1, ...matrix.flat());
    const table = h("table", { class: "matrix" },
      h("thead", {}, h("tr", {}, h("th", { class: "corner", text: "true ↓ / predicted →" }), names.map((n) => h("th", { text: n })))),
      h("tbody", {}, matrix.map((row, i) => {
        const total = row.reduce((a, b) => a + b, 0) || 1;
        return h("tr", {}, h("th", { text: names[i] }), row.map((count, j) => {
          const alpha = count / peak;
          return h("td", {
            class: i === j ? "diag" : "off",
            title: `${names[i]} → ${names[j]}: ${count} (${Math.round((count / total) * 100)}% of ${names[i]})`,
            style: { background: i === j ? `rgba(22,163,74,${0.08 + alpha * 0.75})` : `rgba(220,38,38,${count ? 0.08 + alpha * 0.7 : 0})`, color: alpha > 0.55 ? "#fff" : "" },
            text: String(count),
          });
        }));
      })));
    const perClass = latest.per_class ? h("table", { class: "table compact" },
      h("thead", {}, h("tr", {}, ["label", "precision", "recall", "f1", "support"].map((t) => h("th", { text: t })))),
      h("tbody", {}, Object.entries(latest.per_class).map(([label, m]) => h("tr", {}, h("td", { text: label }), ["precision", "recall", "f1", "support"].map((k) => h("td", { text: fmt(m[k], 3) })))))) : null;
    box.replaceChildren(h("p", { class: "muted small", text: `Evaluation at step ${latest.step} (epoch ${fmt(latest.epoch, 2)})` }), h("div", { class: "matrix-wrap" }, table, misclassifiedPanel(latest, job), perClass));
  }

  // image and audio jobs: the validation examples the evaluation got wrong, most confident first
  function misclassifiedPanel(evaluation, job) {
    const wrong = evaluation.misclassified;
    if (!Array.isArray(wrong)) return null;
    // the validation rows are the validation file's, or the split held out of the training file
    const fileId = job.validation_file || job.training_file;
    return h("div", { class: "misclassified", id: "misclassified" },
      h("h3", { text: "Misclassified" }),
      wrong.length ? h("div", { class: "sample-grid" }, wrong.map((w) => h("figure", { class: "sample wrong", "data-file": w.file },
        typeof w.index === "number" ? sampleMedia(fileId, w.index, w.file) : null,
        h("figcaption", {},
          h("span", { class: "true-label", text: w.label }), " → ", h("span", { class: "predicted-label", text: w.predicted }),
          h("small", { text: ` ${Math.round(w.score * 100)}%` }),
          h("span", { class: "sample-name", title: w.file, text: w.file })))))
        : h("p", { class: "muted small", text: "None: every validation example is right." }));
  }

  function columnsOf(rows, first) {
    const cols = first.filter((c) => rows.some((r) => c in r));
    for (const r of rows) for (const [k, v] of Object.entries(r)) {
      if (!cols.includes(k) && (v === null || typeof v !== "object")) cols.push(k);
    }
    return cols;
  }

  function dataTable(rows, first, highlightStep) {
    if (!rows.length) return h("p", { class: "muted", text: "Nothing yet." });
    const cols = columnsOf(rows, first);
    return h("table", { class: "table compact numbers" },
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", { text: c.replace(/_/g, " ") })))),
      h("tbody", {}, rows.map((r) => h("tr", { class: highlightStep !== undefined && r.step === highlightStep ? "best" : "" }, cols.map((c) => h("td", { text: fmt(r[c]) }))))));
  }

  function renderEvalTable(box, metrics) {
    const highlight = typeof metrics.result_step === "number" ? metrics.result_step : metrics.best_step;
    box.replaceChildren(dataTable(metrics.evaluations || [], ["step", "epoch", "eval_loss"], highlight === null ? undefined : highlight));
  }

  function renderTrainTable(box, metrics) {
    const rows = (metrics.training || []).slice().reverse();
    box.replaceChildren(dataTable(rows, ["step", "epoch", "train_loss", "learning_rate", "grad_norm"]));
  }

  function renderEvents(box, all) {
    // each training log is an event too; the charts and tables show those
    const events = all.filter((e) => e.type !== "metrics");
    box.replaceChildren(...events.map((e) => h("li", { class: "event level-" + e.level },
      h("time", { title: stamp(e.created_at), text: new Date(e.created_at * 1000).toLocaleTimeString() }),
      h("span", { text: e.message }))));
    if (!events.length) box.appendChild(h("li", { class: "muted", text: "No events yet." }));
  }

  function renderDetails(box, job) {
    const rows = [
      ["Training file", h("a", { href: "#/files/" + job.training_file, class: "mono", text: job.training_file })],
      ["Validation file", job.validation_file ? h("a", { href: "#/files/" + job.validation_file, class: "mono", text: job.validation_file }) : "held-out split"],
      ["Training type", Object.entries(job.training_type || {}).map(([k, v]) => `${k}=${v === null ? "default" : v}`).join(", ")],
      ["Hyperparameters", Object.entries(job.hyperparameters || {}).map(([k, v]) => `${k}=${typeof v === "number" ? String(Number(v.toPrecision(6))) : v === null ? "default" : typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")],
      ["Seed", String(job.seed)],
      ["Attempt", String(job.attempt)],
      ["Created", stamp(job.created_at)],
      ["Finished", stamp(job.finished_at)],
      ["Fine-tuned model", job.fine_tuned_model || "–"],
      ["Exported checkpoint", exportedText(job) || "–"],
      ["Validation rows", typeof job.n_validation === "number" ? String(job.n_validation) : "–"],
    ];
    box.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
  }

  async function loadCheckpoints(jobId, cardNode, box) {
    let list;
    try {
      list = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints?limit=50`);
    } catch (e) {
      cardNode.classList.add("hidden"); // an API without checkpoints, or none to show
      return;
    }
    const rows = (list && list.data) || [];
    if (!rows.length) { cardNode.classList.add("hidden"); return; }
    cardNode.classList.remove("hidden");
    const metricNames = [...new Set(rows.flatMap((c) => Object.keys(c.metrics || {}).filter((k) => typeof c.metrics[k] === "number" && k !== "step" && k !== "epoch")))];
    box.replaceChildren(h("table", { class: "table compact numbers" },
      h("thead", {}, h("tr", {}, ["step", "epoch", ...metricNames, "checkpoint", ""].map((t) => h("th", { text: t.replace(/_/g, " ") })))),
      h("tbody", {}, rows.map((c) => h("tr", {},
        h("td", { text: fmt(c.step_number) }),
        h("td", { text: fmt(c.epoch, 2) }),
        metricNames.map((k) => h("td", { text: fmt((c.metrics || {})[k]) })),
        h("td", { class: "small", text: c.fine_tuned_model_checkpoint || c.id }),
        h("td", {}, h("button", { class: "small ghost", type: "button", text: "↓", title: "download this checkpoint", onclick: () =>
          download(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints/${encodeURIComponent(c.id)}/content`, `${jobId}-step-${c.step_number}.tar.gz`).catch((e) => toast(e.message, "error")) })))))));
  }

  async function deploy(model) {
    try {
      const dep = await api("/v1/deployments", { method: "POST", body: { model } });
      toast(`Deploying ${model} as ${dep.id}…`);
      location.hash = "#/deployments?select=" + encodeURIComponent(dep.id);
    } catch (e) { toast(e.message, "error"); }
  }

  // -- files ------------------------------------------------------------------------------------

  async function filesPage() {
    const mine = page;
    const body = h("tbody", {}, emptyRow(7, "Loading…"));
    const progress = h("div", { class: "bar hidden" }, h("div", { style: { width: "0%" } }));
    const input = h("input", { type: "file", id: "file-input", accept: ".jsonl,.json,.csv,.zip" });
    const status = h("span", { class: "muted", text: "JSONL or CSV: classification, prompt-completion or chat rows; a .zip of labelled images or sounds." });
    const send = async (file) => {
      progress.classList.remove("hidden");
      status.textContent = `Uploading ${file.name}…`;
      try {
        const result = await upload(file, "fine-tune", (f) => { progress.firstChild.style.width = (f * 100).toFixed(1) + "%"; });
        location.hash = "#/files/" + result.id;
      } catch (e) { toast(e.message, "error"); status.textContent = e.message; }
      progress.classList.add("hidden");
    };
    input.addEventListener("change", () => { if (input.files[0]) send(input.files[0]); });
    const drop = h("label", { class: "dropzone", for: "file-input" },
      h("strong", { text: "Drop a dataset here" }), h("span", { text: " or click to choose one" }), input);
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
    app.replaceChildren(
      h("div", { class: "page-head" }, h("h1", { text: "Files" })),
      card("Upload", h("div", {}, drop, progress, status)),
      card(null, h("table", { class: "table clickable", id: "files-table" },
        h("thead", {}, h("tr", {}, ["File", "Name", "Status", "Format", "Rows", "Size", "Uploaded"].map((t) => h("th", { text: t })))),
        body)),
    );
    try {
      const list = await api("/v1/files?limit=100");
      if (mine !== page) return;
      body.replaceChildren(...(list.data.length ? list.data.map((f) => h("tr", { onclick: () => { location.hash = "#/files/" + f.id; } },
        h("td", {}, h("a", { class: "mono", href: "#/files/" + f.id, text: f.id })),
        h("td", { text: f.filename }),
        h("td", {}, pill(f.status)),
        h("td", { text: f.format || "–" }),
        h("td", { text: fmt((f.stats || {}).rows) }),
        h("td", { text: bytes(f.bytes) }),
        h("td", { class: "nowrap", title: stamp(f.created_at), text: ago(f.created_at) }),
      )) : [emptyRow(7, "No files yet.")]));
    } catch (e) { fail(body, e); }
    setLive(false);
  }

  async function filePage(fileId) {
    const box = h("div");
    app.replaceChildren(h("div", { class: "crumbs" }, h("a", { href: "#/files", text: "Files" }), " / ", h("span", { class: "mono", text: fileId })), box);
    let file;
    try { file = await api("/v1/files/" + encodeURIComponent(fileId)); } catch (e) { fail(box, e); return; }
    const stats = file.stats || {};
    const errors = file.errors || [];
    const labels = stats.labels && typeof stats.labels === "object" ? Object.entries(stats.labels).sort((a, b) => b[1] - a[1]) : [];
    const peak = Math.max(1, ...labels.map((l) => l[1]));
    const samplesBox = h("div", { id: "file-samples" }, h("p", { class: "muted", text: "Loading samples…" }));
    if (file.samples) loadSamples(file, samplesBox);
    // DOM replaceChildren writes a null as the text "null": leave the absent cards out
    box.replaceChildren(...[
      h("div", { class: "page-head" },
        h("div", {}, h("h1", { text: file.filename }), h("div", { class: "subtitle" }, pill(file.status), " ", h("span", { class: "mono", text: file.id }), " · ", bytes(file.bytes), " · ", stamp(file.created_at))),
        h("div", { class: "row" }, file.status === "processed" ? h("a", { class: "button primary", href: "#/jobs", text: "Train on it", onclick: () => sessionStorage.setItem("tunery_new_job_file", file.id) }) : null)),
      file.status === "error" ? h("div", { class: "notice error", id: "file-problem", text: file.status_details || "The file cannot be used." }) : null,
      h("div", { class: "stats" },
        h("div", { class: "stat" }, h("span", { class: "label", text: "Format" }), h("span", { class: "value", text: file.format || "–" })),
        h("div", { class: "stat" }, h("span", { class: "label", text: "Rows" }), h("span", { class: "value", text: fmt(stats.rows) })),
        h("div", { class: "stat" }, h("span", { class: "label", text: "Longest row" }), h("span", { class: "value", text: fmt(stats.max_chars) }), h("span", { class: "sub", text: "characters" })),
        h("div", { class: "stat" }, h("span", { class: "label", text: "Problems" }), h("span", { class: "value", text: String(errors.length) }), h("span", { class: "sub", text: errors.length >= 20 ? "first 20 shown" : "" }))),
      labels.length ? card("Labels", h("div", { class: "hbars" }, labels.map(([label, count]) => h("div", { class: "hbar" },
        h("span", { class: "hbar-label", text: label }), h("span", { class: "hbar-track" }, h("span", { style: { width: (count / peak * 100) + "%" } })), h("span", { class: "hbar-value", text: fmt(count) }))))) : null,
      file.samples ? card("Samples", samplesBox, { id: "samples-card" }) : null,
      card("Validation report", errors.length ? h("table", { class: "table compact", id: "file-errors" },
        h("thead", {}, h("tr", {}, h("th", { text: "Line" }), h("th", { text: "Problem" }))),
        h("tbody", {}, errors.map((e) => h("tr", {}, h("td", { class: "mono", text: e.path ? e.path : (e.line ? String(e.line) : "file") }), h("td", { text: e.message })))))
        : h("p", { class: "ok", text: "Every row is valid." })),
    ].filter(Boolean));
    setLive(false);
  }

  // a few examples per class of an image or audio archive: thumbnails, or a player each
  async function loadSamples(file, box) {
    let list;
    try { list = await api(`/v1/files/${encodeURIComponent(file.id)}/samples?per_class=6`); } catch (e) { fail(box, e); return; }
    const byLabel = new Map();
    for (const sample of list.data) {
      if (!byLabel.has(sample.label)) byLabel.set(sample.label, []);
      byLabel.get(sample.label).push(sample);
    }
    if (!byLabel.size) { box.replaceChildren(h("p", { class: "muted", text: "The archive has no examples." })); return; }
    box.replaceChildren(...[...byLabel].map(([label, samples]) => h("div", { class: "sample-class", "data-label": label },
      h("h3", {}, label, h("span", { class: "muted small", text: ` · ${fmt(((file.stats || {}).labels || {})[label])} in all` })),
      h("div", { class: "sample-grid" }, samples.map((sample) => h("figure", { class: "sample" },
        sampleMedia(file.id, sample.index, sample.file),
        h("figcaption", {}, h("span", { class: "sample-name", title: sample.file, text: sample.file }))))))));
  }

  // -- models -----------------------------------------------------------------------------------

  async function modelsPage() {
    const body = h("tbody", {}, emptyRow(6, "Loading…"));
    app.replaceChildren(
      h("div", { class: "page-head" }, h("h1", { text: "Models" })),
      card(null, h("table", { class: "table", id: "models-table" },
        h("thead", {}, h("tr", {}, ["Model", "Kind", "Task", "Training", "Created", ""].map((t) => h("th", { text: t })))),
        body)),
    );
    let list;
    try { list = await api("/v1/models"); } catch (e) { fail(body, e); return; }
    body.replaceChildren(...list.data.map((m) => {
      const safe = m.id.replace(/[^A-Za-z0-9_.-]+/g, "_");
      const url = (format) => `/v1/models/${m.id.split("/").map(encodeURIComponent).join("/")}/content?format=${format}`;
      const actions = h("div", { class: "row end" },
        h("button", { class: "small", type: "button", text: "Deploy", onclick: () => deploy(m.id) }));
      if (m.kind === "fine-tuned") {
        if (m.format === "adapter") actions.appendChild(h("button", { class: "small ghost", type: "button", text: "Adapter ↓", onclick: () => download(url("adapter"), safe + "-adapter.tar.gz").catch((e) => toast(e.message, "error")) }));
        actions.appendChild(h("button", { class: "small ghost", type: "button", text: "Merged ↓", onclick: () => download(url("merged"), safe + "-merged.tar.gz").catch((e) => toast(e.message, "error")) }));
      }
      return h("tr", {},
        h("td", {}, h("span", { class: "mono small", text: m.id }), m.job_id ? h("div", {}, h("a", { class: "small", href: "#/jobs/" + m.job_id, text: "from " + m.job_id })) : null),
        h("td", {}, h("span", { class: "tag " + (m.kind === "fine-tuned" ? "tag-tuned" : ""), text: m.kind || "–" })),
        h("td", { text: m.task || "–" }),
        h("td", { text: m.training_type ? `${m.training_type} (${m.format})` : "–" }),
        h("td", { class: "nowrap", title: stamp(m.created), text: ago(m.created) }),
        h("td", {}, actions));
    }));
    setLive(false);
    pullsCard();
  }

  // pulls of base models from the Hub (tunery models pull): progress while any runs
  async function pullsCard() {
    let pulls;
    try { pulls = await api("/v1/models/pulls"); } catch (e) { return; }
    if (!pulls.data.length) return;
    const body = h("tbody", {});
    app.appendChild(card("Pulls from the Hugging Face Hub", h("table", { class: "table", id: "pulls-table" },
      h("thead", {}, h("tr", {}, ["Model", "Revision", "Commit", "Status", "Progress", "Started"].map((t) => h("th", { text: t })))),
      body)));
    const fill = (list) => body.replaceChildren(...list.map((p) => {
      const fraction = p.total_bytes ? p.downloaded_bytes / p.total_bytes : null;
      return h("tr", {},
        h("td", {}, h("span", { class: "mono small", text: p.model })),
        h("td", { class: "mono small", text: p.revision }),
        h("td", { class: "mono small", title: p.sha, text: p.sha.slice(0, 12) }),
        h("td", { title: p.error ? p.error.message : "", text: p.status }),
        h("td", { class: "progress-cell" }, bar(fraction, p.status),
          h("div", { class: "small", text: `${bytes(p.downloaded_bytes)} of ${bytes(p.total_bytes)}, ${p.downloaded_files} of ${p.total_files} files` })),
        h("td", { class: "nowrap", title: stamp(p.created_at), text: ago(p.created_at) }));
    }));
    fill(pulls.data);
    const running = (list) => list.some((p) => p.status === "queued" || p.status === "running");
    if (running(pulls.data)) poll(async () => {
      const next = await api("/v1/models/pulls");
      fill(next.data);
      return running(next.data);
    }, 2000);
  }

  // -- deployments and the playground ----------------------------------------------------------

  async function deploymentsPage(query) {
    const mine = page;
    const wanted = new URLSearchParams(query || "").get("select");
    const body = h("tbody", {}, emptyRow(7, "Loading…"));
    const select = h("select", { id: "playground-deployment" });
    const inputs = h("textarea", { id: "playground-input", rows: 5, placeholder: "One input per line" });
    const files = h("input", { id: "playground-files", type: "file", multiple: true });
    const textField = h("label", { class: "field" }, h("span", { text: "Inputs" }), inputs);
    const fileField = h("label", { class: "field", hidden: true }, h("span", { text: "Files" }), files);
    const params = h("div", { class: "row params" });
    const results = h("div", { id: "playground-results", class: "results" });
    const go = h("button", { class: "primary", id: "playground-run", type: "submit", text: "Predict" });
    // model id -> what its predict takes (`predicts` of GET /v1/models): the form follows it
    const predictsOf = {};
    const paramInputs = {};
    let mediaKind = null; // "image" or "audio" when the model takes files, else null
    const renderParams = () => {
      const dep = select.selectedOptions[0];
      const predicts = (dep && predictsOf[dep.dataset.model]) || { inputs: ["text"], parameters: [] };
      mediaKind = ["image", "audio"].find((kind) => predicts.inputs.includes(kind)) || null;
      textField.hidden = mediaKind !== null;
      fileField.hidden = mediaKind === null;
      if (mediaKind) files.accept = mediaKind + "/*";
      const fields = predicts.parameters.filter((name) => name in PARAMETER_FIELDS);
      params.replaceChildren(...fields.map((name) => {
        const [value, step] = PARAMETER_FIELDS[name];
        paramInputs[name] = h("input", { type: "number", step, value, placeholder: "all", name });
        return h("label", { class: "field inline" }, h("span", { text: name }), paramInputs[name]);
      }));
      for (const k of Object.keys(paramInputs)) if (!fields.includes(k)) delete paramInputs[k];
    };
    select.addEventListener("change", renderParams);
    const dataUrl = (file) => new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error(`${file.name} cannot be read`));
      reader.readAsDataURL(file);
    });
    const form = h("form", { class: "playground", onsubmit: async (ev) => {
      ev.preventDefault();
      if (!select.value) { toast("Deploy a model first.", "error"); return; }
      let shown, body;
      if (mediaKind) {
        const chosen = [...files.files];
        if (!chosen.length) { toast(`Choose at least one ${mediaKind} file.`, "error"); return; }
        shown = chosen.map((f) => f.name);
        body = await Promise.all(chosen.map(async (f) => ({ [mediaKind]: await dataUrl(f) })));
      } else {
        shown = inputs.value.split("\n").map((t) => t.trim()).filter(Boolean);
        if (!shown.length) { toast("Type at least one input.", "error"); return; }
        body = shown;
      }
      const parameters = {};
      for (const [k, input] of Object.entries(paramInputs)) if (input.value !== "") parameters[k] = Number(input.value);
      go.disabled = true;
      results.replaceChildren(h("p", { class: "muted", text: "Predicting…" }));
      const started = performance.now();
      try {
        const out = await api(`/v1/deployments/${select.value}/predict`, { method: "POST", body: { inputs: body, parameters } });
        renderPredictions(results, shown, out.predictions, performance.now() - started);
      } catch (e) { results.replaceChildren(h("div", { class: "notice error", text: e.message })); }
      go.disabled = false;
    } },
      h("label", { class: "field" }, h("span", { text: "Deployment" }), select),
      textField, fileField,
      params, h("div", { class: "row end" }, go));
    app.replaceChildren(
      h("div", { class: "page-head" }, h("h1", { text: "Deployments" })),
      card(null, h("table", { class: "table", id: "deployments-table" },
        h("thead", {}, h("tr", {}, ["Deployment", "Model", "Status", "Requests", "Load time", "Memory", ""].map((t) => h("th", { text: t })))),
        body)),
      card("Playground", h("div", {}, form, results), { id: "playground" }),
    );
    const refresh = async () => {
      const [deps, models] = await Promise.all([api("/v1/deployments"), api("/v1/models")]);
      if (mine !== page) return false;
      for (const m of models.data) predictsOf[m.id] = m.predicts;
      // a checkpoint's deployment: its model is not in the list; ask for it once
      for (const d of deps.data) if (!(d.model in predictsOf)) {
        try { predictsOf[d.model] = (await api("/v1/models/" + encodeURIComponent(d.model))).predicts; } catch (e) { predictsOf[d.model] = null; }
      }
      body.replaceChildren(...(deps.data.length ? deps.data.map((d) => h("tr", { "data-id": d.id },
        h("td", { class: "mono", text: d.id }),
        h("td", { class: "mono small", text: d.model }),
        h("td", {}, pill(d.status), d.error ? h("div", { class: "small error-text", text: d.error.message }) : null),
        h("td", { text: fmt(d.requests_served) }),
        h("td", { text: d.load_seconds === null || d.load_seconds === undefined ? "–" : d.load_seconds.toFixed(1) + " s" }),
        h("td", { class: "nowrap", text: d.memory_bytes ? bytes(d.memory_bytes) : "–" }),
        h("td", {}, h("button", { class: "small ghost", type: "button", text: "Undeploy", onclick: async () => {
          if (!confirm(`Undeploy ${d.id}?`)) return;
          try { await api("/v1/deployments/" + d.id, { method: "DELETE" }); refresh(); } catch (e) { toast(e.message, "error"); }
        } })))) : [emptyRow(7, "Nothing deployed. Deploy a model from the Models page or a finished job.")]));
      const current = select.value || wanted;
      const ready = deps.data.filter((d) => d.status === "ready");
      select.replaceChildren(...ready.map((d) => h("option", { value: d.id, "data-model": d.model, text: `${d.id} · ${d.model}` })));
      if (current && ready.some((d) => d.id === current)) select.value = current;
      if (!Object.keys(paramInputs).length || select.value !== current) renderParams();
      return deps.data.some((d) => d.status === "loading");
    };
    try {
      if (!(await refresh())) { setLive(false); return; }
    } catch (e) { fail(body, e); return; }
    poll(refresh, 1500);
  }

  function renderPredictions(box, texts, predictions, ms) {
    box.replaceChildren(h("p", { class: "muted small", text: `${predictions.length} prediction${predictions.length === 1 ? "" : "s"} in ${Math.round(ms)} ms` }),
      ...predictions.map((p, i) => {
        if ("label" in p) {
          const scores = Object.entries(p.scores || { [p.label]: p.score });
          return h("div", { class: "prediction" },
            h("div", { class: "prediction-input", text: texts[i] }),
            h("div", { class: "hbars" }, scores.map(([label, score]) => h("div", { class: "hbar" + (label === p.label ? " top" : "") },
              h("span", { class: "hbar-label", text: label }),
              h("span", { class: "hbar-track" }, h("span", { style: { width: (score * 100).toFixed(1) + "%" } })),
              h("span", { class: "hbar-value", text: (score * 100).toFixed(1) + "%" })))));
        }
        return h("div", { class: "prediction" },
          h("div", { class: "prediction-input", text: texts[i] }),
          h("pre", { class: "generated", text: p.text }),
          h("div", { class: "muted small", text: `${p.finish_reason || ""} · ${p.completion_tokens ?? "?"} tokens` }));
      }));
  }

  // -- sweeps ------------------------------------------------------------------------------------

  const TRIAL_COLORS = ["#4f46e5", "#16a34a", "#f97316", "#0891b2", "#9333ea", "#db2777", "#ca8a04", "#64748b"];

  function trialsDone(sweep) {
    return sweep.trials.filter((t) => t.state !== "running").length;
  }

  async function sweepsPage() {
    const mine = page;
    const body = h("tbody", {}, emptyRow(6, "Loading…"));
    app.replaceChildren(
      h("div", { class: "page-head" }, h("h1", { text: "Sweeps" })),
      card(null, h("table", { class: "table clickable", id: "sweeps-table" },
        h("thead", {}, h("tr", {}, ["Sweep", "Status", "Trials", "Best", "Created", "Best model"].map((t) => h("th", { text: t })))),
        body)),
    );
    const refresh = async () => {
      const list = await api("/v1/fine_tuning/sweeps?limit=50");
      if (mine !== page) return false;
      body.replaceChildren(...(list.data.length ? list.data.map((sw) => h("tr", { "data-id": sw.id, onclick: () => { location.hash = "#/sweeps/" + sw.id; } },
        h("td", {}, h("a", { href: "#/sweeps/" + sw.id, class: "mono", text: sw.id })),
        h("td", {}, pill(sw.status)),
        h("td", { class: "progress-cell" }, bar(trialsDone(sw) / sw.n_trials, sw.status), h("small", { text: `${trialsDone(sw)} of ${sw.n_trials}` })),
        h("td", { text: `${sw.objective.metric} ${fmt(sw.best_value)}` }),
        h("td", { class: "nowrap", title: stamp(sw.created_at), text: ago(sw.created_at) }),
        h("td", { class: "mono small", text: sw.best_fine_tuned_model || "–" }),
      )) : [emptyRow(6, "No sweeps yet: `tunery sweeps create --spec sweep.yaml` or POST /v1/fine_tuning/sweeps.")]));
      return true;
    };
    try { await refresh(); } catch (e) { fail(body, e); return; }
    poll(refresh, 3000);
  }

  // a parameter's value on a numeric axis: log10 for log ranges, the index for choices
  function axisOf(dimension) {
    if (dimension.type === "choice") {
      const values = dimension.values.map((v) => JSON.stringify(v));
      return { label: "choice index (" + dimension.values.join(", ") + ")", at: (v) => values.indexOf(JSON.stringify(v)) };
    }
    if (dimension.type === "log_uniform" || dimension.log) return { label: "log10", at: (v) => Math.log10(v) };
    return { label: "value", at: (v) => v };
  }

  function trialValue(trial) {
    if (typeof trial.value === "number") return trial.value;
    const last = trial.intermediate_values[trial.intermediate_values.length - 1];
    return last ? last[1] : null;
  }

  function renderSweepCharts(overTime, paramsBox, sweep) {
    const metric = sweep.objective.metric;
    // trials of one sweep often differ in the third or fourth digit
    const precise = (v) => Number(v.toPrecision(4)).toString();
    TinyChart.line(overTime, {
      xLabel: "step", title: metric + " by step, per trial", yFormat: precise,
      series: sweep.trials.map((t) => ({
        name: `trial ${t.number}${t.state === "pruned" ? " (pruned)" : ""}`,
        color: t.state === "pruned" ? "#dc2626" : TRIAL_COLORS[t.number % TRIAL_COLORS.length],
        dashed: t.state === "pruned", markers: true, width: t.number === sweep.best_trial ? 3 : 1.5,
        points: t.intermediate_values,
      })),
      emptyText: "Each trial's evaluations appear here as it trains.",
    });
    const charts = Object.entries(sweep.search_space).map(([path, dimension]) => {
      const axis = axisOf(dimension);
      const box = h("div", { class: "chart", "data-param": path });
      const points = (state) => sweep.trials.filter((t) => t.state === state && trialValue(t) !== null && path in t.params)
        .map((t) => [axis.at(t.params[path]), trialValue(t)]);
      const node = card(path.split(".").pop() + " vs " + metric, box);
      setTimeout(() => TinyChart.line(box, {
        xLabel: `${path} (${axis.label})`, height: 200, yFormat: precise,
        series: [
          { name: "complete", color: "#16a34a", scatter: true, points: points("complete") },
          { name: "pruned", color: "#dc2626", scatter: true, points: points("pruned") },
          { name: "running", color: "#4f46e5", scatter: true, points: points("running") },
        ],
        emptyText: "Points appear as trials report.",
      }), 0);
      return node;
    });
    paramsBox.replaceChildren(...charts);
  }

  function renderTrials(box, sweep) {
    const paths = Object.keys(sweep.search_space);
    box.replaceChildren(h("table", { class: "table", id: "trials-table" },
      h("thead", {}, h("tr", {}, ["Trial", "State", sweep.objective.metric, "Steps", ...paths.map((p) => p.split(".").pop()), "Job"].map((t) => h("th", { text: t })))),
      h("tbody", {}, sweep.trials.length ? sweep.trials.map((t) => h("tr", { class: t.number === sweep.best_trial ? "best" : "", "data-state": t.state },
        h("td", { text: String(t.number) + (t.number === sweep.best_trial ? " ★" : "") }),
        h("td", {}, pill(t.state)),
        h("td", { text: fmt(t.value) }),
        h("td", { text: fmt(t.steps) }),
        ...paths.map((p) => h("td", { class: "mono small", text: fmt(t.params[p]) })),
        h("td", {}, t.job_id ? h("a", { href: "#/jobs/" + t.job_id, class: "mono small", text: t.job_id }) : h("span", { class: "muted", text: t.error || "–" })),
      )) : [emptyRow(5 + paths.length, "No trial yet.")])));
  }

  async function sweepPage(sweepId) {
    const mine = page;
    const head = h("div", { class: "page-head" });
    const summary = h("div", { class: "stats" });
    const errorBox = h("div");
    const overTime = h("div", { class: "chart", id: "sweep-chart" });
    const paramsBox = h("div", { class: "grid two", id: "param-charts" });
    const trialsBox = h("div", { class: "scroll" });
    const eventsBox = h("ol", { class: "events", id: "sweep-events" });
    app.replaceChildren(
      h("div", { class: "crumbs" }, h("a", { href: "#/sweeps", text: "Sweeps" }), " / ", h("span", { class: "mono", text: sweepId })),
      head, errorBox, summary,
      card("Objective over time", overTime),
      paramsBox,
      card("Trials", trialsBox),
      card("Events", eventsBox),
    );
    const refresh = async () => {
      const [sweep, events] = await Promise.all([
        api(`/v1/fine_tuning/sweeps/${encodeURIComponent(sweepId)}`),
        api(`/v1/fine_tuning/sweeps/${encodeURIComponent(sweepId)}/events?limit=100`),
      ]);
      if (mine !== page) return false;
      const actions = h("div", { class: "row" });
      if (sweep.status === "running") {
        actions.appendChild(h("button", { class: "danger", id: "cancel-sweep", type: "button", text: "Cancel sweep", onclick: async (ev) => {
          if (!confirm(`Cancel ${sweep.id} and its running trials?`)) return;
          ev.target.disabled = true;
          try { await api(`/v1/fine_tuning/sweeps/${sweep.id}/cancel`, { method: "POST" }); toast("Sweep cancelled."); }
          catch (e) { toast(e.message, "error"); ev.target.disabled = false; }
        } }));
      }
      if (sweep.best_fine_tuned_model) {
        actions.appendChild(h("button", { class: "primary", type: "button", text: "Deploy best", onclick: () => deploy(sweep.best_fine_tuned_model) }));
      }
      head.replaceChildren(
        h("div", {}, h("h1", { class: "mono", text: sweep.id }), h("div", { class: "subtitle" }, pill(sweep.status), " ", sweep.job.model, ` · ${sweep.sampler} sampler · ${sweep.pruner} pruner`)),
        actions);
      errorBox.replaceChildren(...(sweep.error ? [h("div", { class: "notice error", text: sweep.error.message })] : []));
      const stat = (label, value, sub, id) => h("div", { class: "stat", id }, h("span", { class: "label", text: label }), h("span", { class: "value", text: value }), sub ? h("span", { class: "sub", text: sub }) : null);
      const pruned = sweep.trials.filter((t) => t.state === "pruned").length;
      summary.replaceChildren(
        stat("Trials", `${trialsDone(sweep)} / ${sweep.n_trials}`, `${sweep.max_parallel} at a time; ${pruned} pruned`, "trials-stat"),
        stat("Best " + sweep.objective.metric, fmt(sweep.best_value), sweep.best_trial === null ? sweep.objective.direction : `trial ${sweep.best_trial}`, "best-stat"),
        stat("Steps trained", fmt(sweep.total_steps), "all trials"),
        stat("Best model", sweep.best_fine_tuned_model ? "ready" : "–", sweep.best_fine_tuned_model || "when the sweep ends"),
      );
      renderSweepCharts(overTime, paramsBox, sweep);
      renderTrials(trialsBox, sweep);
      renderEvents(eventsBox, events.data);
      return !TERMINAL.has(sweep.status);
    };
    try {
      if (!(await refresh())) { setLive(false); return; }
    } catch (e) { fail(summary, e); return; }
    poll(refresh, 2000);
  }

  // -- router -----------------------------------------------------------------------------------

  const ROUTES = [
    [/^#\/jobs\/([^/?]+)$/, jobPage, "jobs"],
    [/^#\/jobs\/?$/, jobsPage, "jobs"],
    [/^#\/sweeps\/([^/?]+)$/, sweepPage, "sweeps"],
    [/^#\/sweeps\/?$/, sweepsPage, "sweeps"],
    [/^#\/files\/([^/?]+)$/, filePage, "files"],
    [/^#\/files\/?$/, filesPage, "files"],
    [/^#\/models\/?$/, modelsPage, "models"],
    [/^#\/deployments\/?(?:\?(.*))?$/, deploymentsPage, "deployments"],
  ];

  function route() {
    page += 1;
    clearTimeout(pollTimer);
    setLive(false);
    const hash = location.hash || "#/jobs";
    for (const [pattern, render, section] of ROUTES) {
      const match = hash.match(pattern);
      if (!match) continue;
      for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.section === section);
      document.title = `Tunery · ${section[0].toUpperCase() + section.slice(1)}`;
      render(...match.slice(1).map((m) => (m === undefined ? m : decodeURIComponent(m))));
      return;
    }
    location.hash = "#/jobs";
  }

  window.addEventListener("hashchange", route);
  route();
})();
