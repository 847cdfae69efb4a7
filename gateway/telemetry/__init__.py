"""What the gateway tells operators about itself.

- `logs`: structured logging (one JSON object per line), set up by the command line.
- `metrics`: Prometheus metrics (the official prometheus-client), served on their own HTTP port.
- `tracing`: OpenTelemetry spans for RPCs, pipeline stages and jobs, exported over OTLP when the
  standard `OTEL_*` variables configure it.
"""
