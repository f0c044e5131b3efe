"""The service's security: bearer tokens and tenants, TLS, quotas and rate limits.

The rule of this layer: it decides who may call and how much, from the call's metadata
and the store's aggregates; it knows nothing of the servicer above it. Names are
imported from their modules: importing this package loads nothing.
"""
