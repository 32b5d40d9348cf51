"""Shared GraphQL snippets for the tests."""

# The tests' fixtures rewrite whole kits and plans on purpose: confirm (a removal needs it) unless told.
KIT = """mutation($i: AccountKitInput!, $confirm: Boolean! = true) { upsertAccountKit(input: $i, confirm: $confirm) {
  __typename ... on AccountKit { key allowedPrimitives limits { primitive maxQuantityPerCall callsPerMinute } }
  ... on UserError { code message } ... on ValidationError { field } } }"""

PLAN = """mutation($i: PlanInput!, $confirm: Boolean! = true) { upsertPlan(input: $i, confirm: $confirm) {
  __typename ... on Plan { key period accountKitId quotas { primitive quota } includedCredits }
  ... on UserError { code message } ... on ValidationError { field } } }"""

SET_SUB = """mutation($i: SetSubscriptionInput!, $t: ID) { setSubscription(input: $i, tenantId: $t) {
  __typename ... on SubscriptionChanged { plan { key } subscription { status currentPeriodEnd }
  tenant { accountKit { key } kitFollowsPlan } }
  ... on UserError { code message } } }"""


def seed_catalog(api) -> None:  # type: ignore[no-untyped-def]
    api(KIT, {"i": {"key": "kit_basic", "name": "Basic", "allowedPrimitives": ["email.send", "search.web"]}})
    api(
        KIT,
        {
            "i": {
                "key": "kit_pro",
                "name": "Pro",
                "allowedPrimitives": ["email.*", "search.*", "browser.*", "research.*"],
                "limits": [{"primitive": "email.send", "maxQuantityPerCall": 100, "callsPerMinute": 600}],
            }
        },
    )
    api(
        PLAN,
        {
            "i": {
                "key": "free",
                "name": "Free",
                "accountKitId": "kit_basic",
                "period": "month",
                "quotas": [{"primitive": "email.send", "quota": 100}],
            }
        },
    )
    api(
        PLAN,
        {
            "i": {
                "key": "pro",
                "name": "Pro",
                "accountKitId": "kit_pro",
                "period": "month",
                "stripePriceId": "price_pro",
                "includedCredits": "200",
                "quotas": [{"primitive": "email.send", "quota": 1000}, {"primitive": "search.web", "quota": 5000}],
            }
        },
    )
