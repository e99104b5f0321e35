"""Hand-written clients people write today, ported faithfully; plain aiohttp, no ruxa_async.

Each module exposes ``prepare(jobs, spec)`` and ``async run(prepared, spec, recorder)``
like every contender (see ``benchmarks._client``).

* :mod:`.vendor_blog` (B0): a coroutine per task, ``asyncio.gather``, fixed 5 s polls.
* :mod:`.cookbook` (B1): the OpenAI cookbook's parallel processor, extended to poll.
* :mod:`.off_the_shelf` (B2): aiometer + aiolimiter + stamina.
"""
