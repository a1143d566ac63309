"""Conformance with upstream's own definitions (issue 13): CRDs for the kinds Kaip accepts, OpenAPI documents for
the protocols it speaks. The harness is in `harness.py`; docs/conformance.md says how to add a kind."""
