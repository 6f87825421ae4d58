//! Integration tests of the project sources against the real servers they read.

mod postgres;
