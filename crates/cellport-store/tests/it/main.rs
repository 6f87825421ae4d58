//! Integration tests of the store against a private redis-server.

mod jobs;
mod queue;
