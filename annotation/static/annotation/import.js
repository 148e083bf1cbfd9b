// The project page's "Import data" form. It posts the file to the API's import (the code path that
// scripts and manage.py import_data share) with XMLHttpRequest, whose upload progress events drive the
// <progress> bar; then the server checks every line and imports, and the page shows the report or the
// bad lines. Everything from the answer goes in as textContent: error messages can quote the uploaded
// file, and the file is untrusted.
"use strict";

(() => {
  const form = document.getElementById("import-form");
  if (!form) return;
  const byId = id => document.getElementById(id);
  const file = byId("import-file"), format = byId("import-format"), hint = byId("import-format-hint");
  const bar = byId("import-progress"), status = byId("import-status"), button = byId("import-upload");
  const report = byId("import-report"), details = byId("import-details"), errors = byId("import-errors");
  const KINDS = ["prompts", "demonstrations", "rankings", "candidates"];  // candidates are never "already there"

  format.addEventListener("change", () => { hint.textContent = format.selectedOptions[0].dataset.hint; });

  const isObject = value => value !== null && typeof value === "object" && !Array.isArray(value);

  // An error body's fields as the server's format_errors writes them:
  // "line 12: prompt.replies.0: 'text' must be a string", "file: …".
  function messages(detail, path = []) {
    if (Array.isArray(detail)) return detail.flatMap((value, i) => messages(value, isObject(value) ? [...path, String(i)] : path));
    if (isObject(detail)) return Object.entries(detail).flatMap(([key, value]) => messages(value, [...path, key]));
    let where = path.filter(key => key !== "non_field_errors").join(".");
    if (path[0] === "lines" && path.length >= 2) where = `line ${path[1]}${path.length > 2 ? ": " + path.slice(2).join(".") : ""}`;
    return [where ? `${where}: ${detail}` : String(detail)];
  }

  function line(list, text) {
    const item = document.createElement("li");
    item.textContent = text;
    list.append(item);
  }

  function cell(tag, text, field) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (field) el.dataset.field = field;
    return el;
  }

  function setStatus(text, failed = false) {
    status.textContent = text;
    status.classList.toggle("error", failed);
  }

  function clear() {
    report.tBodies[0].replaceChildren();
    details.replaceChildren();
    errors.replaceChildren();
    report.hidden = details.hidden = errors.hidden = true;
  }

  function showReport(data) {
    report.tBodies[0].replaceChildren(...KINDS.map(kind => {
      const row = document.createElement("tr");
      row.dataset.kind = kind;
      const skipped = data.duplicates[kind];
      row.append(cell("th", kind), cell("td", String(data.created[kind]), "created"),
                 cell("td", skipped === undefined ? "–" : String(skipped), "skipped"));
      row.firstChild.scope = "row";
      return row;
    }));
    line(details, `${data.records} records read as ${data.format}` +
                  (data.source ? `; labels recorded under the source "${data.source}".` : "."));
    const byK = Object.entries(data.rankings_by_k);
    if (byK.length) line(details, `Rankings created by k: ${byK.map(([k, n]) => `k=${k}: ${n}`).join(", ")}.`);
    if (data.created.rankings) line(details, `Ties: ${data.ties.rankings} rankings with ${data.ties.pairs} tied pairs.`);
    for (const [reason, n] of Object.entries(data.left_out)) line(details, `Left out (${reason}): ${n}`);
    report.hidden = details.hidden = false;
  }

  function showErrors(fields) {
    const found = messages(fields);
    found.forEach(text => line(errors, text));
    errors.hidden = !found.length;
    const bad = Object.keys(fields.lines || {}).length;
    setStatus(`Nothing was imported${bad ? `: ${bad} bad line${bad === 1 ? "" : "s"}` : ""}.`, true);
  }

  function finish(xhr) {
    button.disabled = false;
    const data = xhr.response;
    if (xhr.status === 200 || xhr.status === 201) {
      setStatus(xhr.status === 201 ? "Imported." : "Nothing new: everything in the file was already in the project.");
      showReport(data);
    } else if (xhr.status === 400 && data && data.fields) {
      showErrors(data.fields);
    } else if (xhr.status === 413) {
      setStatus("The server refused the file as too large (HTTP 413). Split it, or import it with manage.py import_data.", true);
    } else if (xhr.status === 0) {
      setStatus("The connection was lost before the server answered. An import is all or nothing: reload to see whether it went through.", true);
    } else {
      setStatus(RL.errorText({status: xhr.status, data}), true);
    }
  }

  form.addEventListener("submit", event => {
    event.preventDefault();
    clear();
    const chosen = file.files[0];
    if (!chosen) { setStatus("Choose a file first.", true); return; }
    const limitMb = Number(form.dataset.maxMb);
    if (chosen.size > limitMb * 2 ** 20) {
      bar.hidden = true;
      setStatus(`The file is ${(chosen.size / 2 ** 20).toFixed(1)} MB; an upload takes at most ${limitMb} MB. ` +
                "Split it, or import it with manage.py import_data.", true);
      return;
    }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.url);
    xhr.responseType = "json";  // null when the answer is not JSON (a proxy's error page)
    xhr.setRequestHeader("X-CSRFToken", RL.csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", e => {
      if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
    });
    xhr.upload.addEventListener("load", () => {
      bar.value = bar.max;
      setStatus("Processing: checking every line, then importing…");
    });
    xhr.addEventListener("loadend", () => finish(xhr));
    bar.max = Math.max(chosen.size, 1);
    bar.value = 0;
    bar.hidden = false;
    button.disabled = true;
    setStatus(`Uploading ${chosen.name}…`);
    xhr.send(new FormData(form));
  });
})();
