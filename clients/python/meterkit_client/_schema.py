# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "c941d547c78ef444d53ad660a99d79dd7b54f4d6f0cf137fa2d395d510ab03a3"
