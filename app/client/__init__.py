"""A typed Python client for a meterkit gateway: an SDK (facade.py) over code that
ariadne-codegen generates from schema.graphql and queries/*.graphql (generated/, `make client`).

    from app.client import Meterkit
    with Meterkit("http://127.0.0.1:8000", operator_key) as client:
        client.plans.upsert(key="pro", name="Pro", account_kit_id="kit_pro", quotas={"email.send": 1000})
        client.for_user(tenant_id).billing.usage().quotas
"""

from app.client.facade import BillingUsage, Meterkit, MeterkitError, Refused, TenantView, Unreachable, as_json

__all__ = ["BillingUsage", "Meterkit", "MeterkitError", "Refused", "TenantView", "Unreachable", "as_json"]
