// Shared helpers for the labeler pages: API calls with CSRF, toasts, time on task, panel swapping,
// and skip-with-undo. No inline scripts anywhere (the pages run under a strict CSP).
"use strict";

const RL = (() => {
  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken(), "Accept": "application/json"},
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch (e) { data = null; }
    }
    return {status: response.status, ok: response.ok, data};
  }

  // A multipart form (a file upload): the browser sets the Content-Type with its boundary.
  async function upload(url, form) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin", body: form,
      headers: {"X-CSRFToken": csrfToken(), "Accept": "application/json"},
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return {status: response.status, ok: response.ok, data};
  }

  function errorText(result) {
    if (!result.data) return `Something went wrong (HTTP ${result.status}). Your work is still on the page.`;
    const fields = result.data.fields || {};
    const details = Object.entries(fields).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("; ");
    return `${result.data.message || "Error"}${details ? " — " + details : ""}`;
  }

  let toastTimer = null;
  function toast(message, {actionLabel = null, onAction = null, timeout = 4000, error = false} = {}) {
    const el = document.getElementById("toast");
    el.replaceChildren();
    const text = document.createElement("span");
    text.textContent = message;
    el.append(text);
    if (actionLabel) {
      const button = document.createElement("button");
      button.type = "button";
      button.id = "toast-action";
      button.textContent = actionLabel;
      button.addEventListener("click", () => { hide(); onAction(); });
      el.append(button);
    }
    el.classList.toggle("error", error);
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(hide, timeout);
    function hide() { el.hidden = true; }
  }

  // Seconds the page was visible since start(): time on task, not time the tab sat in the background.
  class Timer {
    constructor() {
      this.total = 0;
      this.since = document.hidden ? null : performance.now();
      this.onVisibility = () => {
        if (document.hidden && this.since !== null) { this.total += performance.now() - this.since; this.since = null; }
        else if (!document.hidden && this.since === null) { this.since = performance.now(); }
      };
      document.addEventListener("visibilitychange", this.onVisibility);
    }
    seconds() {
      const running = this.since === null ? 0 : performance.now() - this.since;
      return Math.round((this.total + running) / 100) / 10;
    }
    stop() { document.removeEventListener("visibilitychange", this.onVisibility); }
  }

  // Replace the task panel with a server-rendered one (no full page reload): with claim, POST for the next
  // task (only a POST leases one); without, GET the task the user holds (url?task=ID after an undo).
  async function loadPanel(url, claim = false) {
    const response = await fetch(url, {
      method: claim ? "POST" : "GET", credentials: "same-origin",
      headers: claim ? {"Accept": "text/html", "X-CSRFToken": csrfToken()} : {"Accept": "text/html"},
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const host = document.getElementById("panel-host");
    host.innerHTML = await response.text();  // server-rendered, sanitized HTML
    const panel = document.getElementById("task-panel");
    const focusTarget = panel.querySelector(".card, textarea") || panel;
    focusTarget.focus({preventScroll: true});
    window.scrollTo({top: 0});
    return panel;
  }

  // Skip with a reason, then offer an undo for a few seconds that gives the task back.
  function setupSkip(panel, reload) {
    const button = document.getElementById("skip-button");
    const dialog = document.getElementById("skip-dialog");
    if (!button || !dialog) return;
    button.addEventListener("click", () => openSkip(panel, reload));
  }

  function openSkip(panel, reload) {
    const dialog = document.getElementById("skip-dialog");
    const form = document.getElementById("skip-form");
    form.reset();
    dialog.showModal();
    document.getElementById("skip-cancel").onclick = () => dialog.close();
    form.onsubmit = async (event) => {
      event.preventDefault();
      const reason = document.getElementById("skip-reason").value;
      if (!reason) { document.getElementById("skip-reason").focus(); return; }
      const detail = document.getElementById("skip-detail").value.trim();
      dialog.close();
      const taskId = panel.dataset.taskId;
      const result = await api("POST", `/api/tasks/${taskId}/skip/`, {reason: detail ? `${reason}: ${detail}` : reason});
      if (!result.ok) { toast(errorText(result), {error: true, timeout: 8000}); return; }
      await reload();
      toast("Task skipped.", {actionLabel: "Undo", timeout: 10000, onAction: async () => {
        const undone = await api("POST", `/api/tasks/${taskId}/undo-skip/`);
        if (undone.status === 200) { await reload(taskId); toast("Skip undone: the task is back."); }
        else if (undone.ok) { toast("Skip undone, but the task was taken meanwhile."); }
        else { toast(errorText(undone), {error: true}); }
      }});
    };
  }

  function isTyping(event) {
    const tag = event.target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || event.target.isContentEditable;
  }

  return {api, upload, csrfToken, errorText, toast, Timer, loadPanel, setupSkip, openSkip, isTyping};
})();
