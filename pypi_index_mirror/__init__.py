"""pypi-index-mirror: a mirror of PyPI's simple index kept in step with RSTUF.

The map of the package: one sub-package per concern, one line per module.
The scripts at the top of the checkout (``pypi_mirror.py``, ``generate_csv.py``,
``rstuf_client.py``, ``tuf_proxy.py``) are entry points into it.

- ``upstream``: everything that speaks to PyPI and what its answers mean

  - ``client``: `PypiClient`, the only code that speaks to PyPI (XML-RPC, pages, JSON root)
  - ``transport``: PyPI's HTTP over libcurl: the pages (the hot path), XML-RPC, JSON root
  - ``pages``: what a project page must be (regex fast path, lxml, PEP 691) and its facts
  - ``json_root``: the streaming parser of PEP 691's JSON root, in flat memory
  - ``xmlrpc``: XML-RPC answers parsed as they stream in
  - ``changelog``: the changelog's rows and the project listing (sorted on disk when large)
  - ``errors``: `UpstreamError` and its kinds (transient, stale, missing, not a page)

- ``mirror``: the served tree, its state and the rules it is kept by

  - ``store``: the layout on disk, names, atomic writes, hashing and the lock
  - ``writer``: the only code that changes the served tree
  - ``storage``: where the served tree lives, a directory or an object store
  - ``s3``: the served tree in an S3-compatible bucket
  - ``roots``: the root indexes, rendered, read back and merged
  - ``formats``: the page forms mirrored (``--simple-format``) and when they agree
  - ``state``: state.json, what a run needs to resume
  - ``filters``: ``--include`` / ``--exclude`` over PEP 503 names
  - ``safety``: mirror identity, where the state file is, and the circuit breaker (`Halt`)

- ``sync``: a run's phases and the one fetch engine

  - ``run``: `Sync`, the run's lifecycle (lock, identity, status, stops); `catch_up`
    calls the phases in order
  - ``context``: `RunContext`, what the phases share, and the run's `Summary`
  - ``source``: where changes come from, the XML-RPC changelog or the JSON root
  - ``full_sync``: the first sync and ``--full-check``
  - ``update``: an update from the changelog or the JSON root
  - ``refresh``: the fetch engine's consumer, pages applied in durable batches
  - ``roots``: the root indexes rewritten after an update
  - ``delivery``: the run's side of RSTUF delivery (budget, bootstrap check)
  - ``revalidation`` and ``revalidate``: silent changes caught (the pure plan in the latter)
  - ``watch``: ``--watch``, one `Sync` looped under the lock
  - ``fetch_loop``: the one fetch engine, libcurl's multi loop with retries as timers
  - ``page_steps``: one project's fetch rules for the engine (retries, stale pages)
  - ``plan`` and ``dry_run``: what a run fetches and changes, decided without I/O
  - ``parallel``: the process pool the CSV and the audit hash with

- ``rstuf``: RSTUF's REST client, the durable outbox and the bootstrap CSV

  - ``client``: `RstufClient`, the only code that talks to RSTUF
  - ``artifacts``: `Artifact` records, checked before they are sent, and request bodies
  - ``tasks``: `TaskResult`, task states, and whether a task failed
  - ``errors``: `RstufError` and its kinds, each one actionable line
  - ``outbox``: delivering what the mirror owes RSTUF and following every task
  - ``bootstrap_csv``: the CSV that bootstraps RSTUF (``generate_csv.py``)

- ``audit``: the served tree held against what TUF signs, and repair

  - ``repair``: ``--audit`` and ``--repair`` as a run (the lock, the mending, the roots)
  - ``tuf``: one audit run, streaming every bin through fetch threads and hash workers
  - ``metadata``: RSTUF's TUF metadata fetched and verified with python-tuf
  - ``compare``: what is on disk against the signed targets, as ``KIND PATH`` differences

- ``ops``: the operator's surface

  - ``command``: ``pypi_mirror.py``'s command line: `main`, the parser, one run
  - ``options``: the option table, every setting declared once with its value parser
  - ``settings``: flags, environment and config file resolved into `Config`
  - ``cli``: what the command lines share (version, exit codes, logging, errors)
  - ``status``: the run record in status.json and ``--status``
  - ``metrics``: the same figures in Prometheus's text format (``--metrics-file``)
  - ``recorder``: writes status.json and the metrics file when a run starts and ends
  - ``progress``: progress of the long phases

- ``proxy``: the TUF-verifying index proxy for pip and uv

  - ``cli``: ``pypi-mirror-proxy``'s options and ``main``
  - ``server``: the threaded HTTP server that answers only with verified pages
  - ``routing``: what the proxy answers to a URL and an ``Accept`` header
  - ``verifier``: the python-tuf side, one verified metadata state for every request

- ``http``: what every client shares

  - ``environment``: proxies, CA bundle, ``.netrc``, User-Agent and limits, read once
  - ``retry``: when to retry and how much of an answer to read
"""
