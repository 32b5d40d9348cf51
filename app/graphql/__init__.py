"""The GraphQL edge: the framework (context, loaders, guard, cost, scalars, pagination,
permissions, rows, types) and one module per domain that translates its inputs and results
(kits, plans, tenants, subscriptions, credits and ledger, metering, usage, periods, pricing,
catalog, budgets, alerts, audit, overage, stripe, live), assembled by schema.py; ws.py carries
the subscriptions over graphql-transport-ws. The domain packages never import this package
(the import-linter contracts in pyproject.toml)."""
