//! End-to-end tests across processes live in `tests/tests/`; this library holds what they share.
