# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "32c3f8caefa3b44f44c2c5e7cac8521d55f668151f4b28d65b4b784935dd8d9f"
