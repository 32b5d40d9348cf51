# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "9a9842a8de7ee2511e925f305e06f832459f01d8b78ab75e9b78cc48249133aa"
