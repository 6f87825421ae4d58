//! Tests of the `cellportctl` binary itself, run as a user runs it, against real services.

mod export;
