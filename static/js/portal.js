/*
 * The portal's only script of its own. Every page works without it; it configures HTMX for our
 * CSP and CSRF rules and stops a double tap from sending a one-time form twice.
 */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  if (window.htmx) {
    var config = window.htmx.config;
    // NOTE: billing HTML must never be written to the browser's storage for "back" to restore.
    config.historyCacheSize = 0;
    // NOTE: htmx would add an inline <style> for its indicators; the CSP forbids it (see portal.css).
    config.includeIndicatorStyles = false;
    // The CSP has no 'unsafe-eval' and the pages need none: hx-on and js: values stay off.
    config.allowEval = false;
    config.allowScriptTags = false;
    config.selfRequestsOnly = true;

    document.addEventListener("htmx:configRequest", function (event) {
      var token = csrfToken();
      if (token) {
        event.detail.headers["X-CSRFToken"] = token;
      }
    });

    // An error answer (errors/_error.html) goes into the page's message area, not the target.
    document.addEventListener("htmx:beforeSwap", function (event) {
      var status = event.detail.xhr.status;
      var area = document.getElementById("htmx-messages");
      if (status >= 400 && area && event.detail.serverResponse) {
        event.detail.shouldSwap = true;
        event.detail.isError = false;
        event.detail.target = area;
        event.detail.swapOverride = "innerHTML";
        event.detail.selectOverride = "";
      }
    });

    document.addEventListener("htmx:sendError", function () {
      showMessage("We could not reach the server. Check your connection and try again.");
    });
  }

  function showMessage(text) {
    var area = document.getElementById("htmx-messages");
    if (!area) {
      return;
    }
    var box = document.createElement("div");
    box.className = "flash flash--warning";
    box.setAttribute("role", "alert");
    var p = document.createElement("p");
    p.className = "flash__text";
    p.textContent = text;
    box.appendChild(p);
    area.replaceChildren(box);
  }

  // A form marked data-submit-once goes to the server once per page view. A sign-in link is
  // single-use: a second tap would arrive after the first one used it and show an error.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (event.defaultPrevented || !(form instanceof HTMLFormElement) || !form.hasAttribute("data-submit-once")) {
      return;
    }
    if (form.getAttribute("aria-busy") === "true") {
      event.preventDefault();
      return;
    }
    form.setAttribute("aria-busy", "true");
  });

  // Coming back with the back button restores the page from memory: let its forms work again.
  window.addEventListener("pageshow", function () {
    var busy = document.querySelectorAll("form[data-submit-once][aria-busy]");
    for (var i = 0; i < busy.length; i++) {
      busy[i].removeAttribute("aria-busy");
    }
  });
})();
