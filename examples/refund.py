"""The refund agent: look the order up, ask a human, and charge the card at most once.

The tools are deterministic fakes (no network), so the example runs anywhere and its results can
be asserted exactly; swap their bodies for real order and payment APIs and nothing else changes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aetheris import Context, RetryPolicy, TerminalError, agent, idempotency_key, tool


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def receipt_for(key: str) -> str:
    """The receipt id the fake payment provider issues for an idempotency key."""
    return f"rcpt_{_digest(key)[:16]}"


@tool(idempotent=True)
def lookup_order(order_id: str) -> dict[str, Any]:
    """Fetch an order. A read, so repeating it after a crash is harmless."""
    digest = _digest(order_id)
    return {
        "order_id": order_id,
        "customer": f"cus_{digest[:8]}",
        # Large enough that the demo's refund amounts always fit within the order total.
        "total_cents": 5_000 + int(digest[8:12], 16) % 5_000,
        "currency": "EUR",
    }


@tool(idempotent=False, timeout_s=30, retry=RetryPolicy(max_attempts=3, backoff_s=1.0))
def charge_card(customer: str, amount_cents: int) -> str:
    """Move money (a negative amount refunds) and return the receipt id.

    Not idempotent: if the worker dies while this runs, the step is parked in doubt for an
    operator instead of being repeated. The idempotency key is still sent along, as real payment
    APIs accept one, so a retry after a timeout cannot charge twice.
    """
    key = idempotency_key()
    if key is None:
        raise TerminalError("charge_card must run as a step (through ctx.tool), which supplies its key")
    return receipt_for(key)


@agent(name="refund")
async def refund(ctx: Context, order_id: str, amount_cents: int) -> dict[str, Any]:
    """Refund ``amount_cents`` of an order once a human approves."""
    order = await ctx.tool(lookup_order, order_id=order_id)
    if amount_cents <= 0 or amount_cents > order["total_cents"]:
        raise TerminalError(f"cannot refund {amount_cents} cents of an order of {order['total_cents']}")
    await ctx.reason("the amount is within the order total; a human must approve the refund",
                     amount_cents=amount_cents, total_cents=order["total_cents"])
    decision = await ctx.confirm(f"Refund {amount_cents} cents?", data={"order": order})
    if not decision.approved:
        return {"status": "declined", "by": decision.by}
    receipt = await ctx.tool(charge_card, customer=order["customer"], amount_cents=-amount_cents)
    return {"status": "refunded", "receipt": receipt}
