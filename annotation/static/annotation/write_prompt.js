// Prompt writing: submit through the API with a client token, so a retried submit creates one prompt.
"use strict";

(() => {
  const panel = document.getElementById("task-panel");
  const text = panel.querySelector("#prompt-text");
  const tags = panel.querySelector("#prompt-tags");
  const button = panel.querySelector("#submit-button");
  let busy = false;

  const update = () => { button.disabled = busy || !text.value.trim(); };
  text.addEventListener("input", update);

  async function submit() {
    if (busy || !text.value.trim()) return;
    busy = true;
    update();
    const body = {text: text.value, client_token: panel.dataset.clientToken,
                  tags: tags.value.split(",").map(t => t.trim()).filter(Boolean)};
    const result = await RL.api("POST", `/api/projects/${panel.dataset.projectId}/write-prompt/`, body);
    busy = false;
    if (!result.ok) { RL.toast(RL.errorText(result), {error: true, timeout: 8000}); update(); return; }
    const next = await RL.api("POST", `/api/projects/${panel.dataset.projectId}/next-task/`, {kind: "prompt_writing"});
    panel.dataset.clientToken = next.data.client_token;
    text.value = "";
    tags.value = "";
    update();
    panel.querySelector("#progress").textContent = "Thank you: your prompt was added.";
    RL.toast("Prompt added.");
    text.focus();
  }

  button.addEventListener("click", submit);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); submit(); }
  });
  update();
})();
