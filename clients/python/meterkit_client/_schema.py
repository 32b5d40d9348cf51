# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "f356bc49ea02343e1d86b4138b3a5fc10f6c2f26bf37c058755aed3876849092"
