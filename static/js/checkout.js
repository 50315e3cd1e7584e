// Card payments with Stripe.js (the subset localstripe serves too): the card Element and a
// SetupIntent save a new card at Stripe; the form then posts only the SetupIntent's id. A payment
// that needs 3-D Secure is confirmed with confirmCardPayment, then the page asks the server.
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
    form.addEventListener("submit", async function (event) {
      if (form.elements.setup_intent.value) { return; }
      event.preventDefault();
      if (busy) { return; }
      busy = true;
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
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
      await stripe.confirmCardPayment(secret);
      form.submit();
    });
  });
})();
