// The ranking widget: order k responses best-to-worst by drag and drop or entirely by keyboard, with
// visible ties, inline labels, time on task, and the next task loaded without a page reload.
"use strict";

(() => {
  let widget = null;

  class RankingWidget {
    constructor(panel) {
      this.panel = panel;
      this.list = panel.querySelector("#cards");
      this.cards = new Map([...this.list.querySelectorAll(".card")].map(c => [c.dataset.candidate, c]));
      // candidate id → rank (1 = best) or null; equal ranks are ties. Display order follows the ranks.
      this.rank = new Map([...this.cards].map(([id, c]) => {
        const r = parseInt(c.dataset.rank, 10);
        return [id, Number.isInteger(r) ? r : null];
      }));
      this.timer = new RL.Timer();
      this.busy = false;
      this.submitButton = panel.querySelector("#submit-button");
      this.submitButton.addEventListener("click", () => this.submit());
      // forceFallback: pointer events instead of native HTML5 drag and drop, the same on mouse and touch.
      this.sortable = Sortable.create(this.list, {
        animation: 120, handle: ".card-head", draggable: ".card", filter: ".tie-button", preventOnFilter: false,
        forceFallback: true, onEnd: (event) => this.fromDom(event.item),
      });
      for (const [id, card] of this.cards) {
        card.querySelector(".tie-button").addEventListener("click", () => {
          if (card.classList.contains("tied") && !card.classList.contains("tie-first")) this.untie(id);
          else this.tieWithAbove(id);
        });
      }
      this.render();
    }

    unrankedCount() { return [...this.rank.values()].filter(r => r === null).length; }

    // Put a response at `rank`; whatever held that rank (and below) moves down one. Ties come from "t".
    setRank(id, rank) {
      this.rank.set(id, null);
      if ([...this.rank.values()].includes(rank)) {
        for (const [other, r] of this.rank) { if (r !== null && r >= rank) this.rank.set(other, r + 1); }
      }
      this.rank.set(id, rank);
      this.render(id);
    }

    unrank(id) { this.rank.set(id, null); this.render(id); }

    tieWithAbove(id) {
      const above = this.cards.get(id).previousElementSibling;
      const target = above ? this.rank.get(above.dataset.candidate) : null;
      if (!above) { RL.toast("There is no response above to tie with."); return; }
      if (target === null) { RL.toast("Rank the response above first, then tie this one to it."); return; }
      this.rank.set(id, target);
      this.render(id);
    }

    untie(id) {
      const r = this.rank.get(id);
      const tiedWith = [...this.rank].filter(([other, x]) => other !== id && x === r);
      if (r === null || !tiedWith.length) return;
      for (const [other, x] of this.rank) { if (x !== null && x > r) this.rank.set(other, x + 1); }
      this.rank.set(id, r + 1);
      this.render(id);
    }

    // After a drag: every card is ranked by its new position; ties survive where tied cards stay adjacent.
    fromDom(moved) {
      const order = [...this.list.querySelectorAll(".card")].map(c => c.dataset.candidate);
      const before = new Map(this.rank);
      let rank = 0;
      let previous = null;
      for (const id of order) {
        const old = id === moved.dataset.candidate ? null : before.get(id);
        const tiedToPrevious = old !== null && previous !== null && old === before.get(previous) &&
                               previous !== moved.dataset.candidate;
        if (!tiedToPrevious) rank += 1;
        this.rank.set(id, rank);
        previous = id;
      }
      this.render(moved.dataset.candidate);
    }

    // Once every response has a rank, ranks are made consecutive (1, 3, 3 → 1, 2, 2): what you see is saved.
    normalize() {
      if (this.unrankedCount()) return;
      const distinct = [...new Set(this.rank.values())].sort((a, b) => a - b);
      for (const [id, r] of this.rank) this.rank.set(id, distinct.indexOf(r) + 1);
    }

    render(focusId = null) {
      this.normalize();
      const original = [...this.cards.keys()];
      const ordered = [...original].sort((a, b) => {
        const ra = this.rank.get(a) ?? Infinity, rb = this.rank.get(b) ?? Infinity;
        return ra - rb || original.indexOf(a) - original.indexOf(b);
      });
      ordered.forEach(id => this.list.append(this.cards.get(id)));
      const counts = new Map();
      for (const r of this.rank.values()) if (r !== null) counts.set(r, (counts.get(r) || 0) + 1);
      ordered.forEach((id, i) => {
        const card = this.cards.get(id), r = this.rank.get(id);
        const tied = r !== null && counts.get(r) > 1;
        const prevSame = i > 0 && this.rank.get(ordered[i - 1]) === r;
        const nextSame = i < ordered.length - 1 && this.rank.get(ordered[i + 1]) === r;
        card.dataset.rank = r === null ? "" : String(r);
        card.querySelector(".rank-badge").textContent = r === null ? "–" : String(r);
        card.classList.toggle("unranked", r === null);
        card.classList.toggle("tied", tied);
        card.classList.toggle("tie-first", tied && !prevSame);
        card.classList.toggle("tie-last", tied && !nextSame);
        card.querySelector(".tie-label").hidden = !tied;
        const tiedToAbove = tied && prevSame;
        const button = card.querySelector(".tie-button");
        button.textContent = tiedToAbove ? "≠ Untie" : "= Tie with above";
        button.hidden = i === 0 || (r === null && !tiedToAbove);
        const name = card.querySelector(".card-name").textContent;
        card.setAttribute("aria-label", r === null ? `${name}, not ranked yet` : `${name}, rank ${r}${tied ? ", tied" : ""}`);
      });
      const ranked = this.cards.size - this.unrankedCount();
      this.panel.querySelector("#progress").textContent = `${ranked} of ${this.cards.size} ranked`;
      this.submitButton.disabled = this.unrankedCount() > 0 || this.busy;
      if (focusId) { this.cards.get(focusId).focus(); }
    }

    entries() {
      return [...this.rank].map(([id, rank]) => {
        const card = this.cards.get(id);
        const flag = name => card.querySelector(`input[name="${name}"]`).checked;
        const quality = card.querySelector('select[name="quality"]').value;
        return {candidate: parseInt(id, 10), rank, fails_instruction: flag("fails_instruction"),
                hallucination: flag("hallucination"), inappropriate: flag("inappropriate"), harmful: flag("harmful"),
                quality: quality ? parseInt(quality, 10) : null};
      });
    }

    async submit() {
      if (this.busy || this.unrankedCount()) return;
      this.busy = true;
      this.submitButton.disabled = true;
      const body = {entries: this.entries(), seconds_spent: this.timer.seconds(),
                    comment: this.panel.querySelector("#comment").value};
      const correcting = this.panel.dataset.correcting;
      const url = correcting ? `/api/rankings/${correcting}/correct/` : `/api/tasks/${this.panel.dataset.taskId}/submit-ranking/`;
      const result = await RL.api("POST", url, body);
      this.busy = false;
      if (!result.ok) { RL.toast(RL.errorText(result), {error: true, timeout: 8000}); this.render(); return; }
      if (correcting) { RL.toast("Correction saved."); window.location.assign("/history/?kind=ranking"); return; }
      RL.toast("Ranking submitted.");
      await reload();
    }

    destroy() { this.timer.stop(); this.sortable.destroy(); }
  }

  async function reload(taskId = null) {
    const panel = document.getElementById("task-panel");
    const url = panel.dataset.panelUrl || `/p/${panel.dataset.projectId}/ranking/panel/`;
    if (widget) widget.destroy();
    const fresh = await RL.loadPanel(taskId ? `${url}?task=${taskId}` : url, !taskId);
    start(fresh);
  }

  function start(panel) {
    widget = panel.querySelector("#cards") ? new RankingWidget(panel) : null;
    RL.setupSkip(panel, reload);
    if (panel.dataset.claim) reload();  // the page holds no task yet: ask for the next one (a POST)
  }

  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); widget && widget.submit(); return; }
    if (RL.isTyping(event) || event.altKey || event.ctrlKey || event.metaKey) return;
    if (document.querySelector("dialog[open]")) return;
    if (event.key === "?") { document.getElementById("help-dialog").showModal(); return; }
    if (event.key === "g") { const d = document.getElementById("guidelines"); d.open = !d.open; return; }
    if (!widget) return;
    if (event.key === "s" && document.getElementById("skip-button")) {
      RL.openSkip(widget.panel, reload); event.preventDefault(); return;
    }
    const cards = [...widget.list.querySelectorAll(".card")];
    const focused = document.activeElement.closest ? document.activeElement.closest(".card") : null;
    const index = focused ? cards.indexOf(focused) : -1;
    if (event.key === "j" || event.key === "ArrowDown") {
      cards[Math.min(index + 1, cards.length - 1)].focus(); event.preventDefault(); return;
    }
    if (event.key === "k" || event.key === "ArrowUp") {
      cards[Math.max(index - 1, 0)].focus(); event.preventDefault(); return;
    }
    if (!focused) return;
    const id = focused.dataset.candidate;
    if (/^[1-9]$/.test(event.key) && parseInt(event.key, 10) <= cards.length) { widget.setRank(id, parseInt(event.key, 10)); }
    else if (event.key === "0") { widget.unrank(id); }
    else if (event.key === "t") { widget.tieWithAbove(id); }
    else if (event.key === "u") { widget.untie(id); }
  });

  start(document.getElementById("task-panel"));
})();
