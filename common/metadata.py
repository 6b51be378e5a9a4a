"""Keys of the gRPC trailing metadata the coordinator sets and the SDK reads: one definition for
both sides of the wire (no imports, so the SDK's errors stay cheap to load)."""

#: On INVALID_ARGUMENT: the dotted spec field that is wrong (e.g. "config.epochs").
FIELD_METADATA_KEY = "matrec-field"
#: On RESOURCE_EXHAUSTED from the rate limit: milliseconds to wait before calling again.
RETRY_AFTER_KEY = "retry-after-ms"
