# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "e0484d749a9f2702a54003c7b7e7c7f90668da15722c27d799755d6044fecf77"
