// Demonstration editor: live sanitized markdown preview, character count, a local draft that survives a
// reload, Ctrl+Enter to submit, skip with undo, and the next task without a page reload.
"use strict";

(() => {
  let current = null;

  class DemonstrationEditor {
    constructor(panel) {
      this.panel = panel;
      this.text = panel.querySelector("#demo-text");
      this.preview = panel.querySelector("#preview");
      this.submitButton = panel.querySelector("#submit-button");
      this.draftKey = `rlhf-draft:${panel.dataset.user}:${panel.dataset.correcting ? "c" + panel.dataset.correcting : panel.dataset.taskId}`;
      this.timer = new RL.Timer();
      this.busy = false;
      this.previewTimer = null;
      const draft = localStorage.getItem(this.draftKey);
      if (draft !== null && draft !== this.text.value) {
        this.text.value = draft;
        panel.querySelector("#draft-state").textContent = "· draft restored";
      }
      this.text.addEventListener("input", () => this.changed());
      this.submitButton.addEventListener("click", () => this.submit());
      this.changed(false);
    }

    changed(save = true) {
      const value = this.text.value;
      this.panel.querySelector("#char-count").textContent = `${value.length} character${value.length === 1 ? "" : "s"}`;
      this.submitButton.disabled = this.busy || !value.trim();
      if (save) {
        localStorage.setItem(this.draftKey, value);
        this.panel.querySelector("#draft-state").textContent = "· draft saved on this device";
      }
      clearTimeout(this.previewTimer);
      this.previewTimer = setTimeout(() => this.renderPreview(value), 250);
    }

    async renderPreview(value) {
      const form = new URLSearchParams({text: value});
      const response = await fetch(this.panel.dataset.previewUrl, {
        method: "POST", credentials: "same-origin", body: form,
        headers: {"X-CSRFToken": document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/)?.[1] || ""},
      });
      if (response.ok && this.text.value === value) { this.preview.innerHTML = await response.text(); }
    }

    async submit() {
      const value = this.text.value;
      if (this.busy || !value.trim()) return;
      this.busy = true;
      this.submitButton.disabled = true;
      const correcting = this.panel.dataset.correcting;
      const url = correcting ? `/api/demonstrations/${correcting}/correct/`
                             : `/api/tasks/${this.panel.dataset.taskId}/submit-demonstration/`;
      const result = await RL.api("POST", url, {text: value, seconds_spent: this.timer.seconds()});
      this.busy = false;
      if (!result.ok) { RL.toast(RL.errorText(result), {error: true, timeout: 8000}); this.changed(false); return; }
      localStorage.removeItem(this.draftKey);
      if (correcting) { RL.toast("Correction saved."); window.location.assign("/history/?kind=demonstration"); return; }
      RL.toast("Demonstration submitted.");
      await reload();
    }

    destroy() { this.timer.stop(); clearTimeout(this.previewTimer); }
  }

  async function reload(taskId = null) {
    const panel = document.getElementById("task-panel");
    const url = panel.dataset.panelUrl || `/p/${panel.dataset.projectId}/demonstration/panel/`;
    if (current) current.destroy();
    start(await RL.loadPanel(taskId ? `${url}?task=${taskId}` : url, !taskId));
  }

  function start(panel) {
    current = panel.querySelector("#demo-text") ? new DemonstrationEditor(panel) : null;
    RL.setupSkip(panel, reload);
    if (panel.dataset.claim) reload();  // the page holds no task yet: ask for the next one (a POST)
  }

  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && current) { event.preventDefault(); current.submit(); }
    else if (event.key === "g" && !RL.isTyping(event) && !event.ctrlKey) {
      const d = document.getElementById("guidelines"); d.open = !d.open;
    }
  });

  start(document.getElementById("task-panel"));
})();
