//! Tests of `cellportctl` as a user meets it: the binary run against real services, and the
//! reference that documents what it talks to.

mod demo;
mod export;
mod projects;
mod reference;
