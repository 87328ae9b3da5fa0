// The account pages' keypads (current password, new password, again): each .keypad[data-value]
// appends its key's one-time token to the hidden input it names; no character ever reaches a
// keyboard event or the form. All pads of a page share its one layout. A file: the CSP forbids
// inline script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".keypad[data-value]").forEach(function (pad) {
    var value = document.getElementById(pad.dataset.value);
    var count = document.getElementById(pad.dataset.count);
    if (!value) { return; }
    var tokens = [];
    function show() {
      value.value = tokens.join(".");
      if (count) { count.textContent = String(tokens.length); }
    }
    pad.addEventListener("click", function (ev) {
      var key = ev.target.closest("button");
      if (!key) { return; }
      if (key.dataset.action === "back") { tokens.pop(); }
      else if (key.dataset.action === "clear") { tokens = []; }
      else if (key.dataset.token) { tokens.push(key.dataset.token); }
      show();
    });
    show();
  });
});
