// Mayfly console: the little script the pages use (no inline script anywhere; CSP script-src 'self').
// - Live countdowns: every `.time-left[data-expires-at]` (unix ms) shows the time left, each second.
// - Copy buttons: `button[data-copy=ID]` copies the text of the element with that id.
"use strict";

function formatLeft(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function tick() {
  const now = Date.now();
  document.querySelectorAll(".time-left[data-expires-at]").forEach((el) => {
    const at = Number(el.getAttribute("data-expires-at"));
    if (!Number.isFinite(at)) return;
    const left = at - now;
    el.textContent = left > 0 ? formatLeft(left) : "expired";
    el.classList.toggle("expired", left <= 0);
  });
}

function setupCopy() {
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  setupCopy();
});
