// prescreen reading pages: live countdowns to due times, local times, clickable rows, and a refresh of
// the worklists every 15 s. No token is handled here: requests carry the HttpOnly session cookie.
// Words and the hospital's time zone come from the page (<body data-text-* data-timezone>, translated
// on the server), so this script holds no language of its own.
(function () {
  "use strict";

  var REFRESH_MS = 15000;

  function text(name, fallback) {
    var value = document.body && document.body.dataset[name];
    return value === undefined ? fallback : value;
  }

  function clock(total) {
    var h = Math.floor(total / 3600);
    var m = Math.floor((total % 3600) / 60);
    var s = total % 60;
    return h + ":" + (m < 10 ? "0" : "") + m + ":" + (s < 10 ? "0" : "") + s;
  }

  // seconds_to_due comes from the server: count down from when it arrived (no clock skew)
  function stamp(root) {
    root.querySelectorAll("[data-due-in]").forEach(function (el) {
      if (!el.dataset.deadline) {
        el.dataset.deadline = String(Date.now() + Number(el.dataset.dueIn) * 1000);
      }
    });
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var left = Math.round((Number(el.dataset.deadline) - now) / 1000);
      var overdue = left < 0;
      el.textContent = overdue ? text("textOverdue", "overdue") + " " + clock(-left) : clock(left);
      el.classList.toggle("is-overdue", overdue);
      var row = el.closest("tr");
      if (row) row.classList.toggle("is-overdue", overdue);
    });
  }

  // <time datetime> holds the moment in UTC (ISO 8601); shown in the page's language and the hospital's
  // time zone, as the server wrote it, with "today" for today's
  function localize(root) {
    var lang = document.documentElement.lang || undefined;
    var zone = text("timezone", undefined) || undefined;
    var dayOf = function (date) {
      try {
        return date.toLocaleDateString("en-CA", { timeZone: zone });
      } catch (e) {
        return date.toDateString(); // an unknown zone in this browser: its own
      }
    };
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      var today = dayOf(new Date()) === dayOf(when);
      var options = today
        ? { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }
        : { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
      var shown;
      try {
        shown = when.toLocaleString(lang, Object.assign({ timeZone: zone }, options));
      } catch (e) {
        return; // keep the server's text
      }
      el.title = el.title || when.toISOString();
      el.textContent = (today ? text("textToday", "today") + " " : "") + shown;
    });
  }

  function refresh(tbody) {
    fetch(tbody.dataset.refresh, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload(); // the session ended: the page sends us to the login form
          return;
        }
        if (!response.ok) return;
        var total = response.headers.get("X-Total");
        return response.text().then(function (html) {
          tbody.innerHTML = html;
          stamp(tbody);
          localize(tbody);
          tick();
          var count = document.querySelector('[data-count-for="' + tbody.dataset.worklist + '"]');
          if (count && total !== null) count.textContent = text("textOpen", "{count} open").replace("{count}", total);
          document.body.dataset.refreshedAt = String(Date.now());
        });
      })
      .catch(function () {
        /* offline for a moment: the next refresh tries again */
      });
  }

  function openRow(event) {
    var row = event.target.closest("tr[data-href]");
    if (!row || event.target.closest("a, button, input, textarea, select, label")) return;
    if (window.getSelection && String(window.getSelection())) return; // selecting text, not opening
    window.location.href = row.dataset.href;
  }

  document.addEventListener("DOMContentLoaded", function () {
    stamp(document);
    localize(document);
    tick();
    window.setInterval(tick, 1000);
    document.addEventListener("click", openRow);
    document.querySelectorAll("tbody[data-refresh]").forEach(function (tbody) {
      window.setInterval(function () {
        refresh(tbody);
      }, REFRESH_MS);
    });
  });
})();
