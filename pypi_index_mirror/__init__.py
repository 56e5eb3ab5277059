"""pypi-index-mirror: a mirror of PyPI's simple index kept in step with RSTUF.

The map of the package (one sub-package per concern):

- ``upstream``: everything that speaks to PyPI and what its answers mean;
- ``mirror``: the served tree, its state and the rules it is kept by;
- ``sync``: a run's phases and the one fetch engine: ``run`` (the lifecycle: lock,
  identity, status, stops; `Sync.catch_up` calls the phases in order), ``context`` (what
  the phases share), ``source`` (the changelog or the JSON root), ``full_sync`` (first
  sync, --full-check), ``update``, ``refresh`` (the engine's consumer: durable batches),
  ``roots``, ``delivery`` (the run's side of RSTUF delivery), ``revalidation`` (beside the
  pure ``revalidate``), ``watch``; the pure decisions in ``plan`` and ``dry_run``; the
  engine in ``fetch_loop`` and ``page_steps``; ``parallel`` (the hashing process pool);
- ``rstuf``: RSTUF's REST client and the durable outbox;
- ``http``: the one HTTP environment (proxies, CA bundle, ``.netrc``, User-Agent, limits)
  every client is handed, and when to retry;
- ``audit``: the served tree held against what TUF signs, and repair;
- ``ops``: the operator's surface (settings, command line, status, progress);
- ``proxy``: the TUF-verifying index proxy for pip and uv.
"""
