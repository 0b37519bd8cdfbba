"""Schemathesis hooks for tidelog: NDJSON produce bodies are sent as the generated text."""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
