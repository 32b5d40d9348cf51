# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "2c0b84d6b70102031994f7930ed3e1d21d61726ee092e7966fdf15a419ac1e7a"
