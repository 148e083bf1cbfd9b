// The review queue (one label at a time, keyboard first, the next label without a page reload; every decision
// a POST to the API) and, on the history page, a labeler's request for a change to a frozen label.
"use strict";

(() => {
  const API = {ranking: "/api/rankings", demonstration: "/api/demonstrations"};

  // --- The reviewer's page --------------------------------------------------------------------------------------

  let busy = false;

  function panel() { return document.getElementById("task-panel"); }

  // Load a label of the same queue: {after: id} the next one, {before: id} the previous one, {} the first.
  async function load(cursor = {}) {
    const current = panel();
    const url = new URL(current.dataset.panelUrl, window.location.origin);
    url.searchParams.set("kind", current.dataset.filterKind);
    url.searchParams.set("status", current.dataset.filterStatus);
    if (current.dataset.changeRequested) url.searchParams.set("change_requested", "1");
    for (const [name, id] of Object.entries(cursor)) url.searchParams.set(name, id);
    try {
      const fresh = await RL.loadPanel(url.pathname + url.search);
      fresh.focus({preventScroll: true});
      setupPanel(fresh);
    } catch (error) {
      RL.toast(`Could not load the next label (${error.message}).`, {error: true});
    }
  }

  async function send(url, body, done) {
    if (busy) return;
    busy = true;
    const current = panel();
    current.querySelector("#progress").textContent = "Saving…";
    const result = await RL.api("POST", url, body);
    busy = false;
    if (!result.ok) {
      current.querySelector("#progress").textContent = "";
      RL.toast(RL.errorText(result), {error: true, timeout: 8000});
      return;
    }
    RL.toast(done);
    await load({after: current.dataset.labelId});
  }

  function decide(decision, reason = "") {
    const current = panel();
    if (!current.dataset.labelId) return;
    const url = `${API[current.dataset.kind]}/${current.dataset.labelId}/review/`;
    const body = {decision, reason, revision: parseInt(current.dataset.revision, 10)};
    send(url, body, decision === "accept" ? "Accepted." : "Rejected.");
  }

  function openReject() {
    if (!panel().dataset.labelId) return;
    const dialog = document.getElementById("reject-dialog");
    document.getElementById("reject-form").reset();
    dialog.showModal();
    document.getElementById("reject-reason").focus();
  }

  function toggleEdit(show) {
    const area = document.getElementById("edit-area");
    if (!area) return;
    area.hidden = !show;
    if (show) document.getElementById("edit-text").focus();
    else panel().focus({preventScroll: true});
  }

  function saveEdit() {
    const current = panel();
    const reason = document.getElementById("edit-reason");
    if (!reason.value.trim()) { RL.toast("Say why you edit it: the labeler reads this.", {error: true}); reason.focus(); return; }
    const body = {text: document.getElementById("edit-text").value, reason: reason.value,
                  revision: parseInt(current.dataset.revision, 10)};
    send(`${API.demonstration}/${current.dataset.labelId}/edit/`, body, "Edited and accepted.");
  }

  function next() {
    const current = panel();
    if (current.dataset.labelId) load({after: current.dataset.labelId});
  }

  function previous() {
    const current = panel();
    const id = current.dataset.labelId || current.dataset.cursor;
    if (id) load({before: id});
  }

  function setupPanel(current) {
    const on = (id, handler) => { const el = current.querySelector(`#${id}`); if (el) el.addEventListener("click", handler); };
    on("accept-button", () => decide("accept"));
    on("reject-button", openReject);
    on("edit-button", () => toggleEdit(true));
    on("edit-cancel", () => toggleEdit(false));
    on("edit-save", saveEdit);
    on("next-button", next);
    on("previous-button", previous);
  }

  function setupReviewPage() {
    const form = document.getElementById("reject-form");
    document.getElementById("reject-cancel").addEventListener("click", () => document.getElementById("reject-dialog").close());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const reason = document.getElementById("reject-reason");
      if (!reason.value.trim()) { reason.focus(); return; }
      document.getElementById("reject-dialog").close();
      decide("reject", reason.value);
    });
    document.addEventListener("keydown", (event) => {
      const area = document.getElementById("edit-area");
      const editing = area !== null && !area.hidden;
      if (editing && event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); saveEdit(); return; }
      if (editing && event.key === "Escape") { event.preventDefault(); toggleEdit(false); return; }
      if (RL.isTyping(event) || event.altKey || event.ctrlKey || event.metaKey) return;
      if (document.querySelector("dialog[open]")) return;
      const actions = {
        "?": () => document.getElementById("help-dialog").showModal(),
        g: () => { const d = document.getElementById("guidelines"); d.open = !d.open; },
        h: () => { const d = document.getElementById("revisions"); if (d) d.open = !d.open; },
        a: () => decide("accept"),
        r: openReject,
        e: () => toggleEdit(true),
        j: next,
        k: previous,
      };
      if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
    });
    setupPanel(panel());
  }

  // --- The labeler's history: ask for a change ------------------------------------------------------------------

  function setupChangeRequests() {
    const dialog = document.getElementById("change-dialog");
    const form = document.getElementById("change-form");
    let target = null;
    for (const button of document.querySelectorAll("[data-request-change]")) {
      button.addEventListener("click", () => {
        target = button;
        form.reset();
        dialog.showModal();
        document.getElementById("change-message").focus();
      });
    }
    document.getElementById("change-cancel").addEventListener("click", () => dialog.close());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const message = document.getElementById("change-message");
      if (!message.value.trim()) { message.focus(); return; }
      dialog.close();
      const url = `${API[target.dataset.kind]}/${target.dataset.requestChange}/request-change/`;
      const result = await RL.api("POST", url, {message: message.value});
      if (!result.ok) { RL.toast(RL.errorText(result), {error: true, timeout: 8000}); return; }
      const note = document.createElement("span");
      note.className = "muted";
      note.textContent = "change requested";
      target.replaceWith(note);
      RL.toast("Your request went to the reviewers.");
    });
  }

  if (document.querySelector(".review-panel")) setupReviewPage();
  if (document.getElementById("change-dialog")) setupChangeRequests();
})();
