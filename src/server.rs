//! Server glue: TODO.
