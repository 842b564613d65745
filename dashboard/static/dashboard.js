// Run page live view (progressive enhancement: without JavaScript the page reloads itself every 5 s).
// Polls the run's /live endpoint (same origin, session cookie), replaces the status section and appends
// new customization.log text to the tail.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var log = document.getElementById("log");
  if (log) log.scrollTop = log.scrollHeight;
  if (!live || !log || live.getAttribute("data-terminal") === "true") return;
  var url = live.getAttribute("data-live");
  var offset = parseInt(log.getAttribute("data-offset") || "0", 10) || 0;
  var MAX_LINES = 1000;
  var stopped = false;

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  function append(text, reset) {
    var follow = atBottom();
    var current = reset ? "" : log.textContent;
    if (current && text && current.charAt(current.length - 1) !== "\n") current += "\n";
    var lines = (current + text).replace(/\n$/, "").split("\n");
    if (lines.length > MAX_LINES) lines = lines.slice(lines.length - MAX_LINES);
    log.textContent = lines.join("\n");
    if (follow) log.scrollTop = log.scrollHeight;
  }

  function poll() {
    if (stopped) return;
    fetch(url + "?offset=" + offset, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) { stopped = true; window.location.reload(); return null; }
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.json();
      })
      .then(function (data) {
        if (!data) return;
        live.innerHTML = data.html;
        if (data.log) append(data.log, data.reset);
        offset = data.offset;
        if (data.terminal) {
          stopped = true;
          live.setAttribute("data-terminal", "true");
          return;
        }
        // a hidden tab asks less often
        window.setTimeout(poll, document.hidden ? 10000 : 1500);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
})();
