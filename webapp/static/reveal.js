// A revealed value hides itself after the configured number of seconds (data-hide-after), and at
// once when the page is hidden (another tab, a locked screen). Loaded from a file: the CSP forbids
// inline script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var out = document.getElementById("revealed-value");
  var note = document.getElementById("revealed-note");
  if (!out) { return; }
  var seconds = parseInt(out.dataset.hideAfter, 10);
  if (!(seconds > 0)) { seconds = 30; }
  function hide() {
    out.textContent = "•••• hidden again";
    out.classList.add("hidden-again");
    if (note) { note.textContent = "Hidden again. Reveal it anew (with a reason) if you still need it."; }
  }
  window.setTimeout(hide, seconds * 1000);
  document.addEventListener("visibilitychange", function () { if (document.hidden) { hide(); } });
});
