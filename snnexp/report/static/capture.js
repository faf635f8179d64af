/* Loaded first: records every script error so the page (and its self-test) can report them. */
window.__reportErrors = [];
window.addEventListener("error", function (e) {
  window.__reportErrors.push(String(e.message || e) + (e.filename ? " @" + e.filename + ":" + e.lineno : ""));
});
window.addEventListener("unhandledrejection", function (e) {
  window.__reportErrors.push("unhandled rejection: " + String(e.reason && (e.reason.stack || e.reason)));
});
