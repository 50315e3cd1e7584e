"""The demo's Stripe simulator: localstripe, with its state its own and on loopback only.

    python scripts/stripe_simulator.py --port 8420 --demo-id TOKEN

localstripe (1.15) pickles its whole state to the fixed path /tmp/localstripe.pickle after every
change and, without --from-scratch, loads that file at start; the path ignores TMPDIR, HOME and
the working directory. Any other localstripe on the machine (a test run, another project) writes
the same file, so a demo reading it crashed with EOFError or inherited strangers' customers. This
launcher starts localstripe's own aiohttp application with an empty store that is never loaded
from nor written to that file: nothing else on the machine can change this simulator, and it
changes nothing of theirs. Its state lives as long as the process; `portal seed-demo` recreates
what the demo needs on every start.

`GET /_config/portal-demo` answers the `--demo-id` it was started with, so `make demo` can tell
its own simulator from anything else listening on the port.

It also fills two gaps of localstripe that the pay page's one-PaymentIntent flow for a new card
needs (see `pay_with_a_new_card`): a PaymentIntent accepts `setup_future_usage` (and attaches
its card to the customer once it succeeds, as Stripe does), and its Stripe.js stand-in's
`confirmCardPayment(secret, {payment_method: {card: element}})` sends the card with the intent
(`POST /v1/payment_intents/<id>/confirm` with the publishable key and the client secret, as
Stripe.js does), showing the 3-D Secure modal only when the card asks for it. The tests run the
same launcher, so the demo and the tests see one simulator.
"""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

from aiohttp import web
from localstripe import resources, server


def _keep_in_memory(_store: resources.Store) -> None:
    """Stands in for Store.dump_to_disk: the shared pickle file is never written."""


# The Stripe.js calls localstripe's stand-in lacks, appended to it (it declares `Stripe`,
# `Element` and `LOCALSTRIPE_BASE_API` at the top level of the same script).
_JS_EXTENSION = r"""
// portal: confirmCardPayment with a card Element confirms the intent with that card first.
(function () {
  const makeStripe = Stripe;
  Stripe = (apiKey) => {
    const stripe = makeStripe(apiKey);
    const withAction = stripe.confirmCardPayment;
    stripe.confirmCardPayment = async (clientSecret, data) => {
      const element = data && data.payment_method && data.payment_method.card;
      if (!(element instanceof Element)) {
        return withAction(clientSecret, data);
      }
      console.log('localstripe (portal): confirmCardPayment with a card Element');
      const pi = clientSecret.match(/^(pi_\w+)_secret_/)[1];
      const response = await fetch(
        `${LOCALSTRIPE_BASE_API}/v1/payment_intents/${pi}/confirm`, {
          method: 'POST',
          body: JSON.stringify({
            key: apiKey,
            client_secret: clientSecret,
            payment_method_data: {type: 'card', card: (element.value || {}).card},
          }),
        });
      const body = await response.json().catch(() => ({}));
      if (response.status !== 200 || body.error) {
        return {error: body.error || {message: 'The card could not be used.'}};
      }
      if (body.status === 'requires_action') {
        return withAction(clientSecret);  // the 3-D Secure modal, once
      }
      return {paymentIntent: body};
    };
    return stripe;
  };
})();
"""


def pay_with_a_new_card() -> None:
    """Teach localstripe the one-PaymentIntent flow for a new card (see the module's doc)."""
    PaymentIntent, PaymentMethod = resources.PaymentIntent, resources.PaymentMethod
    UserError = server.UserError
    plain_init = PaymentIntent.__init__
    plain_success = PaymentIntent._on_success

    def init(self: Any, *args: Any, setup_future_usage: Any = None, **kwargs: Any) -> None:
        if setup_future_usage not in (None, "", "on_session", "off_session"):
            raise UserError(400, "Bad request")
        plain_init(self, *args, **kwargs)
        self.setup_future_usage = setup_future_usage or None

    def on_success(self: Any) -> None:
        # NOTE: Stripe attaches the card to the customer when the intent was to save it.
        if getattr(self, "setup_future_usage", None) and self.customer and self.payment_method:
            method = PaymentMethod._api_retrieve(self.payment_method)
            if getattr(method, "customer", None) is None:
                method.customer = self.customer
        plain_success(self)

    PaymentIntent.__init__ = init  # type: ignore[method-assign]
    PaymentIntent._on_success = on_success  # type: ignore[method-assign]

    def confirm_in_browser(intent_id: str, data: dict[str, Any]) -> web.Response:
        intent = PaymentIntent._api_retrieve(intent_id)
        if data.get("client_secret") != intent.client_secret:
            raise UserError(401, "Unauthorized")
        card_data = data.get("payment_method_data")
        if not isinstance(card_data, dict) or intent.status != "requires_payment_method":
            raise UserError(400, "Bad request")
        method = PaymentMethod(**card_data)
        intent.payment_method = method.id
        intent._confirm(on_failure_now=intent._report_failure)
        return server.json_response(intent._export())

    @web.middleware
    async def extensions(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/js.stripe.com/v3/":
            plain = await handler(request)
            return web.Response(
                text=plain.text + _JS_EXTENSION, content_type="application/javascript"
            )
        confirm = re.fullmatch(r"/v1/payment_intents/(pi_\w+)/confirm", request.path)
        if request.method == "POST" and confirm and "Authorization" not in request.headers:
            data = await server.get_post_data(request, remove_auth=False) or {}
            key = data.pop("key", None)
            if isinstance(key, str) and key.startswith("pk_"):
                return confirm_in_browser(confirm.group(1), data)
        return await handler(request)

    # NOTE: after localstripe's error middleware (which turns UserError into Stripe's error
    # answer) and before its auth middleware (which wants the secret key on /confirm).
    server.app.middlewares.insert(1, extensions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--demo-id", default="", help="Answered at GET /_config/portal-demo.")
    args = parser.parse_args()

    # NOTE: patched on the class, so the store's __setitem__/__delitem__ and localstripe's
    # save-after-every-write middleware all stop writing /tmp/localstripe.pickle.
    resources.Store.dump_to_disk = _keep_in_memory  # type: ignore[method-assign]
    resources.store.clear()
    pay_with_a_new_card()

    async def who_am_i(_request: web.Request) -> web.Response:
        return web.json_response({"demo_id": args.demo_id, "state": "in memory"})

    # NOTE: under /_config/ because localstripe's auth middleware lets that prefix through.
    server.app.router.add_get("/_config/portal-demo", who_am_i)

    access = logging.getLogger("aiohttp.access")
    access.setLevel(logging.INFO)
    access.addHandler(logging.StreamHandler())
    access.propagate = False
    logging.basicConfig(level=logging.WARNING)
    web.run_app(
        server.app,
        host=args.host,
        port=args.port,
        access_log=access,
        print=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
