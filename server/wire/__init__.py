"""The wire mapping: protobuf messages to domain values and back, refusals to statuses.

Conversion and validation at the edge (``convert``), the rich error model (``errors``),
requests that do not decode (``decoding``) and list pages (``paging``).

The rule of this layer: convert, validate and map, nothing else: no I/O, no runtime
call. It sits between the generated code and :mod:`actors`' policy; the service uses it,
the client and the command line do not. Names are imported from their modules.
"""
