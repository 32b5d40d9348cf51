# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "73636c5798d3c688fc9e60357c5044316320b2ab6ac80247965ec8c7718d6d7b"
