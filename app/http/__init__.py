"""The HTTP edge shared by /graphql, /v1 and /webhooks: authentication, the tenant scope of a
request, and the one JSON error shape."""
