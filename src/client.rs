//! Client library: TODO.
