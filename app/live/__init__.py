"""Live updates: what changed for which tenant, from the transaction that changed it to the
GraphQL subscriptions that watch it (notify.py publishes, hub.py delivers; app/graphql/live.py
serves them and app/graphql/ws.py carries them)."""
