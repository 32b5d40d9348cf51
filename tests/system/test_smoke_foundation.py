from tests.conftest import Api, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog


def test_tenant_lifecycle(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    data = api(
        SET_SUB, {"t": tid, "i": {"planKey": "pro", "status": "active", "currentPeriodEnd": "2026-07-13T00:00:00Z"}}
    )
    res = data["setSubscription"]
    assert res["__typename"] == "SubscriptionChanged", res
    assert res["tenant"]["accountKit"]["key"] == "kit_pro"
    key = api.tenant_key(tid)
    v = api("{ viewer { id name plan { key } subscription { status } } }", key=key)
    assert v["viewer"]["id"] == tid
    assert v["viewer"]["plan"]["key"] == "pro"
    assert count_rows(api.db.engine, "tenant")["tenant"] == 1
