//! TODO: see the issue tracker.
