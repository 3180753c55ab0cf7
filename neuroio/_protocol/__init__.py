"""The NeuroIO protocol without I/O: pure state machines and parsers, tested without sockets."""
