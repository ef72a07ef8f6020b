//! Networking: framing, the mio reactor pieces and the timer wheel.

pub mod framing;
