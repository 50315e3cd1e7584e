#!/usr/bin/env bash
# Starts the local Stripe simulator and the portal for `make demo`, and prints a sign-in link
# for every demo user. Ctrl-C stops both.
set -euo pipefail
port="${1:-5000}"
stripe_port="${2:-8420}"
venv="${VENV:-.venv}"
flask="$venv/bin/flask --app wsgi"

export BASE_URL="${BASE_URL:-http://127.0.0.1:$port}"
export STRIPE_API_BASE="${STRIPE_API_BASE:-http://127.0.0.1:$stripe_port}"
export STRIPE_JS_URL="${STRIPE_JS_URL:-http://127.0.0.1:$stripe_port/js.stripe.com/v3/}"
export STRIPE_WEBHOOK_SECRET="${STRIPE_WEBHOOK_SECRET:-whsec_portal_demo}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if ! curl -fsS "$STRIPE_API_BASE/v1/customers" -u sk_test_portal_demo: >/dev/null 2>&1; then
  mkdir -p instance
  "$venv/bin/localstripe" --port "$stripe_port" >instance/localstripe.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do
    curl -fsS "$STRIPE_API_BASE/v1/customers" -u sk_test_portal_demo: >/dev/null 2>&1 && break
    sleep 0.2
  done
fi

# Stripe's events (payment succeeded, refunds, …) reach the portal through localstripe's webhook.
if curl -fsS -X POST "$STRIPE_API_BASE/_config/webhooks/portal" -u sk_test_portal_demo: \
    -d "url=$BASE_URL/webhooks/stripe" -d "secret=$STRIPE_WEBHOOK_SECRET" >/dev/null; then
  echo "localstripe sends webhooks to $BASE_URL/webhooks/stripe"
else
  echo "warning: could not register the webhook with localstripe at $STRIPE_API_BASE" >&2
fi

# The seeded saved cards are fake ids and localstripe starts empty each time: give the demo
# accounts real simulator customers and cards (idempotent; it refuses real Stripe).
if sync_report="$($flask portal sync-demo-stripe 2>&1)"; then
  printf '%s\n' "$sync_report" | sed 's/^/  /'
else
  printf '%s\n' "$sync_report" >&2
  echo "warning: the demo's saved cards are not in localstripe; paying with them will fail" >&2
fi

echo
echo "Sign-in links (each works once, for ${LOGIN_TOKEN_MINUTES:-10} minutes; get another with"
echo "  $flask portal login-link EMAIL):"
for email in ada@example.com grace@example.com kenji@example.com support@example.com admin@example.com; do
  printf '  %-22s %s\n' "$email" "$($flask portal login-link "$email")"
done
echo
echo "The portal is starting on $BASE_URL (Ctrl-C stops it)."
"$venv/bin/gunicorn" --bind "127.0.0.1:$port" --workers 2 --access-logfile - wsgi:app &
pids+=($!)
wait "${pids[-1]}"
