"""The fleet's rules with no I/O (:mod:`.plan`): which worker holds which stream, when a lease
has expired, when a holder must stop. The asyncio and NATS side is ``neuroio.bridge._fleet``;
everything here is tested with plain synchronous functions."""
