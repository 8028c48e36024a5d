// Live updates for the Switchyard console. Every page works without this script; with it, a page
// follows /ui/live (Server-Sent Events: the revisions this coordinator applies) and re-reads its
// own main part when the log moves, so lists, drains and a migration's phases advance on screen.
// Nothing is re-read while a form on the page has focus or changed input, so typing is never lost;
// a focused link or button keeps the focus across a re-read, so keyboard users do not lose their place.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var url = document.body && document.body.getAttribute("data-live");
  if (!main || !url || !window.EventSource) return;
  if (!document.getElementById("revision")) return; // pages without live data (forms, errors)

  var pending = false, inflight = false, lastShown = 0;
  var state = document.getElementById("live-state");

  function say(text) {
    state = document.getElementById("live-state");
    if (state) state.textContent = text;
  }

  function editing() {
    var a = document.activeElement;
    return a && main.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }

  var FOCUSABLE = "a[href], button, input, select, textarea, [tabindex]";

  // What identifies the focused element inside main across a re-read: its id, else its target
  // and text, else its place among main's focusable elements.
  function focusKey() {
    var a = document.activeElement;
    if (!a || a === main || !main.contains(a)) return null;
    var all = Array.prototype.slice.call(main.querySelectorAll(FOCUSABLE));
    return { id: a.id, href: a.getAttribute("href"), text: a.textContent, index: all.indexOf(a) };
  }

  function restoreFocus(k) {
    if (!k) return;
    var all = Array.prototype.slice.call(main.querySelectorAll(FOCUSABLE));
    var el = (k.id && document.getElementById(k.id)) || all.filter(function (e) {
      return e.getAttribute("href") === k.href && e.textContent === k.text;
    })[0] || all[k.index] || main;
    el.focus({ preventScroll: true });
  }

  function refresh() {
    if (inflight) { pending = true; return; }
    if (editing()) { pending = true; return; }
    inflight = true; pending = false;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected && /\/ui\/login/.test(r.url)) { window.location.href = r.url; return null; }
        return r.text();
      })
      .then(function (text) {
        if (text === null) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) {
          var focused = focusKey();
          main.innerHTML = fresh.innerHTML;
          restoreFocus(focused);
          // The header names this coordinator's role and term, which a leader change alters.
          var who = document.querySelector("header .who span"), freshWho = doc.querySelector("header .who span");
          if (who && freshWho) who.textContent = freshWho.textContent;
          say(" Live.");
        }
      })
      .catch(function () { say(" Live updates paused: this coordinator does not answer."); })
      .then(function () {
        inflight = false;
        if (pending) setTimeout(refresh, 250);
      });
  }

  var source = new EventSource(url);
  source.addEventListener("revision", function (e) {
    var rev = parseInt(e.data, 10) || 0;
    var shown = parseInt((document.getElementById("revision") || {}).textContent, 10) || 0;
    say(" Live.");
    if (rev > Math.max(shown, lastShown)) { lastShown = rev; refresh(); }
  });
  source.onerror = function () { say(" Live updates paused: reconnecting…"); };
  main.addEventListener("focusout", function () { if (pending) setTimeout(refresh, 250); });
})();
