"""The TUF-verifying index proxy: pip and uv get only pages python-tuf has verified.

- ``routing``: URLs, PEP 503 names and PEP 691 negotiation to TUF target paths (pure);
- ``verifier``: one verified metadata state behind a lock, pages fetched by their
  hash-prefixed names and checked, refusals with their HTTP status;
- ``server``: the threaded HTTP server answering with verified bytes or a refusal;
- ``cli``: options (flag, environment, config key) and ``main``; ``tuf_proxy.py`` at the
  top level is its entry point.

docs/proxy.md explains the design and gives the figures; docs/target-naming.md the
target names.
"""
