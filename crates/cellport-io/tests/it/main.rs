//! Integration tests of the two seams against the real servers behind them: the project
//! sources (PostgreSQL) and storage (a directory and an S3-compatible server).

mod postgres;
mod storage;
