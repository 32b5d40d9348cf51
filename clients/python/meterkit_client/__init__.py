"""A typed Python client for a meterkit gateway: an SDK (facade.py) over code that
ariadne-codegen generates from schema.graphql and queries/*.graphql (generated/, `make client`).

    from meterkit_client import Meterkit
    with Meterkit("http://127.0.0.1:8000", operator_key) as client:
        client.plans.upsert(key="pro", name="Pro", account_kit_id="kit_pro", quotas={"email.send": 1000})
        client.for_user(tenant_id).billing.usage().quotas
"""

from meterkit_client._schema import SCHEMA_SHA256
from meterkit_client.facade import BillingUsage, Meterkit, MeterkitError, Refused, TenantView, Unreachable, as_json

# The gateway version this client was released with (clients/python/pyproject.toml, checked by tests/client).
__version__ = "0.3.0"

__all__ = [
    "SCHEMA_SHA256",
    "BillingUsage",
    "Meterkit",
    "MeterkitError",
    "Refused",
    "TenantView",
    "Unreachable",
    "__version__",
    "as_json",
]
