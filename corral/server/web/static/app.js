// corral server's web UI: the only script of our own (the CSP allows scripts from this
// server's /static only: nothing inline, no eval).
"use strict";

(function () {
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // Every htmx request carries the session's CSRF token; the server refuses a state-changing
  // request without it.
  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-CSRF-Token"] = csrf();
  });

  // A credential form is emptied once the value is stored: the value never stays on the page.
  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.detail.elt && evt.detail.elt.closest && evt.detail.elt.closest("form[data-reset]");
    if (form && evt.detail.successful) {
      form.reset();
    }
  });

  // The live tail: keep the newest event in view when the reader is at the bottom.
  document.addEventListener("htmx:sseMessage", function (evt) {
    var list = document.getElementById("timeline");
    if (list && evt.detail && evt.detail.type === "events") {
      var nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 200;
      if (nearBottom) {
        window.scrollTo(0, document.body.scrollHeight);
      }
      var none = document.getElementById("no-events");
      if (none) {
        none.remove();
      }
    }
    if (evt.detail && evt.detail.type === "ended") {
      var bar = document.getElementById("live-state");
      if (bar) {
        bar.textContent = "The run has ended.";
        bar.classList.add("ended");
      }
    }
  });

  function dollars(v) {
    return "$" + v;
  }

  // Spend charts: data comes from data-chart attributes (JSON, escaped by the template).
  function charts() {
    if (typeof window.Chart === "undefined") {
      return;
    }
    var css = getComputedStyle(document.documentElement);
    var accent = css.getPropertyValue("--accent").trim() || "#2456a6";
    var ink = css.getPropertyValue("--muted").trim() || "#555";
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var data = JSON.parse(canvas.getAttribute("data-chart"));
      var kind = canvas.getAttribute("data-kind") || "bar";
      new window.Chart(canvas, {
        type: kind,
        data: {
          labels: data.labels,
          datasets: [{ label: "USD", data: data.values, backgroundColor: accent,
                       borderColor: accent, tension: 0.2, fill: false }]
        },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          plugins: { legend: { display: false } },
          // Horizontal bars for categories (long names stay readable), a line for days; the
          // money axis is the value axis either way.
          indexAxis: kind === "bar" ? "y" : "x",
          scales: kind === "bar"
            ? { x: { beginAtZero: true, ticks: { color: ink, callback: dollars } },
                y: { ticks: { color: ink } } }
            : { x: { ticks: { color: ink } },
                y: { beginAtZero: true, ticks: { color: ink, callback: dollars } } }
        }
      });
    });
  }
  // Deferred scripts (Chart.js comes after this one) have all run before DOMContentLoaded.
  document.addEventListener("DOMContentLoaded", charts);
})();
