# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "721780862087e49f5c13b37ffd8cb2fc2a224f9fa02c0f34e600b4426201a76f"
