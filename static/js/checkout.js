// Card payments with Stripe.js (the subset localstripe serves too). On the pay page a new card
// pays one PaymentIntent the server makes for it: confirmCardPayment sends the card with it and
// asks for 3-D Secure once, then the page asks the server how the payment stands (it saves the
// card from the intent when asked to). On Payment methods the card Element and a SetupIntent
// save a card without paying (confirmCardSetup); the form then posts only the SetupIntent's id.
// A saved card's payment that needs 3-D Secure is confirmed with confirmCardPayment too.
(function () {
  "use strict";
  var csrf = document.querySelector('meta[name="csrf-token"]');

  function showError(form, message) {
    var box = form.querySelector("[data-card-error]");
    if (box) { box.textContent = message; box.hidden = false; }
  }

  document.querySelectorAll("form[data-new-card]").forEach(function (form) {
    if (typeof Stripe === "undefined") { return; }
    var stripe = Stripe(form.dataset.stripeKey);
    var card = stripe.elements().create("card");
    card.mount(form.querySelector("[data-card-element]"));
    var busy = false;
    // The pay page's form also holds "Update total" and "Pay with a saved card": only the
    // new-card button (or the only button, on Payment methods) goes through Stripe.js first.
    function newCardButton() {
      return form.querySelector('button[name="pay_with"][value="new"]') ||
        form.querySelector("button[type=submit]:not([name])");
    }
    // Enter inside the card fields means "pay with this card", never the first (saved-card) button.
    form.querySelector("[data-card-element]").addEventListener("keydown", function (event) {
      if (event.key !== "Enter") { return; }
      event.preventDefault();
      var button = newCardButton();
      if (button && !button.disabled) { form.requestSubmit(button); }
    });
    var secret = null;
    var refreshUrl = null;
    // Success or failure, the server asks Stripe how the payment stands.
    function askServer(url) {
      var ask = document.createElement("form");
      ask.method = "post";
      ask.action = url;
      var token = document.createElement("input");
      token.type = "hidden";
      token.name = "csrf_token";
      token.value = csrf ? csrf.content : "";
      ask.appendChild(token);
      document.body.appendChild(ask);
      ask.submit();
    }
    async function payWithNewCard() {
      if (!secret) {
        var data = new URLSearchParams(new FormData(form));
        data.set("pay_with", "new");
        data.set("card_entry", "1");
        // NOTE: getAttribute: the chooser has a button named "action", which shadows form.action.
        var response = await fetch(form.getAttribute("action"), {
          method: "POST",
          body: data,
          headers: {"X-CSRFToken": csrf ? csrf.content : "", "Accept": "application/json"},
          credentials: "same-origin"
        });
        var body = await response.json();
        if (body.status_url && !body.client_secret) { window.location.assign(body.status_url); return; }
        if (!response.ok || !body.client_secret) { throw new Error(body.message || "We could not reach the payment provider."); }
        secret = body.client_secret;
        refreshUrl = body.refresh_url;
        // The choice to save the card is part of this payment now.
        form.querySelectorAll('input[name="save_card"]').forEach(function (box) { box.disabled = true; });
      }
      var result = await stripe.confirmCardPayment(secret, {payment_method: {card: card}});
      if (result.error && result.error.type === "validation_error") {
        throw new Error(result.error.message || "Please check the card details.");
      }
      askServer(refreshUrl);
    }
    form.addEventListener("submit", async function (event) {
      if (form.elements.setup_intent && form.elements.setup_intent.value) { return; }
      var submitter = event.submitter;
      if (submitter && submitter.name && !(submitter.name === "pay_with" && submitter.value === "new")) {
        return;
      }
      event.preventDefault();
      if (busy) { return; }
      busy = true;
      var button = newCardButton() || form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        if ("payIntent" in form.dataset) { await payWithNewCard(); return; }
        var response = await fetch(form.dataset.setupUrl, {
          method: "POST",
          headers: {"X-CSRFToken": csrf ? csrf.content : "", "Accept": "application/json"},
          credentials: "same-origin"
        });
        var body = await response.json();
        if (!response.ok || !body.client_secret) { throw new Error(body.message || "We could not reach the payment provider."); }
        var result = await stripe.confirmCardSetup(body.client_secret, {payment_method: {card: card}});
        if (result.error) { throw new Error(result.error.message || "Your card was declined."); }
        form.elements.setup_intent.value = result.setupIntent.id;
        form.submit();
      } catch (error) {
        showError(form, error.message || String(error));
        button.disabled = false;
        busy = false;
      }
    });
  });

  // The chooser on /pay: its hx-get swaps in the server's total. NOTE: localstripe's Stripe.js
  // declares a global `class Element`, which shadows the DOM's Element for every script on the
  // page, and htmx (`node instanceof Element`) then ignores the whole page; real Stripe.js does
  // not. Where the DOM's Element is shadowed, the same request is made here instead.
  var domElementShadowed = !(document.body instanceof Element);
  document.querySelectorAll("[data-pay-choices]").forEach(function (choices) {
    // The total follows every tick, so the no-JavaScript "Update total" button is not needed.
    var update = choices.form && choices.form.querySelector("[data-update-total]");
    if (update) { update.hidden = true; }
    if (window.htmx && !domElementShadowed) { return; }
    var url = choices.getAttribute("hx-get");
    var summary = document.getElementById("pay-summary");
    var pending = null;
    choices.addEventListener("change", async function () {
      var params = new URLSearchParams([["choose", "1"]]);
      choices.querySelectorAll('input[name="invoice"]:checked').forEach(function (box) {
        params.append("invoice", box.value);
      });
      if (pending) { pending.abort(); }
      pending = new AbortController();
      try {
        var response = await fetch(url + "?" + params.toString(), {
          headers: {"HX-Request": "true"}, credentials: "same-origin", signal: pending.signal
        });
        if (!response.ok) { return; }
        var fresh = new DOMParser().parseFromString(await response.text(), "text/html").body;
        Array.from(fresh.querySelectorAll("[hx-swap-oob]")).forEach(function (node) {
          var old = document.getElementById(node.id);
          node.remove();
          node.removeAttribute("hx-swap-oob");
          if (old) { old.replaceWith(document.importNode(node, true)); }
        });
        summary.replaceChildren.apply(summary, Array.from(fresh.childNodes).map(function (node) {
          return document.importNode(node, true);
        }));
      } catch (error) {
        // Aborted by a newer change, or offline: "Update total" still works.
      }
    });
  });

  document.querySelectorAll("form[data-authenticate]").forEach(function (form) {
    if (typeof Stripe === "undefined" || !form.dataset.secret) { return; }
    var stripe = Stripe(form.dataset.stripeKey);
    var secret = form.dataset.secret;
    delete form.dataset.secret;
    form.removeAttribute("data-secret");
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      form.querySelector("button[type=submit]").disabled = true;
      // Success or failure, the server asks Stripe how the payment stands.
      var method = form.dataset.paymentMethod;
      await stripe.confirmCardPayment(secret, method ? {payment_method: method} : undefined);
      form.submit();
    });
  });
})();
