// The on-screen keypad: a click appends the key's one-time token; no character ever reaches a
// keyboard event or the form. Loaded from a file because the CSP forbids inline script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var pad = document.getElementById("keypad");
  var value = document.getElementById("keypad-value");
  var count = document.getElementById("keypad-count");
  if (!pad || !value) { return; }
  var tokens = [];
  function show() { value.value = tokens.join("."); count.textContent = String(tokens.length); }
  pad.addEventListener("click", function (ev) {
    var key = ev.target.closest("button");
    if (!key) { return; }
    if (key.id === "keypad-back") { tokens.pop(); }
    else if (key.id === "keypad-clear") { tokens = []; }
    else if (key.dataset.token) { tokens.push(key.dataset.token); }
    show();
  });
  show();
});
