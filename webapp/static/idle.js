// The idle warning (docs/webapp.md, "The idle warning"). The server ends a session after
// SESSION_IDLE_TIMEOUT seconds without a request; <body data-idle-timeout> carries that number.
// Some time before the end (2 minutes, or a quarter of the timeout when it is short) an alert offers
// "Stay logged in", which makes one ordinary GET (/account/still-here, audited): it moves the idle
// timer exactly as a click would and nothing else (the absolute timeout stands). After the end, the
// alert says the session was ended. Nothing here ever sends a request on its own: only the button
// does. Other tabs of the same browser share the last activity time through localStorage, so a
// click in one tab is not followed by a false warning in another.
// The absolute timeout (SESSION_ABSOLUTE_TIMEOUT after the login, whatever the activity) gets its own
// warning: <body data-session-left> says how many seconds of it were left when the page was made.
// Some time before it ends (5 minutes, or a quarter of the absolute timeout when it is short) the
// alert says so, without a button: nothing can extend it, the employee can only finish and save.
// A file: the CSP forbids inline script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var body = document.body;
  var timeout = parseInt(body.dataset.idleTimeout || "", 10);
  var ping = body.dataset.idlePing;
  var loginUrl = body.dataset.idleLogin;
  if (!(timeout > 0) || !ping) { return; }
  var KEY = "strongroom-last-activity";
  var lead = Math.min(120, Math.floor(timeout / 4));  // seconds of warning
  var sessionMax = parseInt(body.dataset.sessionMax || "", 10);
  var left = parseInt(body.dataset.sessionLeft || "", 10);
  // When the session meets its absolute timeout, on this browser's clock (counted from this page's
  // arrival, so a skewed clock on either side does not matter), a second late rather than early so
  // that the page never says "ended" while the server still takes the session; none when the page
  // says nothing.
  var absEnd = left >= 0 ? Date.now() + (left + 1) * 1000 : Infinity;
  var absLead = Math.min(300, Math.floor((sessionMax > 0 ? sessionMax : 1200) / 4));
  var timer = null;
  var box = null;

  function now() { return Date.now(); }
  function lastActivity() {
    var mine = parseInt(body.dataset.idleSeen || "0", 10);
    var shared = 0;
    try { shared = parseInt(window.localStorage.getItem(KEY) || "0", 10); } catch (e) { shared = 0; }
    return Math.max(mine, shared || 0);
  }
  function noteActivity() {
    var t = now();
    body.dataset.idleSeen = String(t);
    try { window.localStorage.setItem(KEY, String(t)); } catch (e) { /* private mode: this tab only */ }
  }
  function minutes(seconds) {
    var m = Math.round(seconds / 60);
    return m >= 1 ? (m + (m === 1 ? " minute" : " minutes")) : (seconds + " seconds");
  }
  function showBox() {
    if (box) { return box; }
    box = document.createElement("div");
    box.id = "idle-warning";
    box.className = "idle-warning";
    box.setAttribute("role", "alert");
    var text = document.createElement("p");
    text.id = "idle-warning-text";
    box.appendChild(text);
    var main = document.querySelector("main") || body;
    main.insertBefore(box, main.firstChild);
    return box;
  }
  function say(message, button) {
    var b = showBox();
    b.querySelector("#idle-warning-text").textContent = message;
    var old = b.querySelector("button, a");
    if (old) { old.remove(); }
    if (button) { b.appendChild(button); }
  }
  function hide() {
    if (box) { box.remove(); box = null; }
  }
  function logInAgain() {
    var link = document.createElement("a");
    link.href = loginUrl || "/login";
    link.textContent = "Log in again";
    return link;
  }
  function loggedOut() {
    say("You were logged out after " + minutes(timeout) + " without activity. Nothing you had not " +
        "saved was kept.", logInAgain());
  }
  function hours(seconds) {
    var h = Math.round(seconds / 3600);
    return h >= 1 ? (h + (h === 1 ? " hour" : " hours")) : minutes(seconds);
  }
  function ending(rest) {
    say("Your session ends in about " + minutes(rest) + ": sessions last at most " + hours(sessionMax) +
        " from the login, whatever you do. Save what you are working on; then log in again.", null);
  }
  function ended() {
    say("Your session ended: sessions last at most " + hours(sessionMax) + " from the login. Nothing " +
        "you had not saved was kept.", logInAgain());
  }
  function warn(left) {
    var button = document.createElement("button");
    button.type = "button";
    button.id = "idle-stay";
    button.textContent = "Stay logged in";
    button.addEventListener("click", stay);
    say("You will be logged out in about " + minutes(left) + " without activity.", button);
    button.focus();
  }
  function stay() {
    // redirect: "manual": a session that already ended answers with a redirect to the login page.
    fetch(ping, { method: "GET", credentials: "same-origin", redirect: "manual", cache: "no-store" })
      .then(function (r) {
        if (r.status === 204) { noteActivity(); hide(); schedule(); } else { loggedOut(); }
      })
      .catch(function () { say("The server could not be reached: you may be logged out.", null); });
  }
  var state = "active";  // "active", "warned", "ending" or "out"
  function schedule() {
    if (timer) { clearTimeout(timer); }
    var idle = (now() - lastActivity()) / 1000;
    var rest = (absEnd - now()) / 1000;  // of the absolute timeout
    if (rest <= 0) { state = "out"; ended(); return; }
    if (idle >= timeout) { state = "out"; loggedOut(); return; }
    if (rest <= absLead && rest <= timeout - idle) {
      // The absolute end comes first: "Stay logged in" could not help, so it is not offered.
      if (state !== "ending") { state = "ending"; ending(Math.ceil(rest)); }
      timer = setTimeout(schedule, Math.min(rest, 15) * 1000 + 250);
      return;
    }
    if (idle >= timeout - lead) {
      if (state !== "warned") { state = "warned"; warn(Math.ceil(timeout - idle)); }
      // Look again at the end, or sooner in case another tab was used meanwhile (no request is sent).
      timer = setTimeout(schedule, Math.min(timeout - idle, 15) * 1000 + 250);
      return;
    }
    state = "active";
    hide();
    timer = setTimeout(schedule, Math.min(timeout - lead - idle, rest - absLead) * 1000 + 250);
  }
  noteActivity();  // this page's own request was activity
  schedule();
});
