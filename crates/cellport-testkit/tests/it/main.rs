//! Integration tests of the test support itself, against the real servers it starts.

mod postgres;
