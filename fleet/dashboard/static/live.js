// owlgate dashboard: live updates without reloading. Every few seconds the page asks the
// server for its <main> again (header X-Owlgate-Fragment: 1) and swaps it in, unless the
// person is typing in a form there. The "Last updated" line shows when the last answer
// came, or since when the fleet has not answered. Also: asks before an abort.
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-refresh") || "0", 10);
  var live = document.getElementById("live");
  var lastOk = Date.now();
  var failing = false;

  function clock(date) {
    return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  // The line's text, with the time in a <time datetime> element (machine-readable, as the
  // server renders it) when one is given; "rest" follows the time.
  function say(text, stale, date, rest) {
    if (!live) { return; }
    live.textContent = text;
    if (date) {
      var time = document.createElement("time");
      time.id = "updated";
      time.setAttribute("datetime", date.toISOString());
      time.textContent = clock(date);
      live.appendChild(time);
      if (rest) { live.appendChild(document.createTextNode(rest)); }
    }
    live.classList.toggle("stale", stale);
  }

  function busy(main) {
    var active = document.activeElement;
    if (!active || !main.contains(active)) { return false; }
    if (active.tagName === "TEXTAREA" || active.tagName === "SELECT") { return true; }
    return active.tagName === "INPUT" && active.value !== "";
  }

  function refresh() {
    var main = document.getElementById("main");
    if (!main) { return; }
    fetch(window.location.href, {
      headers: { "X-Owlgate-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) {
        say("Your session has ended: log in again to keep this page live.", true);
        failing = true;
        return null;
      }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    }).then(function (html) {
      if (html === null) { return; }
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.getElementById("main");
      if (!fresh) { throw new Error("no main in the answer"); }
      if (!busy(main)) { main.innerHTML = fresh.innerHTML; }
      lastOk = Date.now();
      failing = false;
      var stamp = fresh.getAttribute("data-now");
      say("Last updated ", false, stamp ? new Date(stamp) : new Date());
    }).catch(function () {
      failing = true;
      var gone = Math.round((Date.now() - lastOk) / 1000);
      say("The fleet server has not answered for " + gone + " s (last update ", true,
        new Date(lastOk), "); retrying.");
    });
  }

  if (every > 0) { window.setInterval(refresh, every * 1000); }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
  void failing;
}());
