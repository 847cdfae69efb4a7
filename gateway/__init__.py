"""ViewBait AI Gateway: a gRPC sidecar that fronts all of ViewBait's Gemini traffic."""

__version__ = "0.1.0"
