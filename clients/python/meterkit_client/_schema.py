# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "f6bfdd2a23ff6eac6188f78d8a7b9620755b5fee56c4d2ceb26edb52d13459a4"
