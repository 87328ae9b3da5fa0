// Safe mode: try to close the window; if the browser refuses, say so.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  window.close();
  window.setTimeout(function () {
    var note = document.getElementById("close-refused");
    if (note) { note.hidden = false; }
  }, 300);
});
