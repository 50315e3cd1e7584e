"""Magic-link tokens: signed, salted per purpose, rotated keys, hashed at rest, one use, expiry."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.auth.models import LoginToken
from portal.auth.services import (
    TokenExpired,
    TokenInvalid,
    TokenReplaced,
    TokenSigner,
    TokenUsed,
    consume_login_token,
    find_login_token,
    find_spent_token,
    hash_value,
    issue_login_token,
    mask_email,
)
from portal.clock import FrozenClock
from tests.factories import make_user

TEN_MINUTES = timedelta(minutes=10)


def _raw_of(token: str) -> str:
    payload = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_tokens_carry_256_random_bits_and_only_their_hash_is_stored(session: Session) -> None:
    user = make_user(session)
    token = issue_login_token(session, TokenSigner(["k1"]), user, lifetime=TEN_MINUTES)
    raw = _raw_of(token)
    assert len(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))) >= 16  # >= 128 bits
    stored = session.scalars(select(LoginToken)).one()
    assert stored.token_hash == hash_value(raw)
    assert raw not in stored.token_hash and token not in stored.token_hash


def test_a_token_works_once(session: Session) -> None:
    signer = TokenSigner(["k1"])
    user = make_user(session)
    token = issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    assert consume_login_token(session, signer, token) == user
    with pytest.raises(TokenUsed):
        consume_login_token(session, signer, token)


def test_the_consuming_update_is_conditional(session: Session) -> None:
    """The guard against a race: a token whose row was consumed after it was read stays used."""
    signer = TokenSigner(["k1"])
    user = make_user(session)
    token = issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    stale = find_login_token(session, signer, token)  # read before another request consumed it
    consume_login_token(session, signer, token)
    with pytest.raises(TokenUsed):
        consume_login_token(session, signer, token, stored=stale)


def test_expiry_is_ten_minutes(session: Session, clock: FrozenClock) -> None:
    signer = TokenSigner(["k1"])
    token = issue_login_token(session, signer, make_user(session), lifetime=TEN_MINUTES)
    clock.advance(minutes=9, seconds=59)
    find_login_token(session, signer, token)
    clock.advance(seconds=1)
    with pytest.raises(TokenExpired):
        consume_login_token(session, signer, token)


def test_a_newer_token_leaves_older_ones_usable(session: Session) -> None:
    """Asking again never cancels a link already sent (anyone may ask for any address)."""
    signer = TokenSigner(["k1"])
    user = make_user(session)
    old = issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    assert consume_login_token(session, signer, old) == user


def test_signing_in_retires_the_other_outstanding_tokens(session: Session) -> None:
    signer = TokenSigner(["k1"])
    user = make_user(session)
    other_user = make_user(session)
    first = issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    second = issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    someone_elses = issue_login_token(session, signer, other_user, lifetime=TEN_MINUTES)
    assert consume_login_token(session, signer, second) == user
    session.expire_all()
    with pytest.raises(TokenReplaced):
        consume_login_token(session, signer, first)
    assert consume_login_token(session, signer, someone_elses) == other_user


def test_a_spent_token_is_still_found_to_offer_a_new_link(session: Session) -> None:
    signer = TokenSigner(["k1"])
    user = make_user(session)
    token = issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    consume_login_token(session, signer, token)
    spent = find_spent_token(session, signer, token)
    assert spent is not None and spent.user == user
    assert find_spent_token(session, signer, "not-a-token") is None
    assert find_spent_token(session, TokenSigner(["other-key"]), token) is None


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("ada@example.com", "a•••@example.com"),
        ("a@example.com", "a•••@example.com"),
        ("no-at-sign", "•••"),
    ],
)
def test_mask_email(email: str, masked: str) -> None:
    assert mask_email(email) == masked


def test_tampered_tokens_are_invalid(session: Session) -> None:
    signer = TokenSigner(["k1"])
    token = issue_login_token(session, signer, make_user(session), lifetime=TEN_MINUTES)
    payload, signature = token.split(".")
    for bad in (payload + "." + signature[::-1], payload[:-1] + "A." + signature, payload):
        with pytest.raises(TokenInvalid):
            find_login_token(session, signer, bad)


def test_a_token_for_another_purpose_is_invalid(session: Session) -> None:
    user = make_user(session)
    staff_token = issue_login_token(
        session, TokenSigner(["k1"], purpose="staff_login"), user, lifetime=TEN_MINUTES
    )
    with pytest.raises(TokenInvalid):  # the salt differs, so the signature does not verify
        find_login_token(session, TokenSigner(["k1"]), staff_token)


def test_key_rotation_new_key_signs_old_key_still_verifies(session: Session) -> None:
    user = make_user(session)
    before_rotation = issue_login_token(session, TokenSigner(["old"]), user, lifetime=TEN_MINUTES)
    rotated = TokenSigner(["new", "old"])
    assert find_login_token(session, rotated, before_rotation).user == user
    after_rotation = issue_login_token(session, rotated, user, lifetime=TEN_MINUTES)
    assert find_login_token(session, TokenSigner(["new"]), after_rotation).user == user
    with pytest.raises(TokenInvalid):  # signed with the new key, not the old one
        find_login_token(session, TokenSigner(["old"]), after_rotation)
    with pytest.raises(TokenInvalid):  # once the old key is dropped, its links stop working
        find_login_token(session, TokenSigner(["new"]), before_rotation)


def test_a_disabled_users_token_is_invalid(session: Session, clock: FrozenClock) -> None:
    signer = TokenSigner(["k1"])
    user = make_user(session)
    token = issue_login_token(session, signer, user, lifetime=TEN_MINUTES)
    user.disabled_at = clock()
    session.flush()
    with pytest.raises(TokenInvalid):
        consume_login_token(session, signer, token)
