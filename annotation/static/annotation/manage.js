// Admin pages: start/cancel rounds, cancel/retry jobs, live progress (polling the API), charts over steps.
"use strict";

(() => {
  const CHARTS = [  // [title, metric-name test]; PPO's and RLOO's rollouts report the same names under ppo/, rloo/
    ["Loss", name => /loss$/.test(name) && !name.startsWith("summary/")],
    ["Ranking accuracy (RM; DPO's implicit reward)", name => name.includes("accuracy") && !name.startsWith("summary/")],
    ["Reward margin, better − worse (RM; DPO's implicit reward)", name => ["train/margin", "eval/margin"].includes(name)],
    ["Reward", name => /^(ppo|rloo)\/(score|reward)$/.test(name)],
    ["KL", name => /^(ppo|rloo)\/(kl|kl_penalty)$/.test(name)],
    ["Policy update (clip fraction, approx. KL)", name => /^(ppo|rloo)\/(clipfrac|approx_kl)$/.test(name)],
    ["Held-out score (training RM, judge)", name => ["eval/score", "eval/judge"].includes(name)],
    ["Held-out KL to SFT (nats per sequence)", name => name === "eval/kl"],
    ["Held-out length (tokens)", name => name === "eval/length"],
    ["Held-out EOS rate", name => name === "eval/eos_rate"],
  ];
  const COLORS = ["#0b5cad", "#b42318", "#1a7f37", "#7a4cc2", "#b54708", "#0e7490"];
  const charts = new Map();

  function setText(root, field, text) { const el = root.querySelector(`[data-field="${field}"]`); if (el) el.textContent = text; }

  function showJob(root, job) {
    setText(root, "status", job.status);
    const status = root.querySelector('[data-field="status"]');
    if (status) status.className = `status status-${job.status}`;
    const bar = root.querySelector('[data-field="progress"]');
    if (bar) { bar.max = Math.max(job.total, 1); bar.value = job.step; }
    setText(root, "steps", `${job.step}/${job.total}`);
    setText(root, "eta", job.eta_seconds ? `${Math.round(job.eta_seconds)} s` : "–");
    setText(root, "attempts", String(job.attempts));
    setText(root, "worker", job.worker_host || "–");
    setText(root, "reason", job.failure_reason || "");
    const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
    root.querySelectorAll('.job-action[data-action="cancel"]').forEach(b => { b.hidden = finished; });
    root.querySelectorAll('.job-action[data-action="retry"]').forEach(b => { b.hidden = !["failed", "cancelled"].includes(job.status); });
  }

  function drawCharts(history) {
    const host = document.getElementById("charts");
    if (!host || !window.Chart || !history.length) return;
    const names = [...new Set(history.flatMap(point => Object.keys(point)))].filter(n => n !== "step");
    for (const [title, test] of CHARTS) {
      const series = names.filter(test);
      if (!series.length) continue;
      const datasets = series.map((name, i) => ({
        label: name, borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length],
        pointRadius: 0, borderWidth: 2, spanGaps: true,
        data: history.filter(p => p[name] !== undefined && p[name] !== null).map(p => ({x: p.step, y: p[name]})),
      }));
      if (charts.has(title)) {
        const chart = charts.get(title);
        chart.data.datasets = datasets;
        chart.update("none");
        continue;
      }
      const figure = document.createElement("figure");
      figure.className = "chart";
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `${title} over steps: ${series.join(", ")}`);
      const caption = document.createElement("figcaption");
      caption.textContent = title;
      figure.append(caption, canvas);
      host.append(figure);
      charts.set(title, new Chart(canvas, {
        type: "line", data: {datasets},
        options: {animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
                  scales: {x: {type: "linear", title: {display: true, text: "step"}}}},
      }));
    }
  }

  function showMetrics(metrics) {
    const body = document.querySelector("#metrics tbody");
    if (!body) return;
    const shown = Object.entries(metrics).filter(([name]) => !(name.startsWith("summary/") && name.slice(8) in metrics));
    body.replaceChildren(...shown.map(([name, value]) => {
      const row = document.createElement("tr");
      const th = document.createElement("th"); th.scope = "row"; th.textContent = name;
      const td = document.createElement("td"); td.textContent = typeof value === "number" ? value.toPrecision(5) : String(value);
      row.append(th, td);
      return row;
    }));
  }

  async function pollJob(root) {
    const result = await RL.api("GET", `/api/jobs/${root.dataset.jobId}/`);
    if (result.ok) {
      showJob(root, result.data);
      drawCharts(result.data.history || []);
      showMetrics(result.data.metrics || {});
      const log = document.getElementById("log");
      if (log) log.textContent = result.data.log_tail;  // textContent: logs are shown as text, never HTML
      if (!["succeeded", "failed", "cancelled"].includes(result.data.status)) setTimeout(() => pollJob(root), 2000);
    }
  }

  async function pollJobs(manage) {
    const result = await RL.api("GET", `/api/jobs/?project=${manage.dataset.projectId}&page_size=50`);
    if (!result.ok) return;
    let active = false;
    for (const job of result.data.results) {
      const row = document.querySelector(`tr[data-job-id="${job.id}"]`);
      if (!row) { if (!["succeeded", "failed", "cancelled"].includes(job.status)) window.location.reload(); continue; }
      showJob(row, job);
      active = active || ["queued", "running"].includes(job.status);
    }
    setTimeout(() => pollJobs(manage), active ? 2000 : 5000);
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.classList.contains("job-action")) {
      const result = await RL.api("POST", `/api/jobs/${button.dataset.jobId}/${button.dataset.action}/`);
      RL.toast(result.ok ? `Job ${button.dataset.action === "retry" ? "queued again" : "asked to stop"}.` : RL.errorText(result),
               {error: !result.ok});
      if (result.ok) setTimeout(() => window.location.reload(), 800);
    } else if (button.classList.contains("cancel-round")) {
      const result = await RL.api("POST", `/api/rounds/${button.dataset.roundId}/cancel/`);
      RL.toast(result.ok ? "Round cancelled." : RL.errorText(result), {error: !result.ok});
      if (result.ok) setTimeout(() => window.location.reload(), 800);
    } else if (button.id === "set-base") {
      const value = document.getElementById("base-model").value;
      const result = await RL.api("PATCH", `/api/projects/${document.getElementById("manage").dataset.projectId}/`,
                                  {base_model: value ? Number(value) : null});
      RL.toast(result.ok ? "Base model saved: round 1 starts from it." : RL.errorText(result), {error: !result.ok});
    } else if (button.id === "start-round") {
      let config;
      try { config = JSON.parse(document.getElementById("round-config").value || "{}"); }
      catch (e) { RL.toast(`The config is not valid JSON: ${e.message}`, {error: true, timeout: 8000}); return; }
      button.disabled = true;
      const result = await RL.api("POST", `/api/projects/${document.getElementById("manage").dataset.projectId}/start-round/`, {config});
      button.disabled = false;
      if (!result.ok) { RL.toast(RL.errorText(result), {error: true, timeout: 10000}); return; }
      RL.toast(`Round ${result.data.number} started.`);
      setTimeout(() => window.location.reload(), 800);
    }
  });

  // The path select writes "path" into the config; a preset keeps the path chosen.
  const presetSelect = document.getElementById("round-preset");
  const pathSelect = document.getElementById("round-path");
  const roundConfig = document.getElementById("round-config");
  if (presetSelect) presetSelect.addEventListener("change", () => {
    const presets = JSON.parse(document.getElementById("round-presets").textContent);
    roundConfig.value = JSON.stringify({...presets[presetSelect.value], path: pathSelect.value}, null, 2);
  });
  if (pathSelect) pathSelect.addEventListener("change", () => {
    let config;
    try { config = JSON.parse(roundConfig.value || "{}"); }
    catch (e) { RL.toast(`The config is not valid JSON: ${e.message}`, {error: true, timeout: 8000}); return; }
    roundConfig.value = JSON.stringify({...config, path: pathSelect.value}, null, 2);
  });

  const newProject = document.getElementById("new-project");
  if (newProject) newProject.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(newProject);
    if (!form.get("prompts") || !form.get("prompts").size) form.delete("prompts");
    if (!form.get("base_model")) form.delete("base_model");
    const submit = newProject.querySelector("button[type=submit]");
    const status = document.getElementById("new-project-status");
    submit.disabled = true;
    status.textContent = "Creating the project and importing its prompts…";
    const result = await RL.upload("/api/projects/", form);
    submit.disabled = false;
    if (!result.ok) { status.textContent = ""; RL.toast(RL.errorText(result), {error: true, timeout: 15000}); return; }
    const imported = result.data.imported;
    status.textContent = `Created with ${imported.created} prompts (${imported.duplicates} duplicates, ${imported.left_out} left out).`;
    setTimeout(() => { window.location.href = `/manage/projects/${result.data.id}/`; }, 1200);
  });

  const job = document.getElementById("job");
  if (job) pollJob(job);
  const manage = document.getElementById("manage");
  if (manage) pollJobs(manage);
})();
