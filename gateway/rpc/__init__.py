"""The gRPC edge of the gateway: status mapping, interceptors and servicers."""
