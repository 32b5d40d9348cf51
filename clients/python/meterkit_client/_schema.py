# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "4a5a5070ef9e1034b83cb166d56f27d9736bd6aeeb9e33d8763439a7dde10c55"
