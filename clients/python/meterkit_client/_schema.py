# Written by `make client`: the digest of the schema.graphql this client was generated from.
SCHEMA_SHA256 = "6a94c26c0009892d4538df0618a798ddb3a366f167e9dcd17033919dff8f5934"
