"""Imports every feature's models so that Base.metadata (and Alembic) sees the whole schema."""

from portal.accounts.models import Account, Membership, RecoveryCode, User
from portal.audit.models import AuditEvent
from portal.auth.models import LoginToken, UserSession
from portal.billing.models import (
    AccountBalance,
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceDocument,
    InvoiceLine,
    LedgerEntry,
    NumberSeries,
)
from portal.db import Base
from portal.disputes.models import (
    ApprovalRequest,
    Attachment,
    Dispute,
    DisputeEvent,
    DisputeLine,
    DisputeMessage,
)
from portal.notifications.models import (
    EmailPreference,
    OutboxEmail,
    PaymentRetry,
    ReminderSent,
    SyncCursor,
)
from portal.payments.models import (
    Payment,
    PaymentAllocation,
    PaymentAttempt,
    PaymentAttemptItem,
    PaymentMethod,
    Refund,
    StripeEvent,
)
from portal.subscriptions.models import (
    Plan,
    PlanTransition,
    Price,
    PriceTier,
    Subscription,
    SubscriptionChange,
    TaxRate,
    UsageRecord,
)

__all__ = [
    "Account",
    "AccountBalance",
    "ApprovalRequest",
    "Attachment",
    "AuditEvent",
    "Base",
    "CreditNote",
    "CreditNoteLine",
    "Dispute",
    "DisputeEvent",
    "DisputeLine",
    "DisputeMessage",
    "EmailPreference",
    "Invoice",
    "InvoiceDocument",
    "InvoiceLine",
    "LedgerEntry",
    "LoginToken",
    "Membership",
    "NumberSeries",
    "OutboxEmail",
    "Payment",
    "PaymentAllocation",
    "PaymentAttempt",
    "PaymentAttemptItem",
    "PaymentMethod",
    "PaymentRetry",
    "Plan",
    "PlanTransition",
    "Price",
    "PriceTier",
    "RecoveryCode",
    "Refund",
    "ReminderSent",
    "StripeEvent",
    "Subscription",
    "SubscriptionChange",
    "SyncCursor",
    "TaxRate",
    "UsageRecord",
    "User",
    "UserSession",
]
